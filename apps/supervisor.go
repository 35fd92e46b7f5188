package apps

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/peerd/peerd/internal/durable"
	"github.com/peerd/peerd/internal/jitter"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/peerd/peerd/upgrade/versions"
)

// Peer is one entry of an application's peers list.
type Peer struct {
	Name    string `json:"name"`
	Addr    string `json:"addr"`
	Version string `json:"version,omitempty"`
}

// States of a supervised application.
const (
	StateNotInstalled = "not-installed" // no binary yet
	StateStarting     = "starting"      // running, health not passed yet
	StateRunning      = "running"       // running and healthy
	StateUnhealthy    = "unhealthy"     // running, health check failing
	StateBackoff      = "backoff"       // crashed; waiting to restart
	StateStopped      = "stopped"
)

// Status is what the agent reports about one application.
type Status struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	// Protocol is the running version's protocol range, "MIN-MAX", as its
	// bundle's manifest declares it ("" when not declared).
	Protocol string    `json:"protocol,omitempty"`
	State    string    `json:"state"`
	PID      int       `json:"pid,omitempty"`
	Address  string    `json:"address,omitempty"`
	Restarts int       `json:"restarts"`
	Since    time.Time `json:"since"`
	Reason   string    `json:"reason,omitempty"`
	Peers    int       `json:"peers"`
}

// Healthy reports whether the application runs and passes its check.
func (s Status) Healthy() bool { return s.State == StateRunning }

// Handover is a running application passed from one peerd image to the
// next across a re-exec: its PID and the read end of its output pipe,
// inherited as an open file descriptor, and the application's listeners
// (Config.Listen), inherited the same way. PID 0 hands over only the
// listeners: no instance was running.
type Handover struct {
	Name      string    `json:"name"`
	PID       int       `json:"pid,omitempty"`
	FD        int       `json:"fd,omitempty"`
	Listeners []int     `json:"listeners,omitempty"`
	Version   string    `json:"version,omitempty"`
	Path      string    `json:"path"`
	Started   time.Time `json:"started"`
}

// Supervisor runs one application. One goroutine owns its process.
type Supervisor struct {
	cfg   Config
	dir   string
	log   *slog.Logger
	store *versions.Store

	first    chan struct{}         // closed once the first start (or adoption) was tried
	cmds     chan chan<- *Handover // detach requests
	restarts chan chan error       // restart requests (after an install)
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	firstOnce sync.Once

	// Set by Start, then read by run and Close (after run has stopped).
	listeners  []*os.File // the application's listening sockets, Config.Listen's order
	handedOver bool       // the listeners went to the next peerd image: Close keeps them

	mu          sync.Mutex // guards the fields below
	status      Status
	proc        *proc
	peers       []Peer
	listenAddrs []string // where listeners are bound
}

// proc is one running instance.
type proc struct {
	process *os.Process
	out     *os.File // read end of the output pipe
	path    string
	version string
	started time.Time
	exited  chan struct{} // closed once the process was reaped
	waitErr error
	reader  chan struct{} // closed when the output reader stops
}

// New prepares the supervisor of cfg with its files in dataDir/apps/NAME.
// It starts nothing.
func New(cfg Config, dataDir string, logger *slog.Logger) (*Supervisor, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	dir := filepath.Join(dataDir, "apps", cfg.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("app %s: %w", cfg.Name, err)
	}
	addr := cfg.Address
	if dynamicPort(addr) {
		addr = "" // until the instance reports it, or Start binds Listen
	}
	return &Supervisor{
		cfg:      cfg,
		dir:      dir,
		log:      logger.With("component", "app", "app", cfg.Name),
		store:    versions.New(filepath.Join(dir, "versions"), cfg.Name, cfg.Binary),
		first:    make(chan struct{}),
		cmds:     make(chan chan<- *Handover),
		restarts: make(chan chan error),
		status:   Status{Name: cfg.Name, State: StateStopped, Address: addr, Since: cfg.Clock.Now()},
	}, nil
}

// Name is the application's name.
func (s *Supervisor) Name() string { return s.cfg.Name }

// Versions is the application's version store.
func (s *Supervisor) Versions() *versions.Store { return s.store }

