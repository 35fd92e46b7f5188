package daemon

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/peerd/peerd/apps"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/daemon/api"
	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/peerd/peerd/upgrade/versions"
)

// engineMux hands each Serf event and query to the engine it is for:
// peerd's own, or a managed application's; and member changes to all.
type engineMux struct{ a *Agent }

func (m engineMux) HandleMembers(ms []cluster.Member) {
	a := m.a
	if a.engine != nil {
		a.engine.MembersChanged(ms)
	}
	a.appMu.Lock()
	defer a.appMu.Unlock()
	for name, e := range a.appEngines {
		e.MembersChanged(appMembers(ms, TagAppPrefix+name))
	}
}

func (m engineMux) HandleEvent(name string, ltime uint64, payload []byte) {
	for _, e := range m.a.engines() {
		if e.Handles(name) {
			e.HandleEvent(name, ltime, payload)
		}
	}
}

func (m engineMux) HandleQuery(name string, payload []byte) ([]byte, error) {
	for _, e := range m.a.engines() {
		if e.Handles(name) {
			return e.HandleQuery(name, payload)
		}
	}
	return nil, fmt.Errorf("unknown query %q (is the application configured on this node?)", name)
}

// engines are every rollout engine of this agent, peerd's first.
func (a *Agent) engines() []*upgrade.Engine {
	a.appMu.Lock()
	defer a.appMu.Unlock()
	out := []*upgrade.Engine{}
	if a.engine != nil {
		out = append(out, a.engine)
	}
	for _, e := range a.appEngines {
		out = append(out, e)
	}
	return out
}

// engineFor is the engine of target: peerd's for "", or an application's.
func (a *Agent) engineFor(target string) (*upgrade.Engine, error) {
	if target == "" || target == upgrade.TargetPeerd {
		if a.engine == nil {
			return nil, errors.New("the rollout engine is not running")
		}
		return a.engine, nil
	}
	a.appMu.Lock()
	e := a.appEngines[target]
	a.appMu.Unlock()
	if e == nil {
		return nil, fmt.Errorf("no application %q on this node: declare it with app %q { ... } in the agent config", target, target)
	}
	return e, nil
}

// engineOf picks the engine a request is for (?target=NAME, peerd by
// default), answering 404 itself when there is none.
func (a *Agent) engineOf(w http.ResponseWriter, r *http.Request) (*upgrade.Engine, bool) {
	e, err := a.engineFor(r.URL.Query().Get("target"))
	if err != nil {
		writeError(w, http.StatusNotFound, err)
		return nil, false
	}
	return e, true
}

// newAppEngine wires a rollout engine to a supervised application: the
// application's version store, its restart and its health, and a view of
// the cluster limited to the members that run it.
func (a *Agent) newAppEngine(sup *apps.Supervisor) (*upgrade.Engine, error) {
	keys, err := artifact.LoadTrustedKeys(a.cfg.TrustKeys...)
	if err != nil {
		return nil, fmt.Errorf("--trust-key: %w", err)
	}
	return upgrade.New(upgrade.Config{
		DataDir: a.cfg.DataDir,
		Dir:     filepath.Join(a.cfg.DataDir, "apps", sup.Name(), "rollout"),
		Target: &upgrade.App{
			AppName: sup.Name(),
			Store:   sup.Versions(),
			Run:     sup.Running,
			Start: func(ctx context.Context) error {
				ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
				defer cancel()
				return sup.Restart(ctx)
			},
			Preflight: func(_ context.Context, path, version string) error {
				return checkAppArtifact(path, sup.Name(), version, a.appInstances)
			},
			Put: func(staged, version string) error {
				return stageAppArtifact(sup.Versions(), staged, version)
			},
			Health: func(context.Context) error {
				st := sup.Status()
				if !st.Healthy() {
					if st.Reason != "" {
						return fmt.Errorf("%s is %s: %s", st.Name, st.State, st.Reason)
					}
					return fmt.Errorf("%s is %s", st.Name, st.State)
				}
				return nil
			},
			BaseVersion: sup.BaseVersion(),
			MemberVersion: func(m cluster.Member) string {
				app, _ := parseAppTag(m, sup.Name())
				return app.Version
			},
		},
		TrustedKeys:   keys,
		AllowUnsigned: a.cfg.AllowUnsigned,
		AllowOutage:   a.cfg.AllowOutage,
		Identity:      a.id,
		PeerHTTPAddr:  func(m cluster.Member) string { return memberRow(m).HTTPAddr },
		PeerClient:    a.peerHC,
		Logger:        a.opts.Logger,
	}, appNetwork{Cluster: a.cluster, tag: TagAppPrefix + sup.Name()})
}

// appNetwork is the cluster as an application's engine sees it: only the
// members that run the application plan, vote and serve its artifacts.
type appNetwork struct {
	*cluster.Cluster
	tag string
}

