package agenttest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/daemon"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/stretchr/testify/require"
)

// FakeBinary writes an executable script that answers `version --json` as
// a peerd build would. In-process rollouts install such scripts in place of
// real binaries: preflight runs them for real, and the supervisor restarts
// an agent at whatever version its executable now reports.
func FakeBinary(t testing.TB, dir string, b buildinfo.Info) string {
	t.Helper()
	js, err := json.Marshal(b)
	require.NoError(t, err)
	path := filepath.Join(dir, fmt.Sprintf("peerd-%s", b.Version))
	script := fmt.Sprintf("#!/bin/sh\n# fake peerd %s\nif [ \"$1\" = version ]; then echo '%s'; exit 0; fi\nexit 3\n", b.Version, js)
	require.NoError(t, os.WriteFile(path, []byte(script), 0o755))
	return path
}

// Supervised is an in-process agent restarted by the test, as systemd would:
// when the agent asks to restart into a new binary, the supervisor closes it
// and starts a new agent with the same config at the build its executable
// reports.
type Supervised struct {
	t    testing.TB
	cfg  daemon.Config
	opts daemon.Options

	mu       sync.Mutex
	node     *Node
	restarts int

	cancel context.CancelFunc
	done   chan struct{}
}

// Supervise starts an agent whose executable is exe and keeps it running
// until the test ends.
func Supervise(t testing.TB, cfg daemon.Config, exe string, opts daemon.Options) *Supervised {
	t.Helper()
	opts.Launcher = exe
	s := &Supervised{t: t, cfg: cfg, opts: opts, done: make(chan struct{})}
	node, err := s.start()
	require.NoError(t, err)
	s.node = node
	// Restart on the same addresses, as a real node would: the cluster
	// knows this node by them.
	s.cfg.Bind = node.Agent.Cluster().LocalAddr()
	s.cfg.HTTPAddr = node.Agent.HTTPAddr()
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.loop(ctx)
	t.Cleanup(s.Stop)
	return s
}

func (s *Supervised) start() (*Node, error) {
	// Start what the launcher would: the version store's current binary
	// when it is newer than the launcher.
	launcher := s.opts.Launcher
	b, err := artifact.Preflight(context.Background(), launcher)
	if err != nil {
		return nil, err
	}
	exe := launcher
	chosen, _, err := daemon.VersionStore(s.cfg.DataDir, launcher).Select(b.Version)
	if err != nil {
		return nil, err
	}
	if !chosen.Base {
		exe = chosen.Path
		if b, err = artifact.Preflight(context.Background(), exe); err != nil {
			return nil, err
		}
	}
	opts := s.opts
	opts.Build = b
	opts.Executable = exe
	a, err := daemon.New(s.cfg, opts)
	if err != nil {
		return nil, err
	}
	if err := a.Start(context.Background()); err != nil {
		a.Close()
		return nil, err
	}
	return &Node{Name: s.cfg.Node, Agent: a, Config: s.cfg}, nil
}

func (s *Supervised) loop(ctx context.Context) {
	defer close(s.done)
	for {
		n := s.Node()
		err := n.Agent.Run(ctx, nil, nil)
		n.Agent.Close()
		if !errors.Is(err, daemon.ErrRestart) {
			return
		}
		next, err := s.start()
		if err != nil {
			s.t.Errorf("supervisor: restart %s: %v", s.cfg.Node, err)
			return
		}
		s.mu.Lock()
		s.node = next
		s.restarts++
		s.mu.Unlock()
	}
}

// Node is the agent currently running.
func (s *Supervised) Node() *Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.node
}

// Restarts counts restarts into a new binary.
func (s *Supervised) Restarts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restarts
}

// Stop stops the agent and the supervisor.
func (s *Supervised) Stop() {
	s.cancel()
	<-s.done
}
