// Package handoff passes listening sockets from an agent to the image it
// re-execs, so that the node never stops listening across a self-upgrade:
// a client that connects while the new image starts waits in the kernel's
// backlog (a gossip packet in the socket's buffer) instead of being
// refused, and its peers' probes are answered late rather than not at all.
//
// The re-exec is an exec in place (same PID, as systemd's Type=notify
// wants), so this is not cloudflare/tableflip's fork of a child beside the
// parent: the descriptors simply stay open across exec. Their numbers are
// named in one environment variable, NAME=FD pairs, as the systemd socket
// activation protocol names its descriptors in LISTEN_FDNAMES; an image
// that does not know the variable (an older launcher on its way to a newer
// stored version) passes them on untouched.
//
// It must never leak a descriptor: the receiving image takes the variable
// out of its environment and marks every named descriptor close-on-exec
// at once, before anything can start a child, and closes those it does not
// take.
package handoff

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Env is the environment variable that names the handed-over descriptors.
const Env = "PEERD_LISTEN_FDS"

// Names of the sockets the agent hands over.
const (
	GossipTCP = "gossip-tcp"
	GossipUDP = "gossip-udp"
	HTTP      = "http"
	Control   = "control"
)

// filer is a socket whose descriptor can be duplicated.
type filer interface{ File() (*os.File, error) }

// Set is the sockets an image hands to the next: duplicates of its
// listeners' descriptors, which stay open while the listeners close.
type Set struct {
	files map[string]*os.File
}

// Add duplicates the descriptor of c (a *net.TCPListener, *net.UDPConn or
// *net.UnixListener) under name. The duplicate is close-on-exec until Env.
func (s *Set) Add(name string, c any) error {
	f, ok := c.(filer)
	if !ok {
		return fmt.Errorf("hand over %s: a %T has no descriptor to pass", name, c)
	}
	file, err := f.File()
	if err != nil {
		return fmt.Errorf("hand over %s: %w", name, err)
	}
	if s.files == nil {
		s.files = map[string]*os.File{}
	}
	if old := s.files[name]; old != nil {
		old.Close()
	}
	s.files[name] = file
	return nil
}

// Len is how many sockets the set holds.
func (s *Set) Len() int { return len(s.files) }

// Env clears close-on-exec on every descriptor and returns the
// environment entry that names them, for the exec that follows at once
// (no child may be started in between: it would inherit them).
func (s *Set) Env() (string, error) {
	names := make([]string, 0, len(s.files))
	for name := range s.files {
		names = append(names, name)
	}
	sort.Strings(names)
	pairs := make([]string, 0, len(names))
	for _, name := range names {
		fd := s.files[name].Fd()
		if err := setCloexec(int(fd), false); err != nil {
			return "", fmt.Errorf("hand over %s: %w", name, err)
		}
		pairs = append(pairs, name+"="+strconv.FormatUint(uint64(fd), 10))
	}
	return Env + "=" + strings.Join(pairs, ","), nil
}

// Close closes the duplicates (after a failed exec; a successful one
// leaves them to the next image).
func (s *Set) Close() {
	for _, f := range s.files {
		f.Close()
	}
	s.files = nil
}

// Inherited is what the previous image handed over, until taken.
type Inherited struct {
	files map[string]*os.File
}

// Inherit reads and removes Env and takes the descriptors it names,
// marking each close-on-exec. Descriptors that are not open are skipped;
// a malformed variable is an error (and nothing is taken).
func Inherit() (*Inherited, error) {
	v, ok := os.LookupEnv(Env)
	if !ok {
		return &Inherited{}, nil
	}
	os.Unsetenv(Env)
	return parse(v)
}

func parse(v string) (*Inherited, error) {
	in := &Inherited{files: map[string]*os.File{}}
	if v == "" {
		return in, nil
	}
	fds := map[string]int{}
	for pair := range strings.SplitSeq(v, ",") {
		name, num, ok := strings.Cut(pair, "=")
		fd, err := strconv.Atoi(num)
		if !ok || name == "" || err != nil || fd < 3 {
			return &Inherited{}, fmt.Errorf("%s: %q is not NAME=FD (FD 3 or more)", Env, pair)
		}
		fds[name] = fd
	}
	for name, fd := range fds {
		if err := setCloexec(fd, true); err != nil {
			continue // not open: nothing was handed over under this name
		}
		in.files[name] = os.NewFile(uintptr(fd), name)
	}
	return in, nil
}

// Names lists the sockets not taken yet.
func (in *Inherited) Names() []string {
	var out []string
	for name := range in.files {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// take removes name's file from the set; nil when there is none.
func (in *Inherited) take(name string) *os.File {
	if in == nil {
		return nil
	}
	f := in.files[name]
	delete(in.files, name)
	return f
}

// Listener takes the stream socket handed over as name, or returns nil
// when there is none. A descriptor that is not a listening socket is
// closed and reported.
func (in *Inherited) Listener(name string) (net.Listener, error) {
	f := in.take(name)
	if f == nil {
		return nil, nil
	}
	defer f.Close() // FileListener works on its own duplicate
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("inherited socket %s: %w", name, err)
	}
	return ln, nil
}

// PacketConn takes the datagram socket handed over as name, or nil.
func (in *Inherited) PacketConn(name string) (net.PacketConn, error) {
	f := in.take(name)
	if f == nil {
		return nil, nil
	}
	defer f.Close()
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("inherited socket %s: %w", name, err)
	}
	return c, nil
}

// Close closes what was not taken.
func (in *Inherited) Close() {
	if in == nil {
		return
	}
	for name, f := range in.files {
		f.Close()
		delete(in.files, name)
	}
}

// ErrAddrChanged is returned by Match for a socket bound elsewhere than
// the configuration now asks.
var ErrAddrChanged = errors.New("bound elsewhere than configured")

// Match checks that an inherited socket's address is the one the config
// asks for: the same host (an unspecified one matches only itself) and
// the same port, or any port when the config's is 0 (the kernel picked
// it, and a restart keeps it).
func Match(got net.Addr, want string) error {
	host, port, err := net.SplitHostPort(want)
	if err != nil {
		return err
	}
	ghost, gport, err := net.SplitHostPort(got.String())
	if err != nil {
		return err
	}
	if !sameHost(ghost, host) || (port != "0" && port != gport) {
		return fmt.Errorf("%s is %w (%s)", got, ErrAddrChanged, want)
	}
	return nil
}

func sameHost(got, want string) bool {
	ig, iw := net.ParseIP(got), net.ParseIP(want)
	switch {
	case want == "" || iw != nil && iw.IsUnspecified():
		return ig != nil && ig.IsUnspecified()
	case ig == nil || iw == nil:
		return got == want
	}
	return ig.Equal(iw)
}

func setCloexec(fd int, on bool) error {
	flags, err := fcntl(fd, syscall.F_GETFD, 0)
	if err != nil {
		return err
	}
	if on {
		flags |= syscall.FD_CLOEXEC
	} else {
		flags &^= syscall.FD_CLOEXEC
	}
	_, err = fcntl(fd, syscall.F_SETFD, flags)
	return err
}

func fcntl(fd, cmd, arg int) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), uintptr(arg))
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}