func (n appNetwork) Members() []cluster.Member {
	var out []cluster.Member
	for _, m := range n.Cluster.Members() {
		if _, ok := m.Tags[n.tag]; ok {
			out = append(out, m)
		}
	}
	return out
}

// appMembers is a member change as an application's engine sees it: a
// member without the application is gone from its view.
func appMembers(ms []cluster.Member, tag string) []cluster.Member {
	out := make([]cluster.Member, len(ms))
	for i, m := range ms {
		out[i] = m
		if _, ok := m.Tags[tag]; !ok {
			out[i].Status = cluster.StatusReaped
		}
	}
	return out
}

// checkAppArtifact is an application artifact's preflight: a bundle's
// manifest must name the app, the version and this platform, and its
// protocol range must overlap that of every instance of the app in the
// cluster; a single executable must be an ELF binary for this platform (or
// a script).
func checkAppArtifact(path, name, version string, instances func(name string) []api.App) error {
	bundle, err := artifact.IsBundle(path)
	if err != nil {
		return err
	}
	if !bundle {
		return checkExecutable(path)
	}
	m, _, err := artifact.ValidateBundle(path)
	if err != nil {
		return err
	}
	if err := artifact.CheckBundle(m, name, version, runtime.GOOS, runtime.GOARCH); err != nil {
		return err
	}
	return checkAppProtocol(name, version, m.Protocol(), instances(name))
}

// checkAppProtocol refuses a release whose protocol range shares no
// protocol with an instance of the app in the cluster: the rollout would
// mix the two, and they could not talk to each other. This is the
// application's side of version-compatible peering. Instances whose range
// is unknown (installed from a single executable) are not checked, nor is
// a release that declares none.
func checkAppProtocol(name, version, protocol string, instances []api.App) error {
	if protocol == "" {
		return nil
	}
	r, err := cluster.ParseProtocolRange(protocol)
	if err != nil {
		return fmt.Errorf("%s %s: %w", name, version, err)
	}
	var apart []string
	for _, in := range instances {
		if in.Protocol == "" || in.NodeStatus == "left" {
			continue
		}
		ir, err := cluster.ParseProtocolRange(in.Protocol)
		if err != nil {
			continue // an agent's tag this build cannot read: not evidence either way
		}
		if ir.Max < r.Min || r.Max < ir.Min {
			apart = append(apart, fmt.Sprintf("%s (%s %s speaks %s)", in.Node, name, in.Version, ir))
		}
	}
	if len(apart) == 0 {
		return nil
	}
	return fmt.Errorf("%s %s speaks %s protocol %s, which shares none with %s: old and new instances could not talk to each other during the rollout; "+
		"first roll out a release that speaks both, or correct protocol_min/protocol_max in its %s",
		name, version, name, r, strings.Join(apart, ", "), artifact.BundleManifestName)
}

// appInstances are the cluster's instances of application name, as the
// members' tags say.
func (a *Agent) appInstances(name string) []api.App {
	var out []api.App
	for _, row := range a.appRows() {
		if row.Name == name {
			out = append(out, row)
		}
	}
	return out
}

// stageAppArtifact stages a verified artifact into the app's version
// store: a bundle is extracted there whole, its command's executable
// becoming the version's binary.
func stageAppArtifact(store *versions.Store, staged, version string) error {
	bundle, err := artifact.IsBundle(staged)
	if err != nil {
		return err
	}
	if !bundle {
		return store.Stage(staged, version)
	}
	if cur, ok, err := store.Current(); err == nil && ok && cur.Version == version && store.Verify(cur) == nil {
		return nil // current already (a retry after a crash): its tree may be running
	}
	tree, err := store.TreeDir(version)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(tree); err != nil { // left by a crash mid-stage
		return err
	}
	m, err := artifact.ExtractBundle(staged, tree)
	if err != nil {
		return err
	}
	return store.StageTree(tree, m.Command[0], version)
}

// checkExecutable is an application artifact's preflight: an ELF binary
// must be for this platform (a script is taken as it is).
func checkExecutable(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) {
			return nil // not ELF: a script or another interpreter's file
		}
		return err
	}
	defer f.Close()
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "386": elf.EM_386, "arm": elf.EM_ARM, "riscv64": elf.EM_RISCV}
	if m, ok := want[runtime.GOARCH]; ok && f.Machine != m {
		return fmt.Errorf("the artifact is a %s binary; this node is linux/%s", f.Machine, runtime.GOARCH)
	}
	return nil
}

// closeAppEngines stops the application engines (before their apps).
func (a *Agent) closeAppEngines() {
	a.appMu.Lock()
	engines := a.appEngines
	a.appEngines = nil
	a.appMu.Unlock()
	for _, e := range engines {
		e.Close()
	}
}
