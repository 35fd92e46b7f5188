package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"aead.dev/minisign"
	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/peerd/peerd/upgrade/lease"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/peerd/peerd/upgrade/versions"
)

// Serf event and query names. Payloads stay far below Serf's limits: plans
// and artifacts travel over the peer HTTP API, addressed by their sha256.
const (
	eventPlan    = "peerd-plan"
	eventControl = "peerd-ctl"
	queryLease   = "peerd-lease"
)

// TargetPeerd is the target name of peerd's own binary.
const TargetPeerd = "peerd"

// Network is what the engine needs of the cluster; *cluster.Cluster has it.
type Network interface {
	LocalMember() cluster.Member
	Members() []cluster.Member
	ProtocolRange() cluster.ProtocolRange
	SetTag(key, value string) error
	Broadcast(name string, payload []byte) error
	Query(ctx context.Context, name string, payload []byte, nodes []string, timeout time.Duration, enough func(map[string][]byte) bool) (map[string][]byte, error)
}

// Config configures a node's rollout engine.
type Config struct {
	// DataDir is the agent's data dir; the engine keeps its files in DataDir/rollout.
	DataDir string
	// Executable is the running binary (a patch applies to it).
	Executable string
	// Versions is where a self-upgrade installs the new binary and what a
	// rollback restores; the launcher starts its current version.
	Versions *versions.Store
	// Target is what this engine rolls out: TargetPeerd (the default) or a
	// managed application's name. Each target has its own engine, files,
	// tag, events and lease query, so rollouts of different targets never
	// mix; an application's engine runs on the nodes that run it.
	Target string
	// Dir holds the engine's files; default DataDir/rollout.
	Dir string
	// App drives an application target; nil for peerd itself.
	App *AppTarget
	// Build is the running binary's identity.
	Build buildinfo.Info
	// TrustedKeys verify artifact signatures. With none, unsigned artifacts
	// are refused unless AllowUnsigned.
	TrustedKeys   []minisign.PublicKey
	AllowUnsigned bool
	// Healthy is the node's health check during the health gate: joined,
	// its own checks, and the operator's check command or URL.
	Healthy func(ctx context.Context) error
	// RequestRestart asks the agent to restart into Versions' choice (by re-exec
	// or by exiting for its supervisor). It must not block.
	RequestRestart func()
	// PeerHTTPAddr is the peer HTTP address a member advertises.
	PeerHTTPAddr func(cluster.Member) string
	// PollInterval paces the state machine when nothing wakes it.
	PollInterval time.Duration
	// QueryTimeout bounds one round of lease queries.
	QueryTimeout time.Duration
	Clock        lease.Clock
	Logger       *slog.Logger
	HTTPClient   *http.Client
	// HookDir, when set, lets tests pause the node before a phase: while
	// the file HookDir/pause-<phase> exists, the node writes
	// HookDir/at-<phase> and waits there (so a test can kill it at that step).
	HookDir string
}

// AppTarget is what the engine needs of a managed application: unlike
// peerd, it restarts without the agent restarting, and its build is not
// asked with `version --json`.
type AppTarget struct {
	// Running is the version and binary path of the instance running now.
	Running func() (version, path string)
	// Restart starts the version store's choice in place of the running
	// instance and returns once it was started.
	Restart func() error
	// Check is the preflight of a staged artifact of the given version.
	Check func(ctx context.Context, path, version string) error
	// BaseVersion is the version of the binary the app's config names,
	// which a rollback past the version store returns to.
	BaseVersion string
	// VersionOf is the version of the application a member runs, as status
	// shows it.
	VersionOf func(cluster.Member) string
	// Install puts a verified artifact into the version store (a bundle is
	// extracted); nil: Versions.Install of the single executable.
	Install func(staged, version, running string) error
}

// DefaultConfig fills in the timings and collaborators that have defaults.
func (c Config) withDefaults() Config {
	if c.Target == "" {
		c.Target = TargetPeerd
	}
	if c.Dir == "" {
		c.Dir = filepath.Join(c.DataDir, "rollout")
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 100 * time.Millisecond
	}
	if c.QueryTimeout <= 0 {
		c.QueryTimeout = 3 * time.Second
	}
	if c.Clock == nil {
		c.Clock = lease.RealClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 5 * time.Minute}
	}
	if c.Healthy == nil {
		c.Healthy = func(context.Context) error { return nil }
	}
	if c.RequestRestart == nil {
		c.RequestRestart = func() {}
	}
	return c
}

