package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/peerd/peerd/apps"
	"github.com/peerd/peerd/daemon"
	"github.com/peerd/peerd/internal/handoff"
	"github.com/peerd/peerd/internal/textbusy"
	"github.com/urfave/cli/v2"
)

func agentCommand() *cli.Command {
	return &cli.Command{
		Name:  "agent",
		Usage: "run the peerd agent on this node",
		Description: "Joins (or starts) a cluster and serves the local control API and the peer HTTP API.\n" +
			"Settings come from, lowest first: defaults, the --config file (HCL), the files of --config-dir,\n" +
			"PEERD_* environment variables, and flags. SIGHUP reloads tags and log level from the config file; SIGINT or\n" +
			"SIGTERM leave the cluster gracefully and exit.\n\n" +
			"Example:\n" +
			"  peerd agent --data-dir /var/lib/peerd --join 10.0.0.1 --tag zone=a",
		Flags:  agentFlags(),
		Action: runAgent,
	}
}

func agentFlags() []cli.Flag {
	env := func(name string) []string { return []string{"PEERD_" + name} }
	return []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "read settings from this HCL `FILE` (keys are the flag names with '_' for '-')", EnvVars: env("CONFIG")},
		&cli.StringFlag{Name: "config-dir", Usage: "then read every *.hcl and *.json (HCL's JSON form) file in `DIR`, in name order; a later file's keys win, app blocks add up", EnvVars: env("CONFIG_DIR")},
		&cli.StringFlag{Name: "node", Usage: "this node's unique `NAME` (default: the hostname)", EnvVars: env("NODE")},
		&cli.StringFlag{Name: "bind", Usage: "gossip `ADDR` (HOST:PORT), TCP and UDP; port 0 picks a free one, kept across restarts while free (default 0.0.0.0:7946)", EnvVars: env("BIND")},
		&cli.StringFlag{Name: "advertise", Usage: "gossip `HOST:PORT` other nodes reach this one at, when not --bind (port 0: the bound port)", EnvVars: env("ADVERTISE")},
		&cli.StringSliceFlag{Name: "join", Usage: "join the cluster at this gossip `ADDR` at start (repeatable); fail if none answers", EnvVars: env("JOIN")},
		&cli.StringSliceFlag{Name: "retry-join", Usage: "keep trying to join this `ADDR` with backoff until it answers (repeatable)", EnvVars: env("RETRY_JOIN")},
		&cli.DurationFlag{Name: "retry-join-interval", Usage: "first wait between retry-join attempts; it doubles (each wait is drawn from the upper half of its step)", DefaultText: "1s", EnvVars: env("RETRY_JOIN_INTERVAL")},
		&cli.DurationFlag{Name: "retry-join-max-interval", Usage: "longest wait between retry-join attempts", DefaultText: "30s", EnvVars: env("RETRY_JOIN_MAX_INTERVAL")},
		&cli.StringFlag{Name: "data-dir", Usage: "`DIR` for the cluster snapshot, socket and state (required; created 0700)", EnvVars: env("DATA_DIR")},
		&cli.StringFlag{Name: "encrypt", Usage: "base64 gossip encryption `KEY` (make one with 'peerd keygen')", EnvVars: env("ENCRYPT")},
		&cli.StringFlag{Name: "keyring-file", Usage: "gossip keyring `FILE`: a JSON array of base64 keys, primary first; --encrypt seeds it at the first start, then it wins (default DATA_DIR/keyring.json)", EnvVars: env("KEYRING_FILE")},
		&cli.BoolFlag{Name: "insecure-gossip", Usage: "run without gossip encryption, so anyone who reaches the gossip port can join (throwaway test clusters only)", EnvVars: env("INSECURE_GOSSIP")},
		&cli.StringSliceFlag{Name: "tag", Usage: "advertise a `KEY=VALUE` tag, e.g. zone=a (repeatable)", EnvVars: env("TAG")},
		&cli.StringFlag{Name: "http-addr", Usage: "peer HTTP API `HOST:PORT`; port 0 picks a free one (default: the bind host, port 7947, or 0 with a --bind port of 0)", EnvVars: env("HTTP_ADDR")},
		&cli.StringFlag{Name: "socket", Usage: "serve the control API on this unix socket `FILE` (default DATA_DIR/peerd.sock)", EnvVars: env("SOCKET")},
		&cli.StringFlag{Name: "log-level", Usage: "log at this `LEVEL` and above: debug, info, warn or error (default info)", EnvVars: env("LOG_LEVEL")},
		&cli.BoolFlag{Name: "log-json", Usage: "log JSON lines instead of text", EnvVars: env("LOG_JSON")},
		&cli.StringSliceFlag{Name: "trust-key", Usage: "accept artifacts signed by this minisign public key `FILE` (repeatable)", EnvVars: env("TRUST_KEY")},
		&cli.BoolFlag{Name: "allow-unsigned", Usage: "accept unsigned artifacts when no --trust-key is given (demos and tests only)", EnvVars: env("ALLOW_UNSIGNED")},
		&cli.BoolFlag{Name: "allow-outage", Usage: "accept rollout plans made with --allow-outage, whose waves may take every member offline (e.g. a one-node cluster)", EnvVars: env("ALLOW_OUTAGE")},
		&cli.StringFlag{Name: "restart", Usage: "how to start a self-upgrade's new binary, `MODE`: reexec (in place, same PID) or supervisor (exit 75 for systemd/Nomad to restart) (default reexec)", EnvVars: env("RESTART")},
		&cli.StringFlag{Name: "health-cmd", Usage: "an upgraded node must also pass this shell `COMMAND` (exit 0) before its wave is done", EnvVars: env("HEALTH_CMD")},
		&cli.StringFlag{Name: "health-url", Usage: "an upgraded node must also get a 2xx from this `URL` before its wave is done", EnvVars: env("HEALTH_URL")},
		&cli.StringFlag{Name: "gossip-profile", Usage: "gossip timings, `PROFILE`: lan, wan, local, fast (loopback demos and tests), or local-large (many agents on one host: ~100 on two cores) (default lan)", EnvVars: env("GOSSIP_PROFILE")},
	}
}

