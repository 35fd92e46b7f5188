package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/hashicorp/memberlist"
	"github.com/peerd/peerd/apps"
	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/internal/handoff"
	"github.com/peerd/peerd/internal/identity"
	"github.com/peerd/peerd/internal/jitter"
	"github.com/peerd/peerd/internal/peertls"
	"github.com/peerd/peerd/upgrade"
)

// Options are the agent's collaborators, as opposed to its configuration.
type Options struct {
	Logger *slog.Logger
	// Level, when set, is adjusted by a reload of log_level.
	Level *slog.LevelVar
	// Build is the identity advertised to the cluster.
	Build buildinfo.Info
	// Notifier defaults to systemd's sd_notify.
	Notifier Notifier
	// Executable is the running binary; default: this one.
	Executable string
	// Launcher is the binary that was started (by the package's unit, Nomad
	// or an operator) and chose which version to run: Executable, or a newer
	// one from the version store in the data dir. A restart after a
	// self-upgrade starts the launcher again. Default: Executable.
	Launcher string
	// HookDir lets tests pause the rollout at a phase (see upgrade.Config).
	HookDir string
	// AppHandovers are the applications the previous peerd image left
	// running across its re-exec, for the supervisors to adopt.
	AppHandovers []apps.Handover
	// Inherited are the listening sockets the previous image handed over
	// across its re-exec (see HandOff): Start serves on those that are on
	// the configured addresses. Start takes them over, and closes what it
	// does not use.
	Inherited *handoff.Inherited
	// SocketGroup is the group whose members may use the control socket
	// (mode 0660), when it exists; otherwise only the agent's user may
	// (0600). Default: DefaultSocketGroup.
	SocketGroup string
}

// ErrRestart is returned by Run when the agent must restart into a new
// binary: the caller closes the agent, then re-execs it or exits with
// ExitRestart for its supervisor, as Config.Restart says.
var ErrRestart = errors.New("restart into the new binary")

// leaveTimeout bounds a graceful leave on SIGTERM, so that the agent exits
// within a few seconds even when the cluster is unreachable.
const leaveTimeout = 5 * time.Second

// Agent is one running peerd node.
type Agent struct {
	cfg    Config
	opts   Options
	log    *slog.Logger
	logs   *logHub
	notify Notifier

	// Set by Start, read-only after.
	id        identity.Key
	dirLock   *os.File // the data dir's flock, held until Close
	cluster   *cluster.Cluster
	engine    *upgrade.Engine
	httpAddr  string
	controlLn net.Listener
	peerLn    net.Listener
	control   *http.Server
	peer      *http.Server // plain HTTP: health, info, metrics
	peerTLS   *http.Server // mutual TLS: the same, and the members-only routes
	peerMux   *peertls.Demux
	peerCert  tls.Certificate
	peerHC    *http.Client // calls members by name over mutual TLS
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	serving   sync.WaitGroup // the HTTP servers' Serve loops (also in wg)

	apps       []*apps.Supervisor
	appTags    map[string]string // the app tags last advertised (syncApps only)
	appMu      sync.Mutex        // guards appEngines (read by Serf's handler goroutines)
	appEngines map[string]*upgrade.Engine
	fatal      chan error    // a background task that cannot go on (buffered)
	restart    chan struct{} // the engine asks for a restart (buffered)
	exitCh     chan struct{} // closed when a client asked the agent to leave and exit
	exit       sync.Once

	closeOnce sync.Once
	closeErr  error
}

// New validates cfg and returns an agent that has started nothing.
func New(cfg Config, opts Options) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	// Every component logs through the hub, which 'peerd monitor' taps.
	logs := newLogHub()
	opts.Logger = slog.New(logs.handler(opts.Logger.Handler()))
	if opts.Notifier == nil {
		opts.Notifier = SystemdNotifier{}
	}
	if opts.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find own executable: %w", err)
		}
		opts.Executable = exe
	}
	if opts.Launcher == "" {
		opts.Launcher = opts.Executable
	}
	if opts.Build.Version == "" {
		b, err := buildinfo.Get()
		if err != nil {
			return nil, err
		}
		opts.Build = b
	}
	return &Agent{
		cfg:     cfg,
		opts:    opts,
		log:     opts.Logger.With("component", "agent"),
		logs:    logs,
		notify:  opts.Notifier,
		fatal:   make(chan error, 1),
		restart: make(chan struct{}, 1),
		exitCh:  make(chan struct{}),
	}, nil
}

