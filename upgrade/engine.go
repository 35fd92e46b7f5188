package upgrade

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"aead.dev/minisign"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/internal/clock"
	"github.com/peerd/peerd/internal/durable"
	"github.com/peerd/peerd/internal/identity"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/peerd/peerd/upgrade/lease"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/peerd/peerd/upgrade/swarm"
)

// Serf event and query names. Payloads stay far below Serf's limits: plans
// and artifacts travel over the peer HTTP API, addressed by their sha256.
const (
	eventPlan    = "peerd-plan"
	eventControl = "peerd-ctl"
	queryLease   = "peerd-lease"
	queryLock    = "peerd-lock"
)

// Config configures a node's rollout engine for one target.
type Config struct {
	// DataDir is the agent's data dir.
	DataDir string
	// Dir holds the engine's files; default DataDir/rollout.
	Dir string
	// Target is what this engine rolls out: Self (peerd) or an App. Each
	// target has its own engine, files, tag, events and lease query, so
	// rollouts of different targets never mix.
	Target Target
	// TrustedKeys verify artifact signatures. With none, unsigned artifacts
	// are refused unless AllowUnsigned.
	TrustedKeys   []minisign.PublicKey
	AllowUnsigned bool
	// Peers fetches from other nodes; default HTTPPeers over HTTPClient
	// and PeerHTTPAddr.
	Peers        Peers
	PeerHTTPAddr func(cluster.Member) string
	HTTPClient   *http.Client
	// PeerClient, when set, calls members by name over mutual TLS
	// (peertls.Client) for plans, artifacts and node states; HTTPClient
	// then only fetches the origin's artifact URLs.
	PeerClient *http.Client
	// Leases asks for a wave's lease; default a quorum of the plan's
	// snapshot over Network.Query.
	Leases LeaseRequester
	// QueryTimeout bounds one round of lease queries.
	QueryTimeout time.Duration
	// HealthInterval paces the health gate's observations.
	HealthInterval time.Duration
	// ReassertInterval is how often a node sets its rollout tag again while
	// the plan runs, in case a peer missed the last update; in a cluster
	// of more than ReassertInterval/250ms members, less often (see
	// reassertSpacing).
	ReassertInterval time.Duration
	// ResyncInterval is how often the engine's view of the members is
	// rebuilt from the full member list.
	ResyncInterval time.Duration
	Clock          clock.Clock
	Logger         *slog.Logger
	// FreeSpace, when set (by tests), replaces statfs in prepare's check
	// that the plan's copies fit (space.go).
	FreeSpace FreeSpace
	// HookDir, when set (by tests), pauses the node before a phase: while
	// the file HookDir/pause-<phase> exists, the node writes
	// HookDir/at-<phase> and waits there (so a test can kill it at that step).
	// While HookDir/origin-unchecked exists, a trigger on this node skips
	// the origin's own checks of version and artifact, as the agent of a
	// compromised member would, so that tests can show what the other
	// nodes refuse on their own.
	HookDir string
	// Observe, when set (by tests), is called with every state the machine
	// persisted, in order, so that a checker can record a node's history.
	Observe func(NodeState)
	// ObserveGrants, when set (by tests), is called with this node's lease
	// grants each time they were persisted.
	ObserveGrants func([]lease.Grant)
	// AllowOutage accepts plans made with --allow-outage (a wave may take
	// every member offline); without it such a plan fails here.
	AllowOutage bool
	// Identity is this node's identity key: it signs the node's votes,
	// plans, operator actions and finished state. Its public half must be
	// in the node's cluster tags (cluster.TagKey).
	Identity identity.Key
	// PieceSize is the piece size of the artifacts this node makes plans
	// for, when the release signature names none; 0: by the artifact's
	// size (piece.SizeFor). Tests set small ones.
	PieceSize int64
	// Swarm paces fetches by pieces (zero fields: swarm's defaults).
	Swarm swarm.Config
}

// withDefaults fills in the timings and collaborators that have defaults.
func (c Config) withDefaults() Config {
	if c.Dir == "" {
		c.Dir = filepath.Join(c.DataDir, "rollout")
	}
	if c.QueryTimeout <= 0 {
		c.QueryTimeout = 3 * time.Second
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = 200 * time.Millisecond
	}
	if c.ReassertInterval <= 0 {
		c.ReassertInterval = 5 * time.Second
	}
	if c.ResyncInterval <= 0 {
		c.ResyncInterval = 10 * time.Second
	}
	if c.Clock == nil {
		c.Clock = clock.Real()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 5 * time.Minute}
	}
	if c.PeerHTTPAddr == nil {
		c.PeerHTTPAddr = func(cluster.Member) string { return "" }
	}
	return c
}