// Start binds the application's listeners (taking over those h hands over)
// and runs the application until Close or Detach, adopting the instance h
// names when the previous peerd image handed one over. It fails only when
// a listener cannot be bound; nothing runs then, and Close is still safe.
func (s *Supervisor) Start(ctx context.Context, h *Handover) error {
	var fds []int
	if h != nil {
		fds = slices.Clone(h.Listeners)
	}
	if err := s.bindListeners(fds); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.run(ctx, h)
	}()
	go func() {
		defer s.wg.Done()
		s.checkHealth(ctx)
	}()
	return nil
}

// Close stops the application (SIGTERM, then SIGKILL after StopTimeout)
// and waits for every goroutine.
func (s *Supervisor) Close() {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	s.closeListeners()
}

// Detach stops supervising without stopping the application and returns
// what the next peerd image needs to adopt it (nil when nothing runs). Its
// output pipe stays open across exec. Call it only right before re-exec.
func (s *Supervisor) Detach() *Handover {
	reply := make(chan *Handover, 1)
	select {
	case s.cmds <- reply:
	case <-s.cfg.Clock.After(s.cfg.StopTimeout):
		return nil
	}
	h := <-reply
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	return h
}

// Status reports the application's state.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Peers = len(s.peers)
	return st
}

// SetPeers tells the application its peers: the peers file is rewritten
// and the signal sent when the list changed; the env var carries it at the
// next start.
func (s *Supervisor) SetPeers(peers []Peer) error {
	peers = slices.Clone(peers)
	slices.SortFunc(peers, func(a, b Peer) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Equal(peers, s.peers) && s.peers != nil {
		return nil
	}
	s.peers = peers
	if err := s.writePeersLocked(); err != nil {
		return err
	}
	if s.proc != nil && s.cfg.Peers.Signal != "" {
		sig, _ := ParseSignal(s.cfg.Peers.Signal)
		if err := s.proc.process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("app %s: signal peers change: %w", s.cfg.Name, err)
		}
	}
	s.log.Info("peers changed", "peers", len(peers))
	return nil
}

func (s *Supervisor) peersJSON() []byte {
	b, _ := json.Marshal(append([]Peer{}, s.peers...))
	return b
}

// PeersFile is where the peers list is written ("" when not configured).
func (s *Supervisor) PeersFile() string {
	f := s.cfg.Peers.File
	if f == "" || filepath.IsAbs(f) {
		return f
	}
	return filepath.Join(s.dir, f)
}

func (s *Supervisor) writePeersLocked() error {
	path := s.PeersFile()
	if path == "" {
		return nil
	}
	if err := durable.WriteFile(path, append(s.peersJSON(), '\n'), 0o644); err != nil {
		return fmt.Errorf("app %s: write peers file: %w", s.cfg.Name, err)
	}
	return nil
}

func (s *Supervisor) setState(state, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status.State != state {
		s.status.Since = s.cfg.Clock.Now()
	}
	s.status.State, s.status.Reason = state, reason
}

