package apps

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/peerd/peerd/internal/handoff"
	"github.com/peerd/peerd/internal/textbusy"
)

// The systemd socket activation protocol (sd_listen_fds(3)): descriptors
// from 3 on, how many, their names, and the PID they are meant for, so that
// a process that inherits the variables without being meant (a child of
// the application) ignores them.
const (
	listenFDsStart = 3
	envListenFDs   = "LISTEN_FDS"
	envListenPID   = "LISTEN_PID"
	envListenNames = "LISTEN_FDNAMES"
)

// envExecShim starts peerd's own executable as the exec shim (see
// ExecShim): the application's path is its value.
const envExecShim = "PEERD_APP_EXEC"

// ExecShim returns at once, unless this process was started by a
// supervisor as the shim that runs an application with sockets: it then
// sets LISTEN_PID to its own PID and execs the application in its place,
// and never returns. os/exec cannot set LISTEN_PID, since the child's PID
// is not known before the fork; exec keeps the PID and the inherited
// descriptors, so the application finds LISTEN_PID equal to getpid(), as
// the protocol wants. The program that supervises applications (peerd, and
// a test binary of this package) calls it first thing in main.
func ExecShim() {
	path, ok := os.LookupEnv(envExecShim)
	if !ok {
		return
	}
	os.Unsetenv(envExecShim)
	os.Setenv(envListenPID, strconv.Itoa(os.Getpid()))
	env := os.Environ()
	err := textbusy.Retry(context.Background(), func() error {
		return syscall.Exec(path, os.Args, env)
	})
	// The supervisor logs this line (it is the app's output) and sees the
	// exit as a crash.
	fmt.Fprintf(os.Stderr, "peerd: start %s with its sockets: %v\n", path, err)
	os.Exit(127)
}

// shimPath is the executable that runs as the shim: this very image,
// through /proc so that it works when the file was replaced or removed
// (a self-upgrade prunes old versions).
const shimPath = "/proc/self/exe"

// bindListeners opens the sockets Listen asks for, taking those the
// previous peerd image handed over (fds) where they are still bound where
// the config says. It is all or nothing: on error nothing stays open.
func (s *Supervisor) bindListeners(fds []int) error {
	var files []*os.File
	var addrs []string
	fail := func(err error) error {
		for _, f := range files {
			f.Close()
		}
		return err
	}
	for i, l := range s.cfg.Listen {
		network, addr, err := ParseListen(l)
		if err != nil {
			return fail(fmt.Errorf("app %s: listen %q: %w", s.cfg.Name, l, err))
		}
		if i < len(fds) {
			f, bound, err := inheritListener(fds[i], addr)
			fds[i] = -1
			if err == nil {
				s.log.Info("listening on a socket handed over by the previous peerd image", "listen", l, "address", bound)
				files, addrs = append(files, f), append(addrs, bound)
				continue
			}
			s.log.Warn("a socket handed over by the previous peerd image is not usable; binding afresh", "listen", l, "err", err)
		}
		ln, err := net.Listen(network, addr)
		if err != nil {
			return fail(fmt.Errorf("app %s: listen %s: %w (is another process on that address?)", s.cfg.Name, l, err))
		}
		f, err := ln.(*net.TCPListener).File()
		bound := ln.Addr().String()
		ln.Close() // the duplicate in f keeps the socket listening
		if err != nil {
			return fail(fmt.Errorf("app %s: listen %s: %w", s.cfg.Name, l, err))
		}
		s.log.Info("listening for the app", "listen", l, "address", bound)
		files, addrs = append(files, f), append(addrs, bound)
	}
	for _, fd := range fds {
		if fd >= 0 { // handed over, but no longer configured
			syscall.Close(fd)
		}
	}
	s.mu.Lock()
	s.listeners, s.listenAddrs = files, addrs
	if len(addrs) > 0 && (s.cfg.Address == "" || dynamicPort(s.cfg.Address)) {
		s.status.Address = addrs[0]
	}
	s.mu.Unlock()
	return nil
}

// inheritListener takes descriptor fd as a listening socket bound at want
// (any port when want's is 0).
func inheritListener(fd int, want string) (*os.File, string, error) {
	syscall.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "listener")
	if f == nil {
		return nil, "", fmt.Errorf("descriptor %d: not open", fd)
	}
	ln, err := net.FileListener(f) // a duplicate, to read the address
	if err != nil {
		f.Close()
		return nil, "", fmt.Errorf("descriptor %d: %w", fd, err)
	}
	bound := ln.Addr()
	ln.Close()
	if err := handoff.Match(bound, want); err != nil {
		f.Close()
		return nil, "", err
	}
	return f, bound.String(), nil
}

// listenerFDs prepares the listeners for the next peerd image: open across
// exec, named by number in the hand-over.
func (s *Supervisor) listenerFDs() ([]int, error) {
	var fds []int
	for _, f := range s.listeners {
		fd := int(f.Fd())
		if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_SETFD, 0); errno != 0 {
			return nil, fmt.Errorf("keep the app's listener open across exec: %w", errno)
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

// closeListeners closes the sockets, unless they were handed over.
func (s *Supervisor) closeListeners() {
	if s.handedOver {
		return
	}
	for _, f := range s.listeners {
		f.Close()
	}
	s.listeners = nil
}

// activationEnv is env without any socket activation variables (peerd's
// own, when systemd activated it, are not the application's) and, when
// the application has listeners, with the ones that describe them.
func (s *Supervisor) activationEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if k == envListenFDs || k == envListenPID || k == envListenNames || k == envExecShim {
			continue
		}
		out = append(out, kv)
	}
	if len(s.listeners) == 0 {
		return out
	}
	names := make([]string, len(s.listeners))
	for i := range names {
		names[i] = s.cfg.Name
	}
	return append(out, envListenFDs+"="+strconv.Itoa(len(s.listeners)), envListenNames+"="+strings.Join(names, ":"))
}

// ListenAddrs are the addresses the application's listeners are bound to,
// in the order of Config.Listen (nil before Start).
func (s *Supervisor) ListenAddrs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.listenAddrs...)
}
