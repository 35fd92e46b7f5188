package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/peerd/peerd/apps"
	"github.com/peerd/peerd/cluster"
)

// Tags the agent owns on top of cluster's "v" and "p": "h" is the peer HTTP
// port (or host:port when it is not on the gossip host) and "r" is reserved
// for the rollout state.
const (
	TagHTTP    = "h"
	TagRollout = "r"
)

var reservedTags = []string{cluster.TagVersion, cluster.TagProtocol, cluster.TagLeaving, cluster.TagKey, TagHTTP, TagRollout}

// reservedTagPrefixes start the tags peerd keeps per managed application:
// its state, its protocol range and its rollouts' progress.
var reservedTagPrefixes = []string{TagAppPrefix, TagAppProtocolPrefix, TagRollout + "."}

// peerdTag reports whether tag key is one of peerd's own, not the user's.
func peerdTag(k string) bool {
	return slices.Contains(reservedTags, k) ||
		slices.ContainsFunc(reservedTagPrefixes, func(p string) bool { return strings.HasPrefix(k, p) })
}

// maxSocketPath is the longest path a unix socket can have on Linux (108
// bytes including the terminating NUL).
const maxSocketPath = 107

// Config is the agent's configuration: defaults, then the config file, then
// PEERD_* environment variables, then flags. It does not change after New;
// a reload builds a new one.
type Config struct {
	// Node is this node's unique name in the cluster.
	Node string
	// Bind is the gossip address (TCP and UDP). Port 0 picks a free port
	// at the first start and keeps it across restarts while it is free
	// (the addresses file in DataDir remembers it).
	Bind string
	// Advertise is the gossip address others reach this node at, if not Bind.
	Advertise string
	// Join lists gossip addresses to join at start; start fails if none answers.
	Join []string
	// RetryJoin lists addresses to keep trying, with backoff, until one answers.
	RetryJoin []string
	// RetryJoinInterval is the first step of the wait between retry-join
	// attempts; it doubles up to RetryJoinMaxInterval. Each wait is drawn at
	// random from the upper half of its step (internal/jitter).
	RetryJoinInterval    time.Duration
	RetryJoinMaxInterval time.Duration
	// DataDir holds the Serf snapshot, the control socket and, later, state.
	DataDir string
	// Encrypt is a base64 gossip key; KeyringFile a JSON keyring (default
	// DataDir/keyring.json). Gossip is always encrypted unless
	// InsecureGossip: Encrypt seeds the keyring file at the first start and
	// the file wins after that, so keys rotated at runtime (peerd keyring)
	// survive a restart, as Consul's agent does.
	Encrypt     string
	KeyringFile string
	// InsecureGossip runs without gossip encryption: anyone who reaches the
	// gossip port can join. For throwaway test clusters only.
	InsecureGossip bool
	// Tags are user tags advertised to the cluster, e.g. zone=a.
	Tags map[string]string
	// HTTPAddr is the peer HTTP API address; empty means the bind host with
	// port 7947, or with port 0 when the bind port is 0. Port 0 picks a free
	// port as Bind does; the advertised tag carries the one bound.
	HTTPAddr string
	// Socket is the control API socket; empty means DataDir/peerd.sock.
	Socket string
	// LogLevel is debug, info, warn or error; LogJSON switches to JSON lines.
	LogLevel string
	LogJSON  bool
	// GossipProfile selects gossip timings: one of cluster.Profiles.
	GossipProfile string
	// TrustKeys are minisign public key files; artifacts must be signed by
	// one of them. AllowUnsigned accepts unsigned artifacts when there are none.
	TrustKeys     []string
	AllowUnsigned bool
	// AllowOutage accepts rollout plans made with --allow-outage, whose
	// waves may take every member offline (a one-node cluster). A plan
	// cannot impose that on a node whose policy does not allow it.
	AllowOutage bool
	// Restart is how the agent restarts into a new binary: "reexec" (same
	// PID, in place) or "supervisor" (exit with ExitRestart and let systemd,
	// Nomad or another supervisor start it again).
	Restart string
	// HealthCmd (run by sh -c) and HealthURL (must answer 2xx) are extra
	// checks an upgraded node must pass before its wave counts as done.
	HealthCmd string
	HealthURL string
	// ConfigFiles are the files the config was read from, in order.
	ConfigFiles []string
	// Apps are the applications the agent supervises on this node (HCL
	// `app "NAME" { ... }` blocks; the config file only).
	Apps []apps.Config
}

// Restart modes.
const (
	RestartReexec     = "reexec"
	RestartSupervisor = "supervisor"
)