// Engine runs this node's part of every rollout of one target: it adopts
// plans, waits for its wave, prepares, takes the lease, applies, restarts,
// and passes the health gate (machine.go), and it votes on other nodes'
// lease requests (leasing.go) and serves them plans and artifacts.
type Engine struct {
	cfg     Config
	net     Network
	target  Target
	peers   Peers
	leases  LeaseRequester
	clock   clock.Clock
	log     *slog.Logger
	dir     string
	store   *artifact.Store
	granter *lease.Granter
	id      identity.Key
	lock    *planLock
	plans   *planStore
	drafts  *planStore // plans a dry run made, for --plan ID to run as they were shown
	view    *view
	m       *machine

	cancel    context.CancelFunc
	done      chan struct{}
	quit      chan struct{} // closed by Close: ends the votes' waits
	quitOnce  sync.Once
	triggerMu sync.Mutex    // one trigger at a time on this node
	served    atomic.Int64  // artifact bytes served to peers
	partials  partials      // blobs being assembled from pieces (pieces.go)
	seenLTime atomic.Uint64 // the highest Serf Lamport time of an event seen
	metrics   engineMetrics // counts for Stats (metrics.go)
	safe      safeMode      // held after a damaged file (safemode.go)

	mu        sync.Mutex // guards the copies below, which the machine keeps current
	state     NodeState
	triggered string // plan triggered here and not adopted yet
	latest    string // newest plan announced or triggered here
}

// New opens the engine's files. It starts nothing.
func New(cfg Config, net Network) (*Engine, error) {
	cfg = cfg.withDefaults()
	if cfg.DataDir == "" || cfg.Target == nil || cfg.Target.Versions() == nil || cfg.Identity.Public == nil {
		return nil, errors.New("rollout engine: data dir, target and its version store, and identity key are required")
	}
	dir := cfg.Dir
	for _, d := range []string{dir, filepath.Join(dir, "plans"), filepath.Join(dir, "drafts"), filepath.Join(dir, "staged")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create rollout dir: %w", err)
		}
	}
	store, err := artifact.NewStore(filepath.Join(dir, "artifacts"))
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.With("component", "rollout", "target", cfg.Target.Name())
	// A file unreadable in both generations puts the engine in safe mode
	// (safemode.go) rather than keeping the agent from starting.
	var damaged []func(*Engine)
	grantsPath := filepath.Join(dir, "grants.json")
	granter, err := lease.NewGranter(grantsPath, cfg.Clock)
	if errors.Is(err, durable.ErrCorrupt) {
		damaged = append(damaged, func(e *Engine) { e.enterSafeMode(grantsPath, err) })
	} else if err != nil {
		return nil, err
	}
	if cfg.ObserveGrants != nil {
		granter.OnSave(cfg.ObserveGrants)
	}

	statePath := filepath.Join(dir, "state.json")
	st, read, serr := loadState(statePath)
	if errors.Is(serr, durable.ErrCorrupt) {
		damaged = append(damaged, func(e *Engine) { e.enterSafeMode(statePath, serr) })
	} else if serr != nil {
		return nil, serr
	} else if read.Gen == durable.Previous {
		log.Warn("rollout state read from its previous generation: this node resumes one step back", "file", statePath, "refused", read.Refused)
	}
	lockPath := filepath.Join(dir, "lock.json")
	lock, lerr := openPlanLock(lockPath)
	if errors.Is(lerr, durable.ErrCorrupt) {
		lock = &planLock{path: lockPath}
		damaged = append(damaged, func(e *Engine) { e.enterSafeMode(lockPath, lerr) })
	} else if lerr != nil {
		return nil, lerr
	}
	e := &Engine{
		cfg: cfg, net: net, target: cfg.Target, clock: cfg.Clock, dir: dir, store: store, granter: granter, lock: lock, id: cfg.Identity,
		log:    log,
		plans:  newPlanStore(filepath.Join(dir, "plans")),
		drafts: newPlanStore(filepath.Join(dir, "drafts")),
		view:   newView(TagKey(cfg.Target.Name())),
		state:  st,
		peers:  cfg.Peers,
		quit:   make(chan struct{}),
	}
	for _, enter := range damaged {
		enter(e)
	}
	if e.peers == nil {
		e.peers = HTTPPeers{Client: cfg.HTTPClient, Addr: cfg.PeerHTTPAddr, Target: cfg.Target.Name()}
		if cfg.PeerClient != nil {
			e.peers = HTTPPeers{Client: cfg.PeerClient, ByName: true, Target: cfg.Target.Name()}
		}
	}
	e.leases = cfg.Leases
	if e.leases == nil {
		e.leases = quorumLeases{e}
	}
	e.metrics.lastEpoch = granter.Epoch() // grants from before a restart are counted already
	granter.OnFinished(e.finishedIn)
	e.m = newMachine(e, st)
	return e, nil
}