// agentConfig layers defaults, under Nomad the allocation's node name and
// addresses, the config file, then env and flags (which urfave/cli has
// already layered: a flag wins over its env var).
func agentConfig(c *cli.Context) (daemon.Config, error) {
	cfg := daemon.DefaultConfig()
	daemon.ApplyNomadEnv(&cfg, os.Getenv)
	var paths []string
	for _, name := range []string{"config", "config-dir"} {
		if p := c.String(name); p != "" {
			paths = append(paths, p)
		}
	}
	if err := daemon.LoadPaths(&cfg, paths...); err != nil {
		return cfg, err
	}
	str := func(name string, dst *string) {
		if c.IsSet(name) {
			*dst = c.String(name)
		}
	}
	str("node", &cfg.Node)
	str("bind", &cfg.Bind)
	str("advertise", &cfg.Advertise)
	str("data-dir", &cfg.DataDir)
	str("encrypt", &cfg.Encrypt)
	str("keyring-file", &cfg.KeyringFile)
	str("http-addr", &cfg.HTTPAddr)
	str("socket", &cfg.Socket)
	str("log-level", &cfg.LogLevel)
	str("gossip-profile", &cfg.GossipProfile)
	str("restart", &cfg.Restart)
	str("health-cmd", &cfg.HealthCmd)
	str("health-url", &cfg.HealthURL)
	if c.IsSet("trust-key") {
		cfg.TrustKeys = c.StringSlice("trust-key")
	}
	if c.IsSet("allow-unsigned") {
		cfg.AllowUnsigned = c.Bool("allow-unsigned")
	}
	if c.IsSet("insecure-gossip") {
		cfg.InsecureGossip = c.Bool("insecure-gossip")
	}
	if c.IsSet("allow-outage") {
		cfg.AllowOutage = c.Bool("allow-outage")
	}
	if c.IsSet("join") {
		cfg.Join = c.StringSlice("join")
	}
	if c.IsSet("retry-join") {
		cfg.RetryJoin = c.StringSlice("retry-join")
	}
	if c.IsSet("retry-join-interval") {
		cfg.RetryJoinInterval = c.Duration("retry-join-interval")
	}
	if c.IsSet("retry-join-max-interval") {
		cfg.RetryJoinMaxInterval = c.Duration("retry-join-max-interval")
	}
	if c.IsSet("log-json") {
		cfg.LogJSON = c.Bool("log-json")
	}
	if c.IsSet("tag") {
		cfg.Tags = map[string]string{}
		for _, kv := range c.StringSlice("tag") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return cfg, usagef("--tag %q: want KEY=VALUE", kv)
			}
			cfg.Tags[k] = v
		}
	}
	return cfg, cfg.Validate()
}