// Engine runs this node's part of every rollout: it adopts plans, waits for
// its wave, prepares, takes the lease, applies, restarts, and passes the
// health gate. One goroutine owns the state machine; lease queries from
// other nodes are answered concurrently by the granter.
type Engine struct {
	cfg     Config
	net     Network
	log     *slog.Logger
	dir     string
	store   *artifact.Store
	granter *lease.Granter

	kick       chan struct{}
	triggerMu  sync.Mutex // serialises Trigger
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	restarting atomic.Bool
	served     atomic.Int64  // artifact bytes served to peers
	metrics    engineMetrics // counts for Stats (metrics.go)

	mu           sync.Mutex // guards the fields below
	state        NodeState
	plans        map[string]plan.Plan
	announced    []string // plan IDs heard of, not yet adopted
	latest       string   // newest plan announced or triggered here
	triggered    string   // plan triggered here and not adopted yet
	pendingCtl   []controlMsg
	healthySince time.Time
	lastHealth   error
	prepSince    time.Time // when this process started preparing
}

// New opens the engine's files. It starts nothing.
func New(cfg Config, net Network) (*Engine, error) {
	cfg = cfg.withDefaults()
	if cfg.DataDir == "" || (cfg.Executable == "" && cfg.App == nil) || cfg.Versions == nil {
		return nil, errors.New("rollout engine: data dir, executable and version store are required")
	}
	dir := cfg.Dir
	for _, d := range []string{dir, filepath.Join(dir, "plans"), filepath.Join(dir, "staged")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create rollout dir: %w", err)
		}
	}
	store, err := artifact.NewStore(filepath.Join(dir, "artifacts"))
	if err != nil {
		return nil, err
	}
	granter, err := lease.NewGranter(filepath.Join(dir, "grants.json"), cfg.Clock)
	if err != nil {
		return nil, err
	}
	st, err := LoadState(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, err
	}
	e := &Engine{
		cfg: cfg, net: net, dir: dir, store: store, granter: granter,
		log:   cfg.Logger.With("component", "rollout", "target", cfg.Target),
		kick:  make(chan struct{}, 1),
		state: st,
		plans: map[string]plan.Plan{},
	}
	return e, nil
}

// Start resumes whatever the state file says this node was doing, then
// runs the state machine until Close.
func (e *Engine) Start(ctx context.Context) error {
	if err := e.recover(); err != nil {
		return err
	}
	e.publish()
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e.cancel = cancel
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.run(ctx)
	}()
	return nil
}

// Close stops the state machine and waits for it.
func (e *Engine) Close() {
	if e.cancel != nil {
		e.cancel()
	}
	e.wg.Wait()
}

// recover decides, once per process start, what an interrupted step means
// now that this binary is running.
func (e *Engine) recover() error {
	st := e.State()
	if !st.Active() {
		return nil
	}
	running := e.running()
	log := e.log.With("plan", short(st.PlanID), "phase", st.Phase)
	switch st.Phase {
	case PhaseApply, PhaseRestart, PhaseHealth:
		if running == st.ToVersion {
			st.Starts++
			st.Phase = PhaseHealth
			log.Info("started at the target version; entering the health gate", "version", running, "starts", st.Starts)
			return e.save(st)
		}
		if st.Phase == PhaseApply {
			log.Info("interrupted while applying; applying again", "version", running)
			return nil
		}
		// The old binary is running although the swap was done: whatever
		// brought it back, this node is not upgraded. Make sure the old
		// binary stays, and report.
		if err := e.cfg.Versions.Rollback(st.ToVersion); err != nil {
			return fmt.Errorf("keep %s after a failed upgrade: %w", running, err)
		}
		st.Phase = PhaseFailed
		st.Reason = fmt.Sprintf("the new binary (%s) did not stay up; the node is back at %s", st.ToVersion, running)
		if versions.Compare(running, st.ToVersion) > 0 {
			st.Reason = fmt.Sprintf("this node's launcher (%s, e.g. the package's binary) is newer than %s and wins over the version store; to go below it, downgrade the package", running, st.ToVersion)
		}
		st.RolledBackFrom = appendUnique(st.RolledBackFrom, st.ToVersion)
		log.Warn("rolled back", "reason", st.Reason)
		return e.save(st)
	}
	return nil
}