// Start prepares the data dir, binds the peer HTTP address and the control
// socket, starts gossip, joins (failing if --join is given and no address
// answers), and tells systemd the agent is ready. On error, everything it
// started is stopped again.
func (a *Agent) Start(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	was, err := prepareDataDir(a.cfg.DataDir)
	if err != nil {
		return err
	}
	if was != 0 {
		a.log.Warn("data dir let others in; restricted it to its owner (and its group, read only)", "dir", a.cfg.DataDir,
			"mode_was", fmt.Sprintf("%04o", was))
	}
	if a.dirLock, err = lockDataDir(a.cfg.DataDir); err != nil {
		return err
	}
	var keyring *memberlist.Keyring
	if !a.cfg.InsecureGossip {
		var seedIgnored bool
		if keyring, seedIgnored, err = cluster.LoadKeyring(a.cfg.Encrypt, a.cfg.KeyringPath()); err != nil {
			return err
		}
		if seedIgnored {
			a.log.Warn("the --encrypt key is not in the keyring file, which wins once it exists (keys are rotated with 'peerd keyring'); "+
				"remove the file to start over from --encrypt", "keyring_file", a.cfg.KeyringPath())
		}
	} else {
		a.log.Warn("gossip is not encrypted (--insecure-gossip): anyone who reaches the gossip port can join this cluster")
	}
	if a.id, err = identity.LoadOrCreate(filepath.Join(a.cfg.DataDir, identity.FileName)); err != nil {
		return err
	}
	if a.peerCert, err = a.id.Certificate(a.cfg.Node); err != nil {
		return err
	}
	a.peerHC = peertls.Client(a.peerCert, a.memberHTTPAddr, a.pinnedKey, 5*time.Minute)
	// Ports given as 0 are picked afresh only when the last run's are taken.
	prev := previousAddrs(a.addrsPath())
	inherited := a.opts.Inherited
	defer inherited.Close() // what was not taken
	if a.peerLn = a.inheritedListener(inherited, handoff.HTTP, a.cfg.HTTPAddress()); a.peerLn == nil {
		if a.peerLn, err = listenHTTP(a.cfg.HTTPAddress(), portOf(prev.HTTP)); err != nil {
			return err
		}
	}
	a.httpAddr = a.peerLn.Addr().String()
	if a.controlLn = a.inheritedListener(inherited, handoff.Control, a.cfg.SocketPath()); a.controlLn == nil {
		if a.controlLn, err = a.listenSocket(a.cfg.SocketPath()); err != nil {
			return err
		}
	}

	ccfg := cluster.DefaultConfig()
	ccfg.NodeName = a.cfg.Node
	ccfg.BindAddr = a.cfg.Bind
	ccfg.PreferPort = portOf(prev.Gossip)
	ccfg.AdvertiseAddr = a.cfg.Advertise
	ccfg.Version = a.opts.Build.Version
	ccfg.Protocol = cluster.ProtocolRange{Min: a.opts.Build.ProtocolMin, Max: a.opts.Build.ProtocolMax}
	ccfg.Tags = a.cfg.Tags
	ccfg.OwnTags = map[string]string{TagHTTP: a.httpTag()}
	ccfg.Keyring = keyring
	if keyring != nil {
		ccfg.KeyringFile = a.cfg.KeyringPath()
	}
	ccfg.SnapshotPath = filepath.Join(a.cfg.DataDir, "serf.snapshot")
	ccfg.NodeKey = a.id.Public.String()

	ccfg.Profile = a.cfg.GossipProfile
	ccfg.Logger = a.opts.Logger
	ccfg.Inherited = inheritedGossip(inherited, a.log)
	if a.cluster, err = cluster.New(ccfg); err != nil {
		return err
	}
	if a.engine, err = a.newEngine(); err != nil {
		return err
	}
	a.cluster.SetHandler(engineMux{a})
	if err := a.cluster.Start(ctx); err != nil {
		return err
	}

	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.cancel = cancel
	// Requests end when the agent closes: a monitor's stream would hold
	// the control server's Shutdown for its whole timeout otherwise.
	a.control = &http.Server{Handler: a.controlHandler(), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return bg }}
	// One handler, so one cap on artifact streams, over both servers.
	peer := limitArtifactStreams(a.peerHandler(), maxArtifactStreams)
	a.peer = newPeerServer(peer)
	a.peerTLS = newPeerServer(peer)
	a.peerTLS.TLSConfig = peertls.ServerConfig(a.peerCert)
	a.peerMux = peertls.Split(a.peerLn)
	a.serve(a.control, a.controlLn)
	a.serve(a.peer, a.peerMux.Plain())
	a.serve(a.peerTLS, tls.NewListener(a.peerMux.TLS(), a.peerTLS.TLSConfig))

	// A node that knew peers when it last ran rejoins them by itself, and
	// an unreachable --join is then no reason to stop (its seed may be
	// restarting in the same rollout wave).
	previous := a.cluster.PreviousPeers()
	rejoining := len(previous) > 0
	retry := a.cfg.RetryJoin
	if len(a.cfg.Join) == 0 && rejoining {
		retry = append(retry, previous...)
	}
	if len(a.cfg.Join) > 0 {
		n, err := a.cluster.Join(a.cfg.Join)
		switch {
		case err == nil:
			a.log.Info("joined cluster", "contacted", n)
		case rejoining && !errors.Is(err, cluster.ErrIncompatibleProtocol):
			a.log.Warn("join failed; rejoining the members known before and retrying", "err", err)
			retry = append(append(retry, a.cfg.Join...), previous...)
		default:
			return err
		}
	}
	if len(retry) > 0 {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.retryJoin(bg, retry)
		}()
	}
	if err := a.engine.Start(ctx); err != nil {
		return err
	}
	if err := a.startApps(bg); err != nil {
		return err
	}
	if a.opts.Executable != a.opts.Launcher {
		// Running a stored version that came up: the launcher's count of
		// failed starts is over.
		if err := a.Versions().Started(a.opts.Build.Version); err != nil {
			a.log.Warn("record a good start", "err", err)
		}
	}
	if err := a.writeAddrs(); err != nil {
		// It serves all the same; only what waits for the file will not see it.
		a.log.Warn("record the bound addresses", "path", a.addrsPath(), "err", err)
	}
	a.notifyf("READY=1\nMAINPID=%d\nSTATUS=%s", os.Getpid(), a.statusLine())
	a.log.Info("agent ready", "node", a.cfg.Node, "gossip", a.cluster.LocalAddr(), "gossip_bound", a.cluster.BoundAddr(),
		"http", a.httpAddr, "socket", a.cfg.SocketPath(), "version", a.opts.Build.Version)
	return nil
}