// Restart stops the running instance and starts the version store's
// choice (a new version after an install, the previous after a rollback).
// It returns once the new instance was started, or why it was not.
func (s *Supervisor) Restart(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case s.restarts <- reply:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// BaseVersion is the configured binary's version ("" when not given).
func (s *Supervisor) BaseVersion() string { return s.cfg.Version }

// Started waits until the first start (or adoption) was tried, so that
// Running then tells what runs: the rollout engine decides at start what
// an interrupted step means by it.
func (s *Supervisor) Started(ctx context.Context) error {
	select {
	case <-s.first:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Running is the version and binary of the instance running now.
func (s *Supervisor) Running() (version, path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return s.status.Version, ""
	}
	return s.proc.version, s.proc.path
}

// run owns the process: start (or adopt), wait, restart with backoff. The
// waits are drawn at random: a fault shared by the fleet (a dependency
// down) crashes the application on every node at once, and the restarts
// should not hit that dependency in lockstep.
func (s *Supervisor) run(ctx context.Context, h *Handover) {
	backoff := jitter.Backoff(s.cfg.Backoff, s.cfg.MaxBackoff)
	var restarted chan error // a Restart waiting for the next start
	for {
		var p *proc
		var err error
		if h != nil && h.PID > 0 {
			p, err = s.adopt(h)
			h = nil
		} else {
			p, err = s.spawn()
		}
		if restarted != nil {
			restarted <- err
			restarted = nil
		}
		protocol := ""
		if p != nil {
			protocol = s.protocolOf(p.path)
		}
		s.mu.Lock()
		if p != nil {
			s.proc = p
			s.status.PID, s.status.Version, s.status.Protocol = p.process.Pid, p.version, protocol
		}
		s.mu.Unlock()
		s.firstOnce.Do(func() { close(s.first) })
		if err != nil {
			state := StateBackoff
			if errors.Is(err, errNotInstalled) {
				state = StateNotInstalled
			}
			s.setState(state, err.Error())
			wait := backoff.NextBackOff()
			if state == StateBackoff {
				s.log.Error("start failed", "err", err, "retry_in", wait)
			}
			if !s.pause(ctx, wait) {
				return
			}
			continue
		}
		s.setState(StateStarting, "")

		select {
		case <-p.exited:
			ran := s.cfg.Clock.Since(p.started)
			s.mu.Lock()
			s.proc = nil
			s.status.PID = 0
			s.status.Restarts++
			s.forgetAddressLocked()
			s.mu.Unlock()
			<-p.reader
			p.out.Close()
			if ran >= s.cfg.MaxBackoff {
				backoff.Reset()
			}
			s.setState(StateBackoff, fmt.Sprintf("exited: %v", p.waitErr))
			wait := backoff.NextBackOff()
			s.log.Warn("exited; restarting", "err", p.waitErr, "ran", ran.Round(time.Millisecond), "retry_in", wait)
			if !s.pause(ctx, wait) {
				return
			}
		case reply := <-s.cmds:
			reply <- s.handover(p)
			<-ctx.Done()
			return
		case restarted = <-s.restarts:
			s.stop(p)
			backoff.Reset()
		case <-ctx.Done():
			s.stop(p)
			return
		}
	}
}

// pause waits d, answering a detach with nothing to hand over.
func (s *Supervisor) pause(ctx context.Context, d time.Duration) bool {
	t := s.cfg.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.Chan():
		return true
	case reply := <-s.cmds:
		reply <- s.handover(nil)
		<-ctx.Done()
		return false
	case reply := <-s.restarts:
		// Not running: start now rather than after the backoff.
		reply <- nil
		return true
	case <-ctx.Done():
		s.setState(StateStopped, "")
		return false
	}
}

var errNotInstalled = errors.New("not installed: no binary configured and nothing in the version store")

// binary picks what to run: the store's current version when newer than
// the configured binary, else the configured binary.
func (s *Supervisor) binary() (path, version string, err error) {
	b, why, err := s.store.Select(s.cfg.Version)
	if err != nil {
		s.log.Warn("version store", "err", err)
	}
	if b.Base {
		if why != "" {
			s.log.Info("running the configured binary", "why", why)
		}
		if s.cfg.Binary == "" {
			return "", "", errNotInstalled
		}
		if _, err := os.Stat(s.cfg.Binary); errors.Is(err, fs.ErrNotExist) {
			// A name, not a file: peerd install puts the binary in the store.
			return "", "", errNotInstalled
		}
		return s.cfg.Binary, s.cfg.Version, nil
	}
	return b.Path, b.Version, nil
}

// protocolOf is the protocol range declared by the manifest beside the
// binary at path, when path is a version installed from a bundle.
func (s *Supervisor) protocolOf(path string) string {
	dir := filepath.Dir(path)
	if filepath.Dir(dir) != filepath.Clean(s.store.Dir()) {
		return "" // the configured binary
	}
	m, ok, err := artifact.ReadInstalledManifest(dir)
	if err != nil {
		s.log.Warn("read the running version's manifest", "err", err)
	}
	if !ok || err != nil {
		return ""
	}
	return m.Protocol()
}

func (s *Supervisor) spawn() (*proc, error) {
	path, version, err := s.binary()
	if err != nil {
		return nil, err
	}
	if err := s.stopOrphan(path); err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("output pipe: %w", err)
	}
	cmd := exec.Command(path, s.cfg.Args...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = w, w
	cmd.Env = s.activationEnv(os.Environ())
	if len(s.listeners) > 0 {
		// Through the shim, which sets LISTEN_PID to the PID it keeps
		// when it execs path (see ExecShim).
		cmd.Path, cmd.Args[0] = shimPath, path
		cmd.ExtraFiles = s.listeners // descriptors 3...
		cmd.Env = append(cmd.Env, envExecShim+"="+path)
	}
	for k, v := range s.cfg.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	s.mu.Lock()
	if s.cfg.Peers.Env != "" {
		cmd.Env = append(cmd.Env, s.cfg.Peers.Env+"="+string(s.peersJSON()))
	}
	if f := s.PeersFile(); f != "" {
		if _, err := os.Stat(f); errors.Is(err, fs.ErrNotExist) {
			_ = s.writePeersLocked()
		}
	}
	s.mu.Unlock()
	cmd.Env = append(cmd.Env, "PEERD_APP_NAME="+s.cfg.Name, "PEERD_APP_DIR="+s.dir, "PEERD_APP_VERSION="+version)
	if s.reportsAddress() {
		// A file left by the last instance is not this one's address.
		if err := os.Remove(s.addrFile()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			r.Close()
			w.Close()
			return nil, fmt.Errorf("remove the last instance's address file: %w", err)
		}
		cmd.Env = append(cmd.Env, EnvAddrFile+"="+s.addrFile())
	}
	// Its own process group: a Ctrl-C meant for peerd in a terminal does
	// not reach the application; peerd stops it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	p := &proc{process: cmd.Process, out: r, path: path, version: version, started: s.cfg.Clock.Now()}
	s.watch(p)
	s.log.Info("started", "pid", p.process.Pid, "version", version, "path", path)
	if err := s.saveRun(p); err != nil {
		s.log.Warn("record running instance", "err", err)
	}
	return p, nil
}

// adopt takes over the instance a previous peerd image handed over.
func (s *Supervisor) adopt(h *Handover) (*proc, error) {
	// Non-blocking, so that os.NewFile puts it in the poller: a later
	// hand-over interrupts the reader with a read deadline.
	if err := syscall.SetNonblock(h.FD, true); err != nil {
		return nil, fmt.Errorf("adopt pid %d: output fd %d: %w", h.PID, h.FD, err)
	}
	out := os.NewFile(uintptr(h.FD), s.cfg.Name+"-output")
	if out == nil {
		return nil, fmt.Errorf("adopt pid %d: bad output fd %d", h.PID, h.FD)
	}
	syscall.CloseOnExec(h.FD)
	process, err := os.FindProcess(h.PID)
	if err == nil {
		err = process.Signal(syscall.Signal(0))
	}
	if err != nil {
		out.Close()
		return nil, fmt.Errorf("adopt pid %d: %w", h.PID, err)
	}
	p := &proc{process: process, out: out, path: h.Path, version: h.Version, started: h.Started}
	s.watch(p)
	s.log.Info("adopted across peerd's re-exec", "pid", h.PID, "version", h.Version)
	return p, nil
}

// watch starts p's reaper and output reader.
func (s *Supervisor) watch(p *proc) {
	p.exited = make(chan struct{})
	p.reader = make(chan struct{})
	go func() {
		// Owned by run: it waits on exited before it returns, except after a
		// hand-over, when the process outlives this image.
		st, err := p.process.Wait()
		if err == nil && !st.Success() {
			err = errors.New(st.String())
		}
		p.waitErr = err
		close(p.exited)
	}()
	go func() {
		defer close(p.reader)
		sc := bufio.NewScanner(p.out)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			s.log.Info(sc.Text(), "stream", "output")
		}
	}()
}