func (e *Engine) run(ctx context.Context) {
	t := time.NewTicker(e.cfg.PollInterval)
	defer t.Stop()
	for {
		if e.restarting.Load() {
			<-ctx.Done()
			return
		}
		e.step(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-e.kick:
		}
	}
}

func (e *Engine) wake() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// step advances the state machine by at most one phase.
func (e *Engine) step(ctx context.Context) {
	e.applyControl()
	st := e.State()
	if !st.Active() {
		e.adopt(ctx, st)
		return
	}
	p, err := e.planByID(ctx, st.PlanID)
	if err != nil {
		e.log.Warn("plan not available yet", "plan", short(st.PlanID), "err", err)
		return
	}
	waves, err := p.Waves()
	if err != nil {
		e.fail(st, fmt.Sprintf("compute waves: %v", err), false)
		return
	}
	log := e.log.With("plan", p.ShortID(), "wave", st.Wave)
	switch st.Phase {
	case PhaseWait:
		// Prepare one wave ahead: fetching and verifying while the wave
		// before runs takes prepare off the critical path. Waiting until
		// that wave holds the artifact lets this one fetch it from those
		// peers rather than the origin. Going offline still needs every
		// earlier wave done (and the lease).
		if st.Paused || !e.earlierWavesDone(p, waves, st.Wave-1) || !e.wavePrepared(p, waves, st.Wave-1) {
			return
		}
		e.hook(PhasePrepare)
		st.Phase = PhasePrepare
		e.transition(st, log)
	case PhasePrepare:
		if err := e.prepare(ctx, p); err != nil {
			now := e.cfg.Clock.Now()
			e.mu.Lock()
			if e.prepSince.IsZero() {
				e.prepSince = now
			}
			since := e.prepSince
			e.mu.Unlock()
			if errors.Is(err, errNoSource) && now.Sub(since) < p.Options.Deadline {
				log.Warn("prepare: will retry", "err", err)
				return
			}
			e.fail(st, fmt.Sprintf("prepare: %v", err), false)
			return
		}
		st.Phase = PhaseReady
		e.transition(st, log)
	case PhaseReady:
		if st.Paused || !e.earlierWavesDone(p, waves, st.Wave) {
			return
		}
		granted, why := e.requestLease(ctx, p, st.Wave)
		if !granted {
			log.Debug("lease not granted yet", "why", why)
			return
		}
		e.hook(PhaseApply)
		st.Phase = PhaseApply
		st.LeaseAt = e.cfg.Clock.Now()
		e.transition(st, log)
		e.apply(p, st, log)
	case PhaseApply:
		e.apply(p, st, log)
	case PhaseHealth:
		e.healthGate(ctx, p, st, log)
	}
}

// transition persists the new phase, then tells the cluster.
func (e *Engine) transition(st NodeState, log *slog.Logger) {
	if err := e.save(st); err != nil {
		log.Error("persist rollout state", "err", err)
		return
	}
	log.Info("rollout phase", "phase", st.Phase, "from", st.FromVersion, "to", st.ToVersion)
	e.publish()
}

// fail marks this node failed for its plan; when it had gone offline, it
// restores the kept binary and restarts into it.
func (e *Engine) fail(st NodeState, reason string, rollback bool) {
	st.Phase = PhaseFailed
	st.Reason = reason
	log := e.log.With("plan", short(st.PlanID), "wave", st.Wave)
	if rollback {
		st.RolledBackFrom = appendUnique(st.RolledBackFrom, st.ToVersion)
		if err := e.cfg.Versions.Rollback(st.ToVersion); err != nil {
			st.Reason += fmt.Sprintf("; restoring the previous version failed too: %v", err)
		}
	}
	e.transition(st, log)
	log.Error("rollout failed on this node; the rollout halts", "reason", reason, "rolled_back", rollback)
	if rollback {
		if e.cfg.App != nil {
			if err := e.cfg.App.Restart(); err != nil {
				log.Error("restart the application at the previous version", "err", err)
			}
			return
		}
		e.restarting.Store(true)
		e.cfg.RequestRestart()
	}
}