// inheritedListener is the listener handed over as name when it listens
// where want says (a host:port, or the control socket's path), else nil:
// the caller binds afresh.
func (a *Agent) inheritedListener(in *handoff.Inherited, name, want string) net.Listener {
	ln, err := in.Listener(name)
	if err != nil {
		a.log.Warn("a socket handed over cannot be used; binding afresh", "socket", name, "err", err)
		return nil
	}
	if ln == nil {
		return nil
	}
	switch l := ln.(type) {
	case *net.UnixListener:
		if l.Addr().String() == want {
			// This image owns it now: it goes with the image that stops
			// for good (HandOff keeps it for the next one).
			l.SetUnlinkOnClose(true)
			return ln
		}
		err = fmt.Errorf("%s is %w (%s)", l.Addr(), handoff.ErrAddrChanged, want)
	default:
		if err = handoff.Match(ln.Addr(), want); err == nil {
			return ln
		}
	}
	a.log.Warn("a socket handed over is not where the config says; binding afresh", "socket", name, "err", err)
	ln.Close()
	return nil
}

// inheritedGossip are the gossip sockets handed over, for the cluster to
// check against its bind address; nil when there are none.
func inheritedGossip(in *handoff.Inherited, log *slog.Logger) *cluster.Listeners {
	tcp, err := in.Listener(handoff.GossipTCP)
	if err != nil {
		log.Warn("the gossip TCP socket handed over cannot be used; binding afresh", "err", err)
	}
	udp, err := in.PacketConn(handoff.GossipUDP)
	if err != nil {
		log.Warn("the gossip UDP socket handed over cannot be used; binding afresh", "err", err)
	}
	t, _ := tcp.(*net.TCPListener)
	u, _ := udp.(*net.UDPConn)
	if t == nil || u == nil {
		for _, c := range []io.Closer{tcp, udp} {
			if c != nil {
				c.Close()
			}
		}
		return nil
	}
	return &cluster.Listeners{TCP: t, UDP: u}
}

// HandOff duplicates the agent's listening sockets (gossip TCP and UDP,
// peer HTTP, the control socket) for the image it re-execs into, before
// Close: the duplicates keep them open, so that nothing connecting in the
// meantime is refused, and the control socket's file stays where it is.
// On error nothing is handed over and the next image binds afresh.
func (a *Agent) HandOff() (*handoff.Set, error) {
	s := &handoff.Set{}
	if a.cluster == nil || a.peerLn == nil || a.controlLn == nil {
		return s, errors.New("the agent is not serving")
	}
	if u, ok := a.controlLn.(*net.UnixListener); ok {
		u.SetUnlinkOnClose(false)
	}
	err := errors.Join(a.cluster.HandOff(s), s.Add(handoff.HTTP, a.peerLn), s.Add(handoff.Control, a.controlLn))
	if err != nil {
		s.Close()
		if u, ok := a.controlLn.(*net.UnixListener); ok {
			u.SetUnlinkOnClose(true)
		}
		return &handoff.Set{}, err
	}
	return s, nil
}