// ExitRestart is the exit code with which an agent in supervisor mode asks
// to be started again (EX_TEMPFAIL).
const ExitRestart = 75

// DefaultHTTPPort is the peer HTTP API's port when --http-addr is not given.
const DefaultHTTPPort = 7947

// DefaultConfig returns the defaults every other source overrides.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Node:                 host,
		Bind:                 "0.0.0.0:7946",
		RetryJoinInterval:    time.Second,
		RetryJoinMaxInterval: 30 * time.Second,
		LogLevel:             "info",
		GossipProfile:        cluster.ProfileLAN,
		Restart:              RestartReexec,
	}
}

var nodeNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Validate reports every problem in the config at once.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if !nodeNameRE.MatchString(c.Node) {
		add("node name %q: use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit (--node)", c.Node)
	}
	if _, _, err := cluster.SplitHostPort(c.Bind); err != nil {
		add("--bind: %w", err)
	}
	if c.Advertise != "" {
		if host, _, err := cluster.SplitHostPort(c.Advertise); err != nil {
			add("--advertise: %w", err)
		} else if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			add("--advertise %s: other nodes cannot reach an unspecified address; give the IP address they reach this node at (or leave --advertise out: memberlist then picks this host's address)", c.Advertise)
		} else if _, bp, _ := cluster.SplitHostPort(c.Bind); bp == 0 {
			// memberlist advertises the port it picks for 0 instead.
			if _, ap, _ := cluster.SplitHostPort(c.Advertise); ap != 0 {
				add("--advertise %s names port %d, but --bind %s lets the kernel pick the port: give --bind a fixed port, or --advertise port 0 (the bound one)", c.Advertise, ap, c.Bind)
			}
		}
	}
	if c.HTTPAddr != "" {
		if _, _, err := cluster.SplitHostPort(c.HTTPAddr); err != nil {
			add("--http-addr: %w", err)
		}
	}
	for _, a := range append(append([]string{}, c.Join...), c.RetryJoin...) {
		if err := ValidateJoinAddr(a); err != nil {
			add("join address: %w", err)
		}
	}
	if c.RetryJoinInterval <= 0 || c.RetryJoinMaxInterval < c.RetryJoinInterval {
		add("retry-join interval %s (max %s): want 0 < interval <= max", c.RetryJoinInterval, c.RetryJoinMaxInterval)
	}
	if c.DataDir == "" {
		add("no data dir: give one with --data-dir, PEERD_DATA_DIR or data_dir in the config file")
	}
	if c.Encrypt != "" {
		if _, err := cluster.ParseKey(c.Encrypt); err != nil {
			add("--encrypt: %w", err)
		}
	}
	switch {
	case c.InsecureGossip && (c.Encrypt != "" || c.KeyringFile != ""):
		add("--insecure-gossip turns gossip encryption off, but --encrypt or --keyring-file is given: choose one")
	case !c.InsecureGossip && c.Encrypt == "" && c.KeyringFile == "" && c.DataDir != "" && !fileExists(c.KeyringPath()):
		add("no gossip key: every agent of a cluster needs the same one. Make it once with 'peerd keygen' and give it to each agent " +
			"with --encrypt KEY, PEERD_ENCRYPT or encrypt in the config file (or a keyring_file); --insecure-gossip runs without one, " +
			"for a throwaway test cluster only")
	}
	for k := range c.Tags {
		switch {
		case k == "":
			add("tag with an empty key: want KEY=VALUE")
		case slices.Contains(reservedTags, k):
			add("tag %q is reserved for peerd; choose another key", k)
		case peerdTag(k):
			add("tag %q: keys starting with %s are peerd's (managed applications and their rollouts); choose another key",
				k, strings.Join(reservedTagPrefixes, ", "))
		}
	}
	if len(c.SocketPath()) > maxSocketPath {
		add("socket path %s is %d bytes, longer than the %d a unix socket allows: choose a shorter --socket or --data-dir", c.SocketPath(), len(c.SocketPath()), maxSocketPath)
	}
	if _, err := ParseLogLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if c.Restart != RestartReexec && c.Restart != RestartSupervisor {
		add("--restart %q: want reexec or supervisor", c.Restart)
	}
	if c.HealthURL != "" && !strings.HasPrefix(c.HealthURL, "http://") && !strings.HasPrefix(c.HealthURL, "https://") {
		add("--health-url %q: want an http:// or https:// URL", c.HealthURL)
	}
	for _, k := range c.TrustKeys {
		if _, err := os.Stat(k); err != nil {
			add("--trust-key: %w", err)
		}
	}
	if !slices.Contains(cluster.Profiles, c.GossipProfile) {
		add("gossip profile %q: want one of %s", c.GossipProfile, strings.Join(cluster.Profiles, ", "))
	}
	seen := map[string]bool{}
	for _, app := range c.Apps {
		if err := app.Validate(); err != nil {
			errs = append(errs, err)
		}
		if seen[app.Name] {
			add("app %q is declared twice", app.Name)
		}
		seen[app.Name] = true
	}
	return errors.Join(errs...)
}