// keptPath is the binary a rollback of this node's current version brings
// back: the version store's previous one, or the launcher.
func (e *Engine) keptPath() string {
	b, err := e.cfg.Versions.Previous()
	if err != nil {
		return ""
	}
	return b.Path
}

func (e *Engine) stagedPath(p plan.Plan) string {
	return filepath.Join(e.dir, "staged", e.cfg.Target+"-"+p.Artifact.SHA256[:16])
}

// apply makes the prepared binary the version store's current one (the
// running one stays, for rollback) and restarts.
func (e *Engine) apply(p plan.Plan, st NodeState, log *slog.Logger) {
	install := e.cfg.Versions.Install
	if e.cfg.App != nil && e.cfg.App.Install != nil {
		install = e.cfg.App.Install
	}
	if err := install(e.stagedPath(p), p.Version, e.runningPath()); err != nil {
		e.fail(st, fmt.Sprintf("apply: %v", err), false)
		return
	}
	e.hook(PhaseRestart)
	if e.cfg.App != nil {
		// An application restarts under the agent: straight to its gate.
		if err := e.cfg.App.Restart(); err != nil {
			e.fail(st, fmt.Sprintf("restart: %v", err), true)
			return
		}
		e.mu.Lock()
		e.healthySince, e.lastHealth = time.Time{}, nil
		e.mu.Unlock()
		st.Phase = PhaseHealth
		st.Starts = 1
		e.transition(st, log)
		return
	}
	st.Phase = PhaseRestart
	e.transition(st, log)
	e.restarting.Store(true)
	e.cfg.RequestRestart()
}