// handover detaches from p (nil: none runs) and the listeners for the
// next peerd image; nil when there is nothing to hand over.
func (s *Supervisor) handover(p *proc) *Handover {
	fds, err := s.listenerFDs()
	if err != nil {
		s.log.Error("hand the listeners over; the next peerd image binds afresh", "err", err)
		fds = nil
	}
	s.handedOver = len(fds) > 0
	if p == nil {
		if len(fds) == 0 {
			return nil
		}
		s.log.Info("handing the listeners over to the next peerd image (the app is not running)")
		return &Handover{Name: s.cfg.Name, Listeners: fds}
	}
	// Stop the reader without closing the pipe: a read deadline wakes it.
	_ = p.out.SetReadDeadline(time.Now())
	<-p.reader
	_ = p.out.SetReadDeadline(time.Time{})
	fd := int(p.out.Fd())
	if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_SETFD, 0); errno != 0 {
		s.log.Error("keep the output pipe open across exec", "err", errno)
		if len(fds) == 0 {
			return nil
		}
		return &Handover{Name: s.cfg.Name, Listeners: fds}
	}
	s.log.Info("handing over to the next peerd image", "pid", p.process.Pid)
	return &Handover{Name: s.cfg.Name, PID: p.process.Pid, FD: fd, Listeners: fds, Version: p.version, Path: p.path, Started: p.started}
}