// ValidateJoinAddr checks a --join address (HOST or HOST:PORT), as the
// agent will read it; 'peerd join' checks its arguments with it too.
func ValidateJoinAddr(a string) error {
	if a == "" {
		return errors.New("empty address")
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		// memberlist accepts a bare host and uses the default port.
		if strings.Contains(a, ":") && net.ParseIP(a) == nil {
			return fmt.Errorf("%q is not HOST or HOST:PORT", a)
		}
		return nil
	}
	if host == "" {
		return fmt.Errorf("%q has no host", a)
	}
	if _, _, err := cluster.SplitHostPort(net.JoinHostPort("127.0.0.1", port)); err != nil {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", a, port)
	}
	return nil
}

// KeyringPath is the gossip keyring file: KeyringFile, or keyring.json in
// the data dir. Serf rewrites it on every key change.
func (c Config) KeyringPath() string {
	if c.KeyringFile != "" {
		return c.KeyringFile
	}
	return filepath.Join(c.DataDir, "keyring.json")
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// restartNeeded lists the config file keys whose values differ between the
// running config and a reloaded one, other than those a reload applies
// (tags and log_level): a SIGHUP must not let an operator believe that a
// new bind address or trust key is in force.
func restartNeeded(running, reloaded Config) []string {
	var keys []string
	for _, f := range []struct {
		key      string
		old, new any
	}{
		{"node", running.Node, reloaded.Node},
		{"bind", running.Bind, reloaded.Bind},
		{"advertise", running.Advertise, reloaded.Advertise},
		{"join", running.Join, reloaded.Join},
		{"retry_join", running.RetryJoin, reloaded.RetryJoin},
		{"retry_join_interval", running.RetryJoinInterval, reloaded.RetryJoinInterval},
		{"retry_join_max_interval", running.RetryJoinMaxInterval, reloaded.RetryJoinMaxInterval},
		{"data_dir", running.DataDir, reloaded.DataDir},
		{"encrypt", running.Encrypt, reloaded.Encrypt},
		{"keyring_file", running.KeyringFile, reloaded.KeyringFile},
		{"insecure_gossip", running.InsecureGossip, reloaded.InsecureGossip},
		{"http_addr", running.HTTPAddr, reloaded.HTTPAddr},
		{"socket", running.Socket, reloaded.Socket},
		{"log_json", running.LogJSON, reloaded.LogJSON},
		{"gossip_profile", running.GossipProfile, reloaded.GossipProfile},
		{"trust_key", running.TrustKeys, reloaded.TrustKeys},
		{"allow_unsigned", running.AllowUnsigned, reloaded.AllowUnsigned},
		{"allow_outage", running.AllowOutage, reloaded.AllowOutage},
		{"restart", running.Restart, reloaded.Restart},
		{"health_cmd", running.HealthCmd, reloaded.HealthCmd},
		{"health_url", running.HealthURL, reloaded.HealthURL},
		{"app", running.Apps, reloaded.Apps},
	} {
		if !reflect.DeepEqual(f.old, f.new) {
			keys = append(keys, f.key)
		}
	}
	return keys
}

// SocketPath is the control socket's path.
func (c Config) SocketPath() string {
	if c.Socket != "" {
		return c.Socket
	}
	return filepath.Join(c.DataDir, "peerd.sock")
}

// HTTPAddress is the peer HTTP address, defaulting to the bind host with
// DefaultHTTPPort; with a bind port of 0, any free port too, so that agents
// started with only --bind HOST:0 do not collide on 7947.
func (c Config) HTTPAddress() string {
	if c.HTTPAddr != "" {
		return c.HTTPAddr
	}
	host, port, _ := cluster.SplitHostPort(c.Bind)
	if port == 0 {
		return net.JoinHostPort(host, "0")
	}
	return net.JoinHostPort(host, fmt.Sprint(DefaultHTTPPort))
}

// ParseLogLevel maps a --log-level value to slog's.
func ParseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
}