// healthGate runs in the new binary: healthy without a break for
// MinHealthy means done; no health by the wave's deadline means rollback.
func (e *Engine) healthGate(ctx context.Context, p plan.Plan, st NodeState, log *slog.Logger) {
	now := e.cfg.Clock.Now()
	const maxStarts = 3
	if st.Starts > maxStarts {
		e.fail(st, fmt.Sprintf("health gate: the new binary started %d times without passing", st.Starts), true)
		return
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := e.cfg.Healthy(hctx)
	cancel()
	e.mu.Lock()
	if err != nil {
		e.healthySince = time.Time{}
		e.lastHealth = err
	} else if e.healthySince.IsZero() {
		e.healthySince = now
	}
	since, last := e.healthySince, e.lastHealth
	e.mu.Unlock()

	if !since.IsZero() && now.Sub(since) >= p.Options.MinHealthy {
		st.Phase = PhaseDone
		st.Reason = ""
		e.transition(st, log)
		return
	}
	if now.Sub(st.LeaseAt) > p.Options.Deadline {
		reason := fmt.Sprintf("health gate: not healthy for %s within the %s deadline", p.Options.MinHealthy, p.Options.Deadline)
		if last != nil {
			reason += ": " + last.Error()
		}
		e.fail(st, reason, true)
	}
}

// earlierWavesDone reports whether this node sees every wave before w done.
// A member that left the cluster does not hold the rollout up.
func (e *Engine) earlierWavesDone(p plan.Plan, waves []plan.Wave, w int) bool {
	phases, present := e.view(p)
	for i := 0; i < w && i < len(waves); i++ {
		for _, n := range waves[i].Nodes {
			if present[n] && phases[n] != PhaseDone {
				return false
			}
		}
	}
	return true
}

// wavePrepared reports whether every present node of wave w (if any) holds
// the artifact, i.e. is past its prepare phase.
func (e *Engine) wavePrepared(p plan.Plan, waves []plan.Wave, w int) bool {
	if w < 0 || w >= len(waves) {
		return true
	}
	phases, present := e.view(p)
	for _, n := range waves[w].Nodes {
		switch phases[n] {
		case PhaseReady, PhaseApply, PhaseRestart, PhaseHealth, PhaseDone:
		default:
			if present[n] {
				return false
			}
		}
	}
	return true
}

// waveSettled reports whether no node of wave w can be offline for plan p
// any more: each present one is finished with p (done, failed and rolled
// back, or aborted) or has moved on to another plan.
func (e *Engine) waveSettled(p plan.Plan, waves []plan.Wave, w int) bool {
	if w < 0 || w >= len(waves) {
		return false
	}
	phases, present := e.view(p)
	for _, n := range waves[w].Nodes {
		if present[n] && phases[n] != "" && !phases[n].Terminal() {
			return false
		}
	}
	return true
}

// view is this node's picture of plan p: each member's phase in p as its
// tag tells it (absent when its tag is about another plan or none), and
// which members are still in the cluster (not left).
func (e *Engine) view(p plan.Plan) (phases map[string]Phase, present map[string]bool) {
	phases, present = map[string]Phase{}, map[string]bool{}
	for _, m := range e.net.Members() {
		present[m.Name] = m.Status != "left"
		if pr, ok := ParseProgress(m.Tags[e.tagKey()]); ok && pr.PlanShort == p.ShortID() {
			phases[m.Name] = pr.Phase
		}
	}
	return phases, present
}

// phases maps member name to its phase in plan p, as tags tell it.
func (e *Engine) phases(p plan.Plan) map[string]Phase {
	phases, _ := e.view(p)
	return phases
}

// State returns a copy of this node's rollout state.
func (e *Engine) State() NodeState {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.state
	s.RolledBackFrom = slices.Clone(s.RolledBackFrom)
	return s
}

func (e *Engine) save(st NodeState) error {
	st.Updated = e.cfg.Clock.Now().UTC()
	if err := SaveState(filepath.Join(e.dir, "state.json"), st); err != nil {
		return err
	}
	e.mu.Lock()
	prev := e.state
	e.state = st
	e.mu.Unlock()
	e.metrics.stateChanged(prev, st)
	return nil
}

// publish puts this node's progress into its "r" tag.
func (e *Engine) publish() {
	st := e.State()
	val := ""
	if st.PlanID != "" {
		val = Progress{PlanShort: short(st.PlanID), Wave: st.Wave, Phase: st.Phase}.String()
	}
	if err := e.net.SetTag(e.tagKey(), val); err != nil {
		e.log.Warn("publish rollout progress", "err", err)
	}
}

// hook pauses at a phase while a test asks it to.
func (e *Engine) hook(ph Phase) {
	if e.cfg.HookDir == "" {
		return
	}
	pause := filepath.Join(e.cfg.HookDir, "pause-"+string(ph))
	if _, err := os.Stat(pause); err != nil {
		return
	}
	_ = os.WriteFile(filepath.Join(e.cfg.HookDir, "at-"+string(ph)), nil, 0o600)
	for {
		if _, err := os.Stat(pause); err != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

func appendUnique(list []string, v string) []string {
	if slices.Contains(list, v) {
		return list
	}
	return append(list, v)
}

func decodeJSON(b []byte, v any) error { return json.Unmarshal(b, v) }

// running is the version of the target running now.
func (e *Engine) running() string {
	if e.cfg.App != nil {
		v, _ := e.cfg.App.Running()
		return v
	}
	return e.cfg.Build.Version
}

// runningPath is the target's binary running now (a patch applies to it).
func (e *Engine) runningPath() string {
	if e.cfg.App != nil {
		_, p := e.cfg.App.Running()
		return p
	}
	return e.cfg.Executable
}

// Target is what this engine rolls out.
func (e *Engine) Target() string { return e.cfg.Target }

// TagKey is the member tag carrying progress of target's rollouts.
func TagKey(target string) string {
	if target == "" || target == TargetPeerd {
		return TagRollout
	}
	return TagRollout + "." + target
}

func (e *Engine) tagKey() string { return TagKey(e.cfg.Target) }

// name is the Serf event or query name of this engine's target.
func (e *Engine) name(base string) string {
	if e.cfg.Target == TargetPeerd {
		return base
	}
	return base + ":" + e.cfg.Target
}

// Handles reports whether a Serf event or query of this name is this
// engine's.
func (e *Engine) Handles(name string) bool {
	for _, b := range []string{eventPlan, eventControl, queryLease} {
		if name == e.name(b) {
			return true
		}
	}
	return false
}