// stop ends p gracefully, then forcefully.
func (s *Supervisor) stop(p *proc) {
	_ = p.process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-s.cfg.Clock.After(s.cfg.StopTimeout):
		s.log.Warn("did not stop on SIGTERM; killing", "timeout", s.cfg.StopTimeout)
		_ = syscall.Kill(-p.process.Pid, syscall.SIGKILL)
		_ = p.process.Kill()
		<-p.exited
	}
	<-p.reader
	p.out.Close()
	s.mu.Lock()
	s.proc = nil
	s.status.PID = 0
	s.forgetAddressLocked()
	s.mu.Unlock()
	s.setState(StateStopped, "")
	s.log.Info("stopped", "err", p.waitErr)
}

// run.json remembers the running instance, so that an agent restarted
// after a crash (not a re-exec) can stop the orphan it left behind instead
// of starting a second instance next to it.
type runRecord struct {
	PID  int    `json:"pid"`
	Path string `json:"path"`
}

func (s *Supervisor) saveRun(p *proc) error {
	b, _ := json.Marshal(runRecord{PID: p.process.Pid, Path: p.path})
	return durable.WriteFile(filepath.Join(s.dir, "run.json"), b, 0o600)
}

// stopOrphan stops an instance a crashed agent left running: the PID in
// run.json, if that process still runs the same executable.
func (s *Supervisor) stopOrphan(path string) error {
	b, err := os.ReadFile(filepath.Join(s.dir, "run.json"))
	if err != nil {
		return nil
	}
	var rec runRecord
	if json.Unmarshal(b, &rec) != nil || rec.PID <= 1 {
		return nil
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", rec.PID))
	if err != nil || (exe != rec.Path && exe != path) {
		return nil
	}
	s.log.Warn("stopping an instance a crashed agent left running", "pid", rec.PID)
	_ = syscall.Kill(rec.PID, syscall.SIGTERM)
	deadline := s.cfg.Clock.Now().Add(s.cfg.StopTimeout)
	for s.cfg.Clock.Now().Before(deadline) {
		if syscall.Kill(rec.PID, 0) != nil {
			return nil
		}
		s.cfg.Clock.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(rec.PID, syscall.SIGKILL)
	return nil
}

// addrFile is where an instance whose address has port 0 reports the
// address it bound (see EnvAddrFile).
func (s *Supervisor) addrFile() string { return filepath.Join(s.dir, "addr") }

// addrPollInterval paces reading the address file until the instance has
// written it: it is in no peers list and cannot be health-checked until then.
const addrPollInterval = 50 * time.Millisecond

// forgetAddressLocked drops the address an instance reported when it stops:
// the next one may bind another.
func (s *Supervisor) forgetAddressLocked() {
	if s.reportsAddress() {
		s.status.Address = ""
	}
}

// reportsAddress tells whether the instance reports the address it bound
// (EnvAddrFile): its address has port 0 and the supervisor binds no
// listener for it, whose address would be the instance's.
func (s *Supervisor) reportsAddress() bool {
	return dynamicPort(s.cfg.Address) && len(s.cfg.Listen) == 0
}

// awaitingAddress reports whether an instance runs whose address is not
// known yet.
func (s *Supervisor) awaitingAddress() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reportsAddress() && s.proc != nil && s.status.Address == ""
}

// learnAddress reads the address the running instance reported, when its
// address has port 0 and it has not been read yet. It reports whether the
// address is known. An adopted instance's file is still there from its
// start; what it holds is checked, since the application wrote it.
func (s *Supervisor) learnAddress() bool {
	if !s.awaitingAddress() {
		return true
	}
	b, err := os.ReadFile(s.addrFile())
	if err != nil {
		s.setReasonWhileStarting(fmt.Sprintf("waiting for the app to write the address it bound to $%s (its address has port 0)", EnvAddrFile))
		return false
	}
	addr := strings.TrimSpace(string(b))
	if err := checkReportedAddr(addr); err != nil {
		s.setReasonWhileStarting(fmt.Sprintf("the address the app reported in %s: %v", s.addrFile(), err))
		return false
	}
	s.mu.Lock()
	s.status.Address = addr
	s.mu.Unlock()
	s.log.Info("address reported", "address", addr)
	return true
}

// checkReportedAddr accepts a host:port with a port picked (not 0).
func checkReportedAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want host:port", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: want a port from 1 to 65535", addr)
	}
	if host != "" && net.ParseIP(host) == nil {
		return fmt.Errorf("%q: want an IP address", addr)
	}
	return nil
}