func (a *Agent) serve(srv *http.Server, ln net.Listener) {
	a.wg.Add(1)
	a.serving.Add(1)
	go func() {
		defer a.wg.Done()
		defer a.serving.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("http server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
}

// memberHTTPAddr is where member name serves its peer API, for the TLS
// client that calls members by name.
func (a *Agent) memberHTTPAddr(name string) (string, error) {
	for _, m := range a.cluster.Members() {
		if m.Name == name {
			if addr := memberRow(m).HTTPAddr; addr != "" {
				return addr, nil
			}
			return "", fmt.Errorf("member %s advertises no peer HTTP address", name)
		}
	}
	return "", fmt.Errorf("%s is not a member this node knows", name)
}

// pinnedKey is the identity key pinned for member name, nil for none.
func (a *Agent) pinnedKey(name string) identity.PublicKey {
	k, err := identity.Parse(a.cluster.PinnedKey(name))
	if err != nil {
		return nil
	}
	return k
}

// httpTag is the peer HTTP address as advertised: just the port when it is
// on the gossip host, to keep within memberlist's 512 bytes of metadata.
func (a *Agent) httpTag() string {
	gossipHost, _, _ := cluster.SplitHostPort(a.cfg.Bind)
	host, port, _ := net.SplitHostPort(a.httpAddr)
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() || host == gossipHost {
		return port
	}
	return a.httpAddr
}

// retryJoin keeps trying the retry-join addresses, with waits that grow
// to RetryJoinMaxInterval and are drawn at random (nodes restarted together
// do not all knock at once), until one answers. A protocol refusal ends
// it: retrying cannot help.
func (a *Agent) retryJoin(ctx context.Context, addrs []string) {
	attempt := 0
	join := func() (int, error) {
		attempt++
		n, err := a.cluster.Join(addrs)
		if errors.Is(err, cluster.ErrIncompatibleProtocol) {
			return 0, backoff.Permanent(err)
		}
		return n, err
	}
	n, err := backoff.Retry(ctx, join,
		backoff.WithBackOff(jitter.Backoff(a.cfg.RetryJoinInterval, a.cfg.RetryJoinMaxInterval)),
		backoff.WithMaxElapsedTime(0), // until it joins or the agent stops: the library's default gives up after 15 min
		backoff.WithNotify(func(err error, wait time.Duration) {
			a.log.Warn("retry-join failed", "attempt", attempt, "retry_in", wait, "err", err)
		}))
	switch {
	case err == nil:
		a.log.Info("joined cluster", "contacted", n, "attempt", attempt)
		a.notifyf("STATUS=%s", a.statusLine())
	case errors.Is(err, cluster.ErrIncompatibleProtocol):
		a.fatal <- err
	}
	// Otherwise ctx ended: the agent is stopping.
}

// Run serves until the agent is told to stop: SIGINT or SIGTERM leave the
// cluster gracefully (a second signal cuts the leave short), SIGHUP reloads
// tags and log level through reload, and a client's `peerd leave` leaves and
// returns. It returns nil on a graceful stop. The caller then calls Close.
func (a *Agent) Run(ctx context.Context, signals <-chan os.Signal, reload func() (Config, error)) error {
	var watchdog <-chan time.Time
	if d := a.notify.WatchdogInterval(); d > 0 {
		t := time.NewTicker(d / 2)
		defer t.Stop()
		watchdog = t.C
	}
	status := time.NewTicker(5 * time.Second)
	defer status.Stop()
	last := ""
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.exitCh:
			return nil
		case <-a.restart:
			a.log.Info("restarting into the new binary", "mode", a.cfg.Restart)
			a.notifyf("RELOADING=1\nSTATUS=restarting into the new binary")
			return ErrRestart
		case err := <-a.fatal:
			return err
		case <-a.cluster.ShutdownCh():
			return errors.New("gossip stopped unexpectedly")
		case <-watchdog:
			a.notifyf("WATCHDOG=1")
		case <-status.C:
			if s := a.statusLine(); s != last {
				a.notifyf("STATUS=%s", s)
				last = s
			}
		case sig := <-signals:
			switch sig {
			case syscall.SIGHUP:
				a.reload(reload)
			case os.Interrupt, syscall.SIGTERM:
				a.log.Info("signal received, leaving the cluster", "signal", sig.String())
				return a.leaveOrForce(signals)
			}
		}
	}
}

