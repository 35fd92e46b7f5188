// Package apps supervises the applications an agent manages on its node
// (`app "kv" { ... }` in the agent config): it starts each one, restarts it
// with backoff when it crashes, passes its output to the agent's log under
// its name, tells it who its peers are (an env var at start, a peers file
// rewritten atomically on every change, a signal), checks its health, and
// stops it when the agent shuts down.
//
// An application outlives a re-exec of peerd (a self-upgrade): the
// supervisor detaches from the process, hands its PID and output pipe to the
// new peerd image through the environment, and the new image adopts it. The
// application must not restart because peerd did.
//
// What it must never do: signal or wait for a process it did not start or
// adopt; leave a peers file half written.
package apps

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/peerd/peerd/internal/clock"
)

// Config declares one managed application.
type Config struct {
	// Name identifies the application in the cluster (letters, digits, '-', '_').
	Name string
	// Binary is the installed executable, when the application was installed
	// by other means (a package, an image). A newer version in the app's
	// version store (DATA_DIR/apps/NAME/versions) is preferred, as for peerd.
	Binary string
	// Version is Binary's version, as peers are told; optional.
	Version string
	// Args are the arguments after the executable.
	Args []string
	// Env is added to the agent's environment for the application.
	Env map[string]string
	// Address is where peers reach this instance (host:port); it is
	// advertised to the cluster and listed in every peer's peers list.
	// With port 0 the application picks the port and reports the address
	// it bound in the file EnvAddrFile names; until it has, the instance is
	// advertised without an address and is in no peers list. When Listen
	// is given and Address is empty or has port 0, the address is the one
	// the first listener bound.
	Address string
	// Listen are sockets the supervisor owns for the application
	// ("tcp://HOST:PORT", tcp4:// or tcp6://; port 0 picks one): bound once
	// when the supervisor starts and kept open for its lifetime, across
	// every restart of the application and every re-exec of peerd, and
	// passed to each instance as descriptors 3... by the systemd socket
	// activation protocol (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES, each
	// named after the application). While one instance stops and the next
	// starts, clients wait in the listen backlog instead of being refused.
	Listen []string
	Health HealthConfig
	Peers  PeersConfig
	// StopTimeout bounds a graceful stop (SIGTERM) before SIGKILL.
	StopTimeout time.Duration
	// Backoff is the first wait before restarting a crashed application; it
	// doubles up to MaxBackoff and resets once the application ran for
	// MaxBackoff. Each wait is drawn at random from the upper half of its
	// step (internal/jitter).
	Backoff, MaxBackoff time.Duration
	// HealthInterval paces the health check.
	HealthInterval time.Duration
	// Clock paces restarts, stops and health checks; nil is the wall clock.
	Clock clock.Clock
}

// HealthConfig is how the agent checks the application: an HTTP URL that
// must answer 2xx, or a command that must exit 0 (neither: running is
// healthy). An HTTP path alone ("/health") is on the instance's address,
// the one it reported when Address has port 0.
type HealthConfig struct {
	HTTP string
	Cmd  []string
}

// PeersConfig is how the application learns its peers: the JSON list
// [{"name","addr","version"}] in an env var at start, in a file (relative
// paths are in the app's dir) rewritten on every change, and a signal sent
// after each rewrite.
type PeersConfig struct {
	Env    string
	File   string
	Signal string
}

// EnvAddrFile names, in an application's environment, the file where it
// must write the address it bound ("host:port", one line, replaced
// atomically: write a temporary file and rename it) once it listens. It
// is set when the configured address has port 0; the supervisor reads the
// file until the address is there and advertises it from then on.
const EnvAddrFile = "PEERD_APP_ADDR_FILE"

// dynamicPort reports whether addr asks the application to pick its port.
func dynamicPort(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port == "0"
}

// ParseListen reads a listen entry, "tcp://HOST:PORT" (or tcp4://,
// tcp6://), into the network and address net.Listen takes.
func ParseListen(s string) (network, addr string, err error) {
	network, addr, ok := strings.Cut(s, "://")
	switch {
	case !ok:
		return "", "", errors.New("want tcp://HOST:PORT (or tcp4://, tcp6://)")
	case network != "tcp" && network != "tcp4" && network != "tcp6":
		return "", "", fmt.Errorf("scheme %q: want tcp://HOST:PORT (or tcp4://, tcp6://)", network)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "", fmt.Errorf("%q: want HOST:PORT, such as 127.0.0.1:8080 or :0", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", "", fmt.Errorf("port %q: want a number from 0 to 65535", port)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return "", "", fmt.Errorf("host %q: want an IP address (or localhost, or nothing for every address)", host)
	}
	return network, addr, nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$`)

// WithDefaults fills in the timings left zero.
func (c Config) WithDefaults() Config {
	if c.StopTimeout <= 0 {
		c.StopTimeout = 10 * time.Second
	}
	if c.Backoff <= 0 {
		c.Backoff = time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = 2 * time.Second
	}
	if c.Clock == nil {
		c.Clock = clock.Real()
	}
	return c
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if !nameRE.MatchString(c.Name) {
		errs = append(errs, fmt.Errorf("app %q: the name must be 1-32 letters, digits, '-' or '_'", c.Name))
	}
	if c.Address != "" {
		if _, _, err := net.SplitHostPort(c.Address); err != nil {
			errs = append(errs, fmt.Errorf("app %q: address %q: want host:port", c.Name, c.Address))
		}
	}
	for _, l := range c.Listen {
		if _, _, err := ParseListen(l); err != nil {
			errs = append(errs, fmt.Errorf("app %q: listen %q: %w", c.Name, l, err))
		}
	}
	if c.Health.HTTP != "" && len(c.Health.Cmd) > 0 {
		errs = append(errs, fmt.Errorf("app %q: health: give http or cmd, not both", c.Name))
	}
	switch h := c.Health.HTTP; {
	case h == "", strings.HasPrefix(h, "http://"), strings.HasPrefix(h, "https://"):
	case strings.HasPrefix(h, "/"):
		if c.Address == "" && len(c.Listen) == 0 {
			errs = append(errs, fmt.Errorf("app %q: health http %q is a path on the app's address, but it has none: give an address or a whole URL", c.Name, h))
		}
	default:
		errs = append(errs, fmt.Errorf("app %q: health http %q: want an http:// or https:// URL, or a path on the app's address such as /health", c.Name, h))
	}
	if c.Peers.Signal != "" {
		if _, err := ParseSignal(c.Peers.Signal); err != nil {
			errs = append(errs, fmt.Errorf("app %q: peers signal: %w", c.Name, err))
		}
	}
	if c.Peers.File != "" && strings.Contains(c.Peers.File, "\x00") {
		errs = append(errs, fmt.Errorf("app %q: peers file: bad path", c.Name))
	}
	return errors.Join(errs...)
}

var signals = map[string]syscall.Signal{
	"SIGHUP": syscall.SIGHUP, "SIGUSR1": syscall.SIGUSR1, "SIGUSR2": syscall.SIGUSR2,
	"SIGINT": syscall.SIGINT, "SIGTERM": syscall.SIGTERM, "SIGWINCH": syscall.SIGWINCH,
}

// ParseSignal reads a signal name such as "SIGHUP" or "HUP".
func ParseSignal(name string) (syscall.Signal, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	if !strings.HasPrefix(n, "SIG") {
		n = "SIG" + n
	}
	if s, ok := signals[n]; ok {
		return s, nil
	}
	return 0, fmt.Errorf("unknown signal %q: want SIGHUP, SIGUSR1, SIGUSR2, SIGINT, SIGTERM or SIGWINCH", name)
}