// setReasonWhileStarting says why an instance has not passed its health
// check yet, without leaving the starting state.
func (s *Supervisor) setReasonWhileStarting(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status.State == StateStarting {
		s.status.Reason = reason
	}
}

// healthURL is the URL the HTTP health check asks: the configured one, or
// a path on the instance's address (on loopback when it binds every
// address). ok is false while that address is not known.
func (s *Supervisor) healthURL() (url string, ok bool) {
	h := s.cfg.Health.HTTP
	if !strings.HasPrefix(h, "/") {
		return h, true
	}
	s.mu.Lock()
	addr := s.status.Address
	s.mu.Unlock()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", false
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, port) + h, true
}

// healthTimeout bounds one health check: at least 2 s however often it
// runs, so that a busy machine's slow answer is not taken for a failure.
func (s *Supervisor) healthTimeout() time.Duration {
	return max(s.cfg.HealthInterval, 2*time.Second)
}

// checkHealth runs the health check while the application runs.
func (s *Supervisor) checkHealth(ctx context.Context) {
	t := s.cfg.Clock.NewTimer(s.cfg.HealthInterval)
	defer t.Stop()
	client := &http.Client{Timeout: s.healthTimeout()}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
		}
		wait := s.cfg.HealthInterval
		if s.awaitingAddress() {
			wait = min(wait, addrPollInterval)
		}
		t.Reset(wait)
		s.mu.Lock()
		running := s.proc != nil
		s.mu.Unlock()
		if !running || !s.learnAddress() {
			// Not healthy, but not failing either: an instance that has
			// not reported its address yet is still starting.
			continue
		}
		err := s.probe(ctx, client)
		st := s.Status()
		if st.State != StateStarting && st.State != StateRunning && st.State != StateUnhealthy {
			continue
		}
		if err != nil {
			if st.State != StateUnhealthy {
				s.log.Warn("unhealthy", "err", err)
			}
			s.setState(StateUnhealthy, err.Error())
		} else {
			if st.State != StateRunning {
				s.log.Info("healthy")
			}
			s.setState(StateRunning, "")
		}
	}
}

func (s *Supervisor) probe(ctx context.Context, client *http.Client) error {
	ctx, cancel := context.WithTimeout(ctx, s.healthTimeout())
	defer cancel()
	switch {
	case s.cfg.Health.HTTP != "":
		url, _ := s.healthURL() // known: checkHealth learnt the address first
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
			return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
		}
	case len(s.cfg.Health.Cmd) > 0:
		out, err := exec.CommandContext(ctx, s.cfg.Health.Cmd[0], s.cfg.Health.Cmd[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("health cmd: %w: %.200s", err, out)
		}
	}
	return nil
}