func (a *Agent) leaveOrForce(signals <-chan os.Signal) error {
	ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Leave(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			a.log.Warn("graceful leave incomplete", "err", err)
		}
		return nil
	case sig := <-signals:
		cancel()
		<-done
		return fmt.Errorf("second signal (%s): stopped without finishing the leave", sig)
	}
}

func (a *Agent) reload(reload func() (Config, error)) {
	if reload == nil {
		return
	}
	cfg, err := reload()
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		a.log.Error("reload failed, keeping the running config", "err", err)
		return
	}
	if err := a.cluster.SetTags(cfg.Tags); err != nil {
		a.log.Error("reload tags", "err", err)
		return
	}
	if a.opts.Level != nil {
		lvl, _ := ParseLogLevel(cfg.LogLevel)
		a.opts.Level.Set(lvl)
	}
	a.log.Info("reloaded", "tags", cfg.Tags, "log_level", cfg.LogLevel)
	if keys := restartNeeded(a.cfg, cfg); len(keys) > 0 {
		// Not an error: the file may be edited ahead of a planned restart.
		a.log.Warn("the config changed settings that a reload cannot apply; they take effect when the agent restarts (systemctl restart peerd)",
			"settings", strings.Join(keys, ", "))
	}
}

// Leave tells the cluster this node is leaving and waits for the word to
// spread, bounded by ctx.
func (a *Agent) Leave(ctx context.Context) error {
	a.notifyf("STOPPING=1\nSTATUS=leaving the cluster")
	return a.cluster.Leave(ctx)
}

// Close stops everything Start started and waits for it. It is idempotent.
func (a *Agent) Close() error {
	a.closeOnce.Do(func() {
		var errs []error
		if a.cancel != nil {
			a.cancel()
		}
		a.closeApps()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if a.peerMux != nil {
			// Connections the demux accepted reach their server first.
			a.peerMux.Drain(time.Second)
		}
		for _, srv := range []*http.Server{a.control, a.peer, a.peerTLS} {
			if srv != nil {
				_ = srv.Shutdown(ctx)
			}
		}
		// Shutdown can return before Serve tracked a connection it had
		// just accepted, which the exit (or a re-exec) would then drop:
		// once every Serve has returned, each has tracked all it accepted,
		// and a second Shutdown serves those.
		a.serving.Wait()
		for _, srv := range []*http.Server{a.control, a.peer, a.peerTLS} {
			if srv != nil {
				_ = srv.Shutdown(ctx)
			}
		}
		for _, ln := range []net.Listener{a.controlLn, a.peerLn} {
			if ln != nil {
				ln.Close()
			}
		}
		if a.peerMux != nil {
			a.peerMux.Close()
		}
		if a.engine != nil {
			a.engine.Close()
		}
		a.closeAppEngines()
		if a.cluster != nil {
			errs = append(errs, a.cluster.Close())
		}
		a.wg.Wait()
		if a.dirLock != nil {
			a.dirLock.Close() // drops the flock: another agent may start here now
		}
		a.closeErr = errors.Join(errs...)
	})
	return a.closeErr
}

// Cluster exposes the node's membership, for in-process tests and the engine.
func (a *Agent) Cluster() *cluster.Cluster { return a.cluster }

// HTTPAddr is the bound peer HTTP address.
func (a *Agent) HTTPAddr() string { return a.httpAddr }

// SocketPath is the control socket.
func (a *Agent) SocketPath() string { return a.cfg.SocketPath() }

func (a *Agent) statusLine() string {
	if s := a.safeMode(); s != "" {
		return s
	}
	if a.engine != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if st, err := a.engine.Status(ctx); err == nil && (st.State == upgrade.StateRunning || st.State == upgrade.StateHalted || st.State == upgrade.StatePaused) {
			return st.Summary()
		}
	}
	i := a.info()
	return fmt.Sprintf("serving: %d members (%d alive), active protocol %d", i.Cluster.Size, i.Cluster.ByStatus["alive"], i.Cluster.ActiveProtocol)
}

func (a *Agent) notifyf(format string, args ...any) {
	if err := a.notify.Notify(fmt.Sprintf(format, args...)); err != nil {
		a.log.Debug("sd_notify failed", "err", err)
	}
}

func (a *Agent) requestExit() { a.exit.Do(func() { close(a.exitCh) }) }
