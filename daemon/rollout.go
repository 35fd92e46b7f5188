package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/peerd/peerd/upgrade/versions"
)

// newEngine wires the rollout engine to this agent: its cluster, its
// health checks, and its way of restarting.
func (a *Agent) newEngine() (*upgrade.Engine, error) {
	keys, err := artifact.LoadTrustedKeys(a.cfg.TrustKeys...)
	if err != nil {
		return nil, fmt.Errorf("--trust-key: %w", err)
	}
	return upgrade.New(upgrade.Config{
		DataDir: a.cfg.DataDir,
		Target: &upgrade.Self{
			Build:      a.opts.Build,
			Executable: a.opts.Executable,
			Store:      a.Versions(),
			Health:     a.healthy,
			RequestRestart: func() {
				select {
				case a.restart <- struct{}{}:
				default:
				}
			},
		},
		TrustedKeys:   keys,
		AllowUnsigned: a.cfg.AllowUnsigned,
		AllowOutage:   a.cfg.AllowOutage,
		Identity:      a.id,
		PeerHTTPAddr:  func(m cluster.Member) string { return memberRow(m).HTTPAddr },
		Logger:        a.opts.Logger,
		HookDir:       a.opts.HookDir,
	}, a.cluster)
}

// healthy is the health gate's check of an upgraded node: it is back in the
// cluster, serves its peer API, and passes the operator's own checks.
func (a *Agent) healthy(ctx context.Context) error {
	if f := buildinfo.HealthFault; f != "" {
		return fmt.Errorf("built-in fault: %s", f)
	}
	alive := 0
	for _, m := range a.cluster.Members() {
		if m.Status == "alive" {
			alive++
		}
	}
	if alive < 2 && len(a.cluster.Members()) > 1 {
		return errors.New("not rejoined: no other member is alive in this node's view")
	}
	if err := httpOK(ctx, "http://"+a.httpAddr+"/v1/health"); err != nil {
		return fmt.Errorf("own peer API: %w", err)
	}
	if a.cfg.HealthCmd != "" {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(cctx, "/bin/sh", "-c", a.cfg.HealthCmd).CombinedOutput()
		if err != nil {
			return fmt.Errorf("--health-cmd: %w: %.200s", err, out)
		}
	}
	if a.cfg.HealthURL != "" {
		if err := httpOK(ctx, a.cfg.HealthURL); err != nil {
			return fmt.Errorf("--health-url: %w", err)
		}
	}
	return nil
}

func httpOK(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// Engine exposes the rollout engine (for in-process tests).
func (a *Agent) Engine() *upgrade.Engine { return a.engine }

// Launcher is the binary to start again after a self-upgrade: it runs the
// version store's current version when that is newer than itself.
func (a *Agent) Launcher() string { return a.opts.Launcher }

// Versions is the version store a self-upgrade installs into.
func (a *Agent) Versions() *versions.Store {
	return VersionStore(a.cfg.DataDir, a.opts.Launcher)
}

// VersionStore is the version store of peerd in dataDir, for the launcher
// at launcher.
func VersionStore(dataDir, launcher string) *versions.Store {
	return versions.New(filepath.Join(dataDir, "versions"), "peerd", launcher)
}