func runAgent(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("agent takes no arguments, got %q (flags start with --)", c.Args().First())
	}
	cfg, err := agentConfig(c)
	if err != nil {
		return err
	}
	level := new(slog.LevelVar)
	lvl, _ := daemon.ParseLogLevel(cfg.LogLevel)
	level.Set(lvl)
	logger := newLogger(c.App.ErrWriter, cfg.LogJSON, level)
	launcher, self, err := launch(cfg, logger)
	if err != nil {
		return err
	}
	// Taken before anything can start a child, which would inherit them.
	inherited, err := handoff.Inherit()
	if err != nil {
		logger.Error("the sockets handed over by the previous image are lost; binding afresh", "err", err)
	}
	defer inherited.Close()
	handovers, err := daemon.AppHandoversFromEnv()
	if err != nil {
		logger.Error("applications handed over by the previous image are lost; they will be started again", "err", err)
	}

	// Signals are caught before Start so that a SIGTERM during a slow join
	// is not lost: Run sees it as soon as Start returns.
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(signals)

	agent, err := daemon.New(cfg, daemon.Options{
		Logger: logger, Level: level, Executable: self, Launcher: launcher, AppHandovers: handovers, Inherited: inherited,
		HookDir: testHookDir(),
	})
	if err != nil {
		return err
	}
	defer agent.Close()
	if err := agent.Start(c.Context); err != nil {
		return err
	}
	runErr := agent.Run(c.Context, signals, func() (daemon.Config, error) { return agentConfig(c) })
	var keep []apps.Handover
	sockets := &handoff.Set{}
	if errors.Is(runErr, daemon.ErrRestart) && cfg.Restart == daemon.RestartReexec {
		// The applications keep running across the re-exec, and the
		// listening sockets stay open: the next image serves on them.
		keep = agent.DetachApps()
		if sockets, err = agent.HandOff(); err != nil {
			logger.Warn("hand the listening sockets over; the next image binds afresh", "err", err)
		}
	}
	if err := agent.Close(); err != nil && runErr == nil {
		sockets.Close()
		return fmt.Errorf("stop agent: %w", err)
	}
	if errors.Is(runErr, daemon.ErrRestart) {
		return restart(agent.Launcher(), cfg, logger, keep, sockets)
	}
	if runErr != nil {
		return runErr
	}
	logger.Info("agent stopped")
	return nil
}

// restart starts the launcher again after a self-upgrade (it runs the new
// version from the version store): in place with the same PID (systemd's
// Type=notify sees READY again), or by exiting with daemon.ExitRestart for
// a supervisor to start it.
func restart(exe string, cfg daemon.Config, logger *slog.Logger, keep []apps.Handover, sockets *handoff.Set) error {
	defer sockets.Close() // reached only when the exec failed
	if cfg.Restart == daemon.RestartSupervisor {
		logger.Info("exiting for the supervisor to start the new binary", "exit_code", daemon.ExitRestart)
		return cli.Exit("", daemon.ExitRestart)
	}
	logger.Info("re-executing the launcher in place", "path", exe)
	env := os.Environ()
	if cur, ok, err := daemon.VersionStore(cfg.DataDir, exe).Current(); err == nil && ok {
		env = append(env, envActivated+"="+cur.Version)
	}
	if len(keep) > 0 {
		env = append(env, daemon.AppHandoverEnv(keep))
	}
	if sockets.Len() > 0 {
		// Last before the exec: from here the descriptors are inheritable.
		v, err := sockets.Env()
		if err != nil {
			logger.Warn("hand the listening sockets over; the next image binds afresh", "err", err)
		} else {
			env = append(env, v)
		}
	}
	err := textbusy.Retry(context.Background(), func() error {
		return syscall.Exec(exe, os.Args, env)
	})
	return fmt.Errorf("re-exec %s: %w", exe, err)
}

func newLogger(w io.Writer, json bool, level slog.Leveler) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if json {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
