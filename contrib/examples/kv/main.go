// Command kv is the example peer application that peerd supervises: a small
// replicated key-value store. Builds of the same source play different
// releases (version and wire protocol are set with -ldflags), so a rolling
// upgrade with old and new instances serving side by side is tested with
// real processes. It must stay small enough to read in one sitting; see
// README.md for its interface.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
)

// Set at build time, e.g. -ldflags "-X main.version=2.0.0 -X main.protocol=2".
var (
	version = "1.0.0"
	// protocol is the highest wire protocol this build speaks. Empty: the
	// major of version, capped at wireMax (what this source implements).
	protocol = ""
	// healthFault, when non-empty, makes /health fail with it as the reason:
	// a deliberately bad release for tests of peerd's health gate.
	healthFault = ""
)

type config struct {
	name        string // origin of our writes; must be unique in the cluster
	listen      string // the address bound, once serve has bound it
	addrFile    string // where to report the address bound ("": nowhere)
	dataDir     string
	peersFile   string
	peersEnv    string // the value of KV_PEERS, read once at start
	antiEntropy time.Duration
	peerTimeout time.Duration
	maxProto    int
}

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is main with its environment passed in. Exit codes: 0 clean stop,
// 1 failure (bad peers list, unusable data dir, port taken...), 2 bad flags.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, getenv, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "kv: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if err := serve(cfg, log); err != nil {
		log.Error("kv failed", "err", err)
		return 1
	}
	return 0
}

func parseConfig(args []string, getenv func(string) string, stdout, stderr io.Writer) (config, error) {
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	cfg := config{peersEnv: getenv("KV_PEERS")}
	fs := flag.NewFlagSet("kv", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.listen, "listen", env("KV_LISTEN", "127.0.0.1:8080"), "HTTP listen address; port 0 picks a free one (env KV_LISTEN)")
	fs.StringVar(&cfg.addrFile, "addr-file", env("KV_ADDR_FILE", getenv("PEERD_APP_ADDR_FILE")),
		"once listening, write the address bound to this file, replaced atomically (env KV_ADDR_FILE; peerd passes PEERD_APP_ADDR_FILE)")
	fs.StringVar(&cfg.dataDir, "data-dir", env("KV_DATA_DIR", ""), "directory for the write-ahead log, created if missing (env KV_DATA_DIR; required)")
	fs.StringVar(&cfg.name, "name", env("KV_NAME", ""), "unique instance name, the origin of its writes (env KV_NAME; default the address bound)")
	fs.StringVar(&cfg.peersFile, "peers-file", env("KV_PEERS_FILE", ""), "JSON peers file, re-read on SIGHUP (env KV_PEERS_FILE)")
	fs.DurationVar(&cfg.antiEntropy, "anti-entropy-interval", time.Second, "how often to pull every peer's data")
	fs.DurationVar(&cfg.peerTimeout, "peer-timeout", 2*time.Second, "timeout of one request to a peer")
	showVersion := fs.Bool("version", false, "print the version and wire protocols, then exit")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	var errs []error
	var err error
	if cfg.maxProto, err = buildProtocol(version, protocol); err != nil {
		errs = append(errs, err)
	}
	if *showVersion && err == nil {
		fmt.Fprintf(stdout, "kv %s (wire protocol %d-%d)\n", version, wireMin, cfg.maxProto)
		return cfg, flag.ErrHelp
	}
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if cfg.dataDir == "" {
		errs = append(errs, errors.New("--data-dir (or KV_DATA_DIR) is required: the write-ahead log lives there"))
	}
	if _, _, err := net.SplitHostPort(cfg.listen); err != nil {
		errs = append(errs, fmt.Errorf("--listen %q: want host:port: %w", cfg.listen, err))
	}
	if cfg.antiEntropy <= 0 || cfg.peerTimeout <= 0 {
		errs = append(errs, errors.New("--anti-entropy-interval and --peer-timeout must be positive"))
	}
	return cfg, errors.Join(errs...)
}

// buildProtocol returns the highest wire protocol of this build.
func buildProtocol(version, protocol string) (int, error) {
	if protocol == "" {
		// A 1.x release speaks wire 1, 2.x speaks up to 2, and so on.
		major, _, _ := strings.Cut(strings.TrimPrefix(version, "v"), ".")
		n, err := strconv.Atoi(major)
		if err != nil || n < 1 {
			return 0, fmt.Errorf("version %q: want MAJOR.MINOR.PATCH with MAJOR >= 1, or set main.protocol", version)
		}
		return min(n, wireMax), nil
	}
	n, err := strconv.Atoi(protocol)
	if err != nil || n < wireMin || n > wireMax {
		return 0, fmt.Errorf("protocol %q: this source implements wire protocols %d-%d", protocol, wireMin, wireMax)
	}
	return n, nil
}

