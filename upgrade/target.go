package upgrade

import (
	"context"
	"fmt"
	"runtime"

	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/peerd/peerd/upgrade/versions"
)

// TargetPeerd is the target name of peerd's own binary.
const TargetPeerd = "peerd"

// Self is peerd's own binary as a rollout target: it is checked by running
// it (`version --json`), and it restarts by restarting the agent.
type Self struct {
	// Build is the running binary's identity; Executable its path.
	Build      buildinfo.Info
	Executable string
	Store      *versions.Store
	// Health is the health gate's check: joined, its own checks, and the
	// operator's check command or URL.
	Health func(ctx context.Context) error
	// RequestRestart asks the agent to restart into the version store's
	// choice (by re-exec or by exiting for its supervisor). It must not block.
	RequestRestart func()
	// Preflight asks a binary for its build; artifact.Preflight (an exec)
	// when nil. The fleet harness sets one that needs no exec.
	Preflight func(ctx context.Context, path string) (buildinfo.Info, error)
}

func (s *Self) Name() string                      { return TargetPeerd }
func (s *Self) Running() (string, string)         { return s.Build.Version, s.Executable }
func (s *Self) Versions() *versions.Store         { return s.Store }
func (s *Self) RestartsAgent() bool               { return true }
func (s *Self) VersionOf(m cluster.Member) string { return m.Version }

func (s *Self) Stage(staged, version string) error { return s.Store.Stage(staged, version) }

func (s *Self) Activate(version, running string) error { return s.Store.Activate(version, running) }

func (s *Self) Restart(context.Context) error {
	if s.RequestRestart != nil {
		s.RequestRestart()
	}
	return nil
}

func (s *Self) Healthy(ctx context.Context) error {
	if s.Health == nil {
		return nil
	}
	return s.Health(ctx)
}

func (s *Self) preflight(ctx context.Context, path string) (buildinfo.Info, error) {
	if s.Preflight != nil {
		return s.Preflight(ctx, path)
	}
	return artifact.Preflight(ctx, path)
}

// Check runs the new binary and holds its own account against the plan:
// version, platform, and a protocol range that includes the cluster's
// active protocol.
func (s *Self) Check(ctx context.Context, c Check) ([]string, error) {
	info, err := s.preflight(ctx, c.Staged)
	if err != nil {
		return nil, fmt.Errorf("preflight: %w", err)
	}
	active := c.ActiveProtocol
	if err := artifact.CheckBuild(info, c.Version, runtime.GOOS, runtime.GOARCH, active); err != nil {
		if c.Rollback && !(info.ProtocolMin <= active && active <= info.ProtocolMax) {
			return nil, fmt.Errorf("cannot roll back to %s: every member now speaks protocol %d and %s does not (it speaks %d-%d); a cluster does not go back to an older protocol once all members switched, so roll forward with a fixed release",
				c.Version, active, c.Version, info.ProtocolMin, info.ProtocolMax)
		}
		return nil, err
	}
	return []string{
		fmt.Sprintf("binary reports version %s for %s/%s", info.Version, info.OS, info.Arch),
		fmt.Sprintf("binary speaks protocol %d-%d, which includes the cluster's active protocol %d", info.ProtocolMin, info.ProtocolMax, active),
	}, nil
}

func (s *Self) PreviousVersion(ctx context.Context, path string) (string, error) {
	info, err := s.preflight(ctx, path)
	if err != nil {
		return "", fmt.Errorf("previous binary: %w", err)
	}
	return info.Version, nil
}

// App is a managed application as a rollout target: unlike peerd, it
// restarts without the agent restarting, and its artifact is checked
// without running it. Package daemon fills it in from the app's supervisor.
type App struct {
	AppName string
	Store   *versions.Store
	// Run is the version and binary path of the instance running now.
	Run func() (version, path string)
	// Start starts the version store's choice in place of the running
	// instance and returns once it was started.
	Start func(ctx context.Context) error
	// Preflight checks a staged artifact of the given version.
	Preflight func(ctx context.Context, path, version string) error
	// Put stages a verified artifact into the version store (a bundle is
	// extracted); nil: Store.Stage of the single executable.
	Put func(staged, version string) error
	// Health is the instance's health, as its supervisor sees it.
	Health func(ctx context.Context) error
	// BaseVersion is the version of the binary the app's config names,
	// which a rollback past the version store returns to.
	BaseVersion string
	// MemberVersion is the version of the app a member runs.
	MemberVersion func(cluster.Member) string
}

func (a *App) Name() string                      { return a.AppName }
func (a *App) Running() (string, string)         { return a.Run() }
func (a *App) Versions() *versions.Store         { return a.Store }
func (a *App) RestartsAgent() bool               { return false }
func (a *App) Restart(ctx context.Context) error { return a.Start(ctx) }

func (a *App) Stage(staged, version string) error {
	if a.Put != nil {
		return a.Put(staged, version)
	}
	return a.Store.Stage(staged, version)
}

func (a *App) Activate(version, running string) error { return a.Store.Activate(version, running) }

func (a *App) Healthy(ctx context.Context) error {
	if a.Health == nil {
		return nil
	}
	return a.Health(ctx)
}

func (a *App) VersionOf(m cluster.Member) string {
	if a.MemberVersion == nil {
		return ""
	}
	return a.MemberVersion(m)
}

func (a *App) Check(ctx context.Context, c Check) ([]string, error) {
	if a.Preflight != nil {
		if err := a.Preflight(ctx, c.Staged, c.Version); err != nil {
			return nil, fmt.Errorf("preflight: %w", err)
		}
	}
	return []string{fmt.Sprintf("%s %s passes its preflight here", a.AppName, c.Version)}, nil
}

// PreviousVersion is the version the store kept before the current one,
// or the app config's version when the kept binary is the configured one.
func (a *App) PreviousVersion(context.Context, string) (string, error) {
	prev, err := a.Store.Previous()
	if err != nil {
		return "", err
	}
	v := prev.Version
	if prev.Base {
		v = a.BaseVersion
	}
	if v == "" {
		return "", fmt.Errorf("the version of the previous %s binary is unknown: give --to VERSION (or version in the app block)", a.AppName)
	}
	return v, nil
}