// Start resumes whatever the state file says this node was doing, then
// runs the state machine until Close.
func (e *Engine) Start(ctx context.Context) error {
	if err := e.m.recover(); err != nil {
		return err
	}
	e.collect(e.State())
	e.view.resync(e.net.Members())
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e.cancel = cancel
	e.done = make(chan struct{})
	go func() {
		defer close(e.done)
		e.m.run(ctx)
	}()
	return nil
}

// Close stops the state machine and everything it started, and waits for
// them. It is idempotent.
func (e *Engine) Close() {
	e.quitOnce.Do(func() { close(e.quit) })
	if e.cancel == nil {
		return
	}
	e.cancel()
	<-e.done
	e.m.wg.Wait()
}

// MembersChanged tells the engine of members that joined, changed their
// tags, failed, left or were reaped (the cluster's member events).
func (e *Engine) MembersChanged(ms []cluster.Member) { e.view.update(ms) }

// HandleEvent receives the cluster's user events.
func (e *Engine) HandleEvent(name string, ltime uint64, payload []byte) {
	for seen := e.seenLTime.Load(); ltime > seen && !e.seenLTime.CompareAndSwap(seen, ltime); seen = e.seenLTime.Load() {
	}
	switch name {
	case e.name(eventPlan):
		id := strings.TrimSpace(string(payload))
		if isHexID(id) {
			e.announce(id)
		}
	case e.name(eventControl):
		// An operator action counts only as its sender's own: signed by
		// the key this node pinned for that member.
		var c controlMsg
		err := identity.Open(domainControl, payload, &c, func(any) (identity.PublicKey, error) { return e.pinnedKey(c.Sender) })
		if err != nil {
			e.log.Warn("operator action ignored: it does not verify", "err", err)
			return
		}
		e.m.mail.post(c)
	}
}

// HandleQuery answers the cluster's queries.
func (e *Engine) HandleQuery(name string, payload []byte) ([]byte, error) {
	switch name {
	case e.name(queryLease):
		return e.answerLease(payload), nil
	case e.name(queryLock):
		return e.answerLock(payload), nil
	}
	return nil, fmt.Errorf("unknown query %q", name)
}

// announce queues a plan for adoption and makes it the one status shows.
func (e *Engine) announce(id string) {
	e.mu.Lock()
	e.latest = id
	e.mu.Unlock()
	e.m.mail.post(announceMsg{id: id})
}

// State returns a copy of this node's rollout state.
func (e *Engine) State() NodeState {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.state
	s.RolledBackFrom = slices.Clone(s.RolledBackFrom)
	return s
}

// setState publishes the machine's new state to readers.
func (e *Engine) setState(st NodeState) {
	st.RolledBackFrom = slices.Clone(st.RolledBackFrom)
	e.mu.Lock()
	e.state = st
	e.mu.Unlock()
}

func (e *Engine) setTriggered(id string) {
	e.mu.Lock()
	e.triggered = id
	if id != "" {
		e.latest = id
	}
	e.mu.Unlock()
}

// busyWith is the plan this node is in, or triggered and has not taken up
// yet, or "" (the plan lock says whether one runs elsewhere).
func (e *Engine) busyWith() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return busyWith(e.state, e.triggered)
}

// Target is the name of what this engine rolls out.
func (e *Engine) Target() string { return e.target.Name() }

func (e *Engine) statePath() string { return filepath.Join(e.dir, "state.json") }

func (e *Engine) stagedPath(p *plan.Compiled) string {
	return filepath.Join(e.dir, "staged", e.target.Name()+"-"+p.Artifact.SHA256[:16])
}

// TagKey is the member tag carrying progress of target's rollouts.
func TagKey(target string) string {
	if target == "" || target == TargetPeerd {
		return TagRollout
	}
	return TagRollout + "." + target
}

func (e *Engine) tagKey() string { return TagKey(e.target.Name()) }

// name is the Serf event or query name of this engine's target.
func (e *Engine) name(base string) string {
	if e.target.Name() == TargetPeerd {
		return base
	}
	return base + ":" + e.target.Name()
}

// Handles reports whether a Serf event or query of this name is this
// engine's.
func (e *Engine) Handles(name string) bool {
	for _, b := range []string{eventPlan, eventControl, queryLease, queryLock} {
		if name == e.name(b) {
			return true
		}
	}
	return false
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