// serve runs the instance until SIGINT or SIGTERM.
func serve(cfg config, log *slog.Logger) error {
	// Everything that can be wrong with the configuration is checked before
	// the port is taken, so a bad release fails fast and says why.
	peers, err := cfg.loadPeers()
	if err != nil {
		return err
	}
	st, err := openStore(cfg.dataDir)
	if err != nil {
		return err
	}
	defer st.Close()
	raw, err := listen(cfg.listen, log)
	if err != nil {
		return err
	}
	// Every connection this instance accepts is answered before it exits:
	// http.Server.Shutdown can return while a connection just accepted is
	// not yet tracked, and exiting then drops it (an EOF for a client
	// whose connect succeeded on the socket the next instance serves).
	ln := &trackingListener{Listener: raw}
	defer ln.Close()
	// With port 0 only now is the address known: it names this instance
	// when --name does not, tells it apart in a peers list, and goes to
	// whoever started it (peerd advertises it to the cluster).
	cfg.listen = ln.Addr().String()
	if cfg.name == "" {
		cfg.name = cfg.listen
	}
	peers = slices.DeleteFunc(peers, func(p Peer) bool { return p.Addr == cfg.listen })
	if cfg.addrFile != "" {
		if err := writeAtomic(cfg.addrFile, []byte(cfg.listen+"\n")); err != nil {
			return fmt.Errorf("report the address bound: %w", err)
		}
	}
	n := newNode(cfg, st, log)
	n.setPeers(peers)
	srv := &http.Server{Handler: n.routes(), ReadHeaderTimeout: 5 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	var wg sync.WaitGroup
	serveErr := make(chan error, 1)
	wg.Go(func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			serveErr <- err
		}
	})
	wg.Go(func() { n.antiEntropy(ctx) })
	log.Info("kv started", "name", cfg.name, "listen", cfg.listen, "version", version,
		"protocol", cfg.maxProto, "keys", st.Len(), "peers", len(peers), "health_fault", healthFault)

	var runErr error
loop:
	for {
		select {
		case <-hup:
			peers, err := cfg.loadPeers()
			if err != nil {
				// peerd rewrites the file atomically, so this is a real
				// mistake; keep serving with the peers we know.
				log.Error("reload peers; keeping the previous list", "err", err)
				continue
			}
			n.setPeers(peers)
		case runErr = <-serveErr:
			break loop
		case <-ctx.Done():
			break loop
		}
	}
	// Restore default signal handling: a second SIGTERM kills at once.
	stop()
	log.Info("kv stopping")
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Shutdown lets in-flight writes finish replicating before the log is closed.
	if err := srv.Shutdown(shutCtx); err != nil && runErr == nil {
		runErr = fmt.Errorf("shutdown: %w", err)
	}
	wg.Wait()
	ln.wait(shutCtx)
	n.client.CloseIdleConnections()
	if runErr != nil {
		return runErr
	}
	log.Info("kv stopped")
	return nil
}

// listen is the socket to serve on: the first one passed by socket
// activation (peerd's `listen` for this app, or a systemd .socket unit),
// which was listening before this process started and goes on listening
// after it exits, so that a restart refuses no client; else addr, bound
// now. activation checks LISTEN_PID, so a child that inherited the
// variables from its parent does not take descriptors meant for it.
func listen(addr string, log *slog.Logger) (net.Listener, error) {
	lns, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("listen on the sockets passed by socket activation: %w", err)
	}
	var ln net.Listener
	for _, l := range lns {
		switch {
		case l == nil: // not a stream socket
		case ln == nil:
			ln = l
		default:
			l.Close() // one HTTP address is all kv serves
		}
	}
	if ln != nil {
		log.Info("serving on the socket passed by socket activation; --listen is ignored", "address", ln.Addr().String(), "passed", len(lns))
		return ln, nil
	}
	if len(lns) > 0 {
		return nil, fmt.Errorf("socket activation passed %d descriptors, none a listening stream socket", len(lns))
	}
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	return ln, nil
}

// writeAtomic replaces path with data, so that a reader polling for it
// never sees it half written.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// trackingListener counts the connections it accepted until each is
// closed, so that an exiting instance can wait for them.
type trackingListener struct {
	net.Listener
	open sync.WaitGroup
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.open.Add(1)
	return &trackedConn{Conn: c, done: l.open.Done}, nil
}

// wait returns once every accepted connection was closed, or ctx ended.
func (l *trackingListener) wait(ctx context.Context) {
	done := make(chan struct{})
	go func() { l.open.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

type trackedConn struct {
	net.Conn
	once sync.Once
	done func()
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.done)
	return err
}
