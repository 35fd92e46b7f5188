package upgrade

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/internal/jitter"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/peerd/peerd/upgrade/versions"
)

// This file is the per-node state machine: recovery at start, plan
// adoption, the steps wait → prepare → ready → apply → restart → health →
// done, failure and rollback, operator control and the commit of a
// trigger. One goroutine (run) owns all of its state. Everything else
// reaches it as a message in its mailbox, and everything that blocks
// (fetches, preflight, lease queries, installs, health checks, restarts)
// runs as an op on a goroutine of its own under a context that pause,
// abort and Close cancel, so that the owner always answers within a loop
// turn, whatever a peer does.

// machine is one node's part of every rollout of one target.
type machine struct {
	e   *Engine
	log *slog.Logger
	ctx context.Context // run's: cancelled by Close

	mail    mailbox
	results chan opResult
	pubDone chan pubResult
	wg      sync.WaitGroup // op and publish goroutines

	// Owned by run's goroutine.
	st         NodeState
	cur        *plan.Compiled // the plan of st, once fetched
	announced  []string       // plan IDs announced or triggered, not adopted yet
	candidates map[string]bool
	seen       map[string]bool // plan short IDs looked at for adoption
	triggered  string
	pendingCtl []controlMsg
	ctlRetryAt time.Time // operator actions wait for a failed persist
	op         *runningOp
	keeper     *runningOp // a renewal of the lease, beside op
	opGen      uint64
	retryAt    time.Time                   // no step before then (a backoff)
	leaseWait  *backoff.ExponentialBackOff // between refused lease requests
	prepSince  time.Time
	prepNoted  string // the plan whose prepare this process counted (prepattempts.go)
	health     healthGate
	pub        publication
	restarting bool
	resyncAt   time.Time
	// leaseUntil is how long this process knows a majority holds its
	// wave for it: from when it sent the last granted request, a TTL
	// (granters start the hold when the request arrives, on their own
	// clocks, so this is safe whatever their offsets).
	leaseUntil time.Time
	renewNext  time.Time // when the keeper renews the hold next
	renewAfter time.Time // no renewal before then (after a refusal)
	// installed: this process installed the plan's artifact (apply).
	installed bool
	// revertPending: the node failed after going offline and must
	// restart into its old version, once it holds the lease.
	revertPending bool
	releaseSince  time.Time // first attempt to give the lease back
}

// The machine's messages.
type (
	announceMsg struct{ id string }
	triggerMsg  struct {
		p     *plan.Compiled
		reply chan error
	}
)

// mailbox is an unbounded queue with a wakeup channel: a sender (Serf's
// event goroutine, an HTTP handler) must never wait for the machine.
type mailbox struct {
	mu    sync.Mutex
	q     []any
	ready chan struct{}
}

func (b *mailbox) post(m any) {
	b.mu.Lock()
	b.q = append(b.q, m)
	b.mu.Unlock()
	select {
	case b.ready <- struct{}{}:
	default:
	}
}

func (b *mailbox) take() []any {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.q
	b.q = nil
	return q
}

// opKind names the blocking work a step hands to an op.
type opKind int

const (
	opAdopt   opKind = iota // resolve announced and tagged plans
	opFetch                 // fetch this node's own plan
	opPrepare               // fetch, verify, preflight and stage the artifact
	opLease                 // ask the granters for the wave's lease
	opApply                 // activate the staged version in the version store
	opRestart               // restart an application at the new version
	opHealth                // one observation of the health gate
	opRevert                // restart an application at the old version
	opRenew                 // renew the lease (the keeper's op)
	opRelease               // give the lease back
)

var opNames = [...]string{"adopt", "fetch plan", "prepare", "lease", "apply", "restart", "health", "revert", "renew", "release"}

func (k opKind) String() string { return opNames[k] }

type runningOp struct {
	kind   opKind
	gen    uint64
	cancel context.CancelFunc
}

// opResult is what an op reports back. Ops never touch the machine's
// state: they get copies of what they need and return this.
type opResult struct {
	kind    opKind
	gen     uint64
	err     error
	started time.Time
	ended   time.Time
	plans   []*plan.Compiled // opAdopt: plans found
	looked  []string         // opAdopt: plan short IDs resolved
	failed  []string         // opAdopt: announced IDs not fetched
	plan    *plan.Compiled   // opFetch
	held    time.Duration    // opLease, opRenew: how long a majority holds the wave (0: not granted)
	why     string           // opLease: the granters' answers
}

// healthGate is the health gate's observations in this process.
type healthGate struct {
	since   time.Time // healthy without a break since
	last    error
	lastEnd time.Time // when the last observation ended
	next    time.Time // next observation due
}

// publication tracks this node's rollout tag: what the cluster was last
// told, and when to tell it again.
type publication struct {
	inflight  bool
	confirmed string
	ok        bool
	retryAt   time.Time
	assertAt  time.Time
	// lastCall is set once this node saw its plan finished everywhere and
	// re-asserted its tag one last time: the update that finished the plan
	// (often this node's own done) may be the one a peer missed, and that
	// peer then refuses the next plan's lock until push/pull heals it.
	lastCall bool
}

type pubResult struct {
	value string
	err   error
}

func newMachine(e *Engine, st NodeState) *machine {
	return &machine{
		e:          e,
		log:        e.log,
		mail:       mailbox{ready: make(chan struct{}, 1)},
		results:    make(chan opResult),
		pubDone:    make(chan pubResult),
		st:         st,
		candidates: map[string]bool{},
		seen:       map[string]bool{},
		leaseWait:  jitter.Backoff(leaseBackoffMin, leaseBackoffMax),
	}
}

// Timings of the loop that are not worth a config knob.
const (
	// persistRetry is how soon a step whose state could not be saved is
	// tried again.
	persistRetry = time.Second
	// prepareRetry paces prepare attempts that found no source.
	prepareRetry = 500 * time.Millisecond
	// leaseBackoffMin and Max bound the wait between refused lease
	// requests; a wave that just finished is seen by granters a gossip
	// round later than by the next wave.
	leaseBackoffMin = 50 * time.Millisecond
	leaseBackoffMax = time.Second
	// healthCheckTimeout bounds one health observation.
	healthCheckTimeout = 10 * time.Second
	// maxStarts is how often a new binary may start in its health gate.
	maxStarts = 3
)

// run is the owner goroutine: it steps the machine, reconciles the tag,
// and waits for the next message, op result, member change or timer.
func (m *machine) run(ctx context.Context) {
	m.ctx = ctx
	defer m.cancelOp()
	m.resyncAt = m.e.clock.Now().Add(m.e.cfg.ResyncInterval)
	timer := m.e.clock.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		m.handleMail()
		if !m.restarting {
			for m.step() {
			}
			m.keepLease()
		}
		m.reconcile()
		timer.Reset(m.nextWake())
		select {
		case <-ctx.Done():
			return
		case <-m.mail.ready:
		case r := <-m.results:
			m.finish(r)
		case r := <-m.pubDone:
			m.published(r)
		case <-m.e.view.kick:
			m.noteChanges()
		case <-timer.Chan():
		}
		timer.Stop()
		if now := m.e.clock.Now(); !now.Before(m.resyncAt) {
			m.e.view.resync(m.e.net.Members())
			m.resyncAt = now.Add(m.e.cfg.ResyncInterval)
		}
	}
}

// nextWake is how long the loop may sleep when nothing arrives.
func (m *machine) nextWake() time.Duration {
	now := m.e.clock.Now()
	next := m.resyncAt
	consider := func(t time.Time) {
		// A time already past holds nothing back: it wakes nobody.
		if t.After(now) && t.Before(next) {
			next = t
		}
	}
	if m.op == nil && !m.restarting {
		consider(m.retryAt)
		if m.st.Phase == PhaseHealth && m.st.Active() {
			consider(m.health.next)
		}
	}
	if m.keeper == nil && m.needsLease() {
		consider(m.renewAt())
		consider(m.renewAfter)
	}
	if !m.pub.inflight {
		consider(m.pub.retryAt)
		consider(m.pub.assertAt)
	}
	if len(m.pendingCtl) > 0 {
		consider(m.ctlRetryAt)
	}
	return max(next.Sub(now), time.Millisecond)
}

// handleMail takes the messages that arrived.
func (m *machine) handleMail() {
	for _, msg := range m.mail.take() {
		switch msg := msg.(type) {
		case announceMsg:
			if msg.id != m.st.PlanID && !slices.Contains(m.announced, msg.id) {
				m.announced = append(m.announced, msg.id)
			}
		case controlMsg:
			m.pendingCtl = append(m.pendingCtl, msg)
			if msg.reply != nil {
				m.ctlRetryAt = time.Time{} // the operator waits: try to record it now
			}
		case triggerMsg:
			msg.reply <- m.commitTrigger(msg.p)
		}
	}
	if len(m.pendingCtl) > 0 && !m.e.clock.Now().Before(m.ctlRetryAt) {
		m.applyControl()
	}
}

// noteChanges looks at the members that changed: any that names a plan
// this node has not looked at is a candidate for adoption (a node that
// joined late or missed the announcement learns of a rollout that way).
// Everything else a change can unblock, the next step sees in the view.
func (m *machine) noteChanges() {
	for _, name := range m.e.view.takeChanged() {
		mv, ok := m.e.view.member(name)
		if !ok || !mv.hasTag || mv.status != "alive" || m.seen[mv.prog.PlanShort] || strings.HasPrefix(m.st.PlanID, mv.prog.PlanShort) {
			continue
		}
		m.candidates[name] = true
	}
}

// step advances the machine by one decision. It reports whether it
// changed state and should be called again.
func (m *machine) step() bool {
	if m.op != nil || m.e.clock.Now().Before(m.retryAt) || m.e.inSafeMode() {
		return false
	}
	if m.revertPending {
		m.revert()
		return false
	}
	if m.st.Phase.Terminal() && m.st.Lease {
		m.release()
		return false
	}
	if !m.st.Active() {
		m.adopt()
		return false
	}
	if m.cur == nil || m.cur.ID != m.st.PlanID {
		if p, ok := m.e.plans.local(m.st.PlanID); ok {
			m.cur = p
			return true
		}
		id := m.st.PlanID
		m.startOp(opFetch, func(ctx context.Context) opResult {
			p, err := m.e.planByID(ctx, id)
			return opResult{plan: p, err: err}
		})
		return false
	}
	p, st, v := m.cur, m.st, m.e.view
	switch st.Phase {
	case PhaseWait:
		// Prepare one wave ahead: fetching and verifying while the wave
		// before runs takes prepare off the critical path. Waiting until
		// that wave holds the artifact lets this one fetch it from those
		// peers rather than the origin. Going offline still needs every
		// earlier wave done (and the lease).
		if st.Paused || !v.earlierWavesDone(p, st.Wave-1) || !v.wavePrepared(p, st.Wave-1) {
			return false
		}
		m.hook(PhasePrepare)
		st.Phase = PhasePrepare
		return m.transition(st) == nil
	case PhasePrepare:
		if !m.countPrepareAttempt() {
			return false
		}
		running, path := m.e.target.Running()
		active := m.e.net.ProtocolRange().Max
		m.startOp(opPrepare, func(ctx context.Context) opResult {
			return opResult{err: m.e.prepare(ctx, p, running, path, active)}
		})
	case PhaseReady:
		if st.Paused || !v.earlierWavesDone(p, st.Wave) {
			return false
		}
		if !st.Lease {
			// From the first request on, some granters may hold the wave
			// for this node: say so on disk, so that whatever happens
			// next, this node gives it back.
			st.Lease = true
			return m.transition(st) == nil
		}
		m.startOp(opLease, func(ctx context.Context) opResult {
			held, why := m.e.leases.Request(ctx, p, st.Wave, false)
			if ttl, _ := leaseTerms(p); held < ttl/2 {
				// Give back what part of the grant it got: two requesters
				// that each hold part of an exclusive wave would otherwise
				// keep it split, renewing their parts, until they run out.
				m.e.leases.Release(ctx, p, st.Wave)
			}
			return opResult{held: held, why: why}
		})
	case PhaseApply:
		// Every restart first makes sure this node still holds its wave
		// (after a crash, the hold may have lapsed): keepLease renews it.
		if !m.leaseFresh() {
			return false
		}
		if m.installed {
			m.restartTarget()
			return false
		}
		_, running := m.e.target.Running()
		staged := m.e.stagedPath(p)
		log := m.log
		m.startOp(opApply, func(context.Context) opResult {
			// Prepare staged the version: going offline is only the swap
			// of the store's links, then the restart.
			err := m.e.target.Activate(p.Version, running)
			if errors.Is(err, versions.ErrNotStaged) {
				// Gone since prepare (removed by hand): stage it again,
				// offline, rather than fail a node that holds the lease.
				log.Warn("the staged version is gone from the version store; staging it again while offline", "plan", p.Short, "version", p.Version)
				if err = m.e.target.Stage(staged, p.Version); err == nil {
					err = m.e.target.Activate(p.Version, running)
				}
			}
			if err != nil {
				return opResult{err: fmt.Errorf("apply: %w", err)}
			}
			return opResult{}
		})
	case PhaseRestart:
		// Still here after asking for a restart (only peerd's own target
		// restarts the agent): ask again.
		m.restartAgent()
	case PhaseHealth:
		m.observeHealth()
	}
	return false
}

// startOp runs fn as the step's op, under a context that cancelOp and
// Close cancel; its result comes back to run.
func (m *machine) startOp(kind opKind, fn func(context.Context) opResult) {
	m.spawn(&m.op, kind, fn)
}

// spawn runs fn on its own goroutine, noted in *slot (the step's op, or
// the keeper beside it), under a context that Close cancels; its result,
// stamped with kind, a new generation and when it ran, comes back to run,
// which matches the generation against *slot to drop a stale one.
func (m *machine) spawn(slot **runningOp, kind opKind, fn func(context.Context) opResult) {
	m.opGen++
	octx, cancel := context.WithCancel(m.ctx)
	*slot = &runningOp{kind: kind, gen: m.opGen, cancel: cancel}
	gen, started := m.opGen, m.e.clock.Now()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer cancel()
		r := fn(octx)
		r.kind, r.gen, r.started, r.ended = kind, gen, started, m.e.clock.Now()
		select {
		case m.results <- r:
		case <-octx.Done():
		}
	}()
}

// cancelOp stops the op in flight; its result, if it still comes, is
// ignored.
func (m *machine) cancelOp() {
	if m.op != nil {
		m.op.cancel()
		m.op = nil
	}
}

// retryIn holds the next step back for d.
func (m *machine) retryIn(d time.Duration) { m.retryAt = m.e.clock.Now().Add(d) }

// finish takes an op's result.
func (m *machine) finish(r opResult) {
	if r.kind == opRenew {
		m.renewed(r)
		return
	}
	if m.op == nil || r.gen != m.op.gen {
		return // cancelled: the state it was for has moved on
	}
	m.op = nil
	log := m.log.With("plan", short(m.st.PlanID), "wave", m.st.Wave+1)
	switch r.kind {
	case opAdopt:
		m.adopted(r)
	case opFetch:
		if r.err != nil || r.plan.ID != m.st.PlanID {
			log.Warn("plan not available yet", "err", r.err)
			m.retryIn(prepareRetry)
			return
		}
		m.cur = r.plan
	case opPrepare:
		m.prepared(r, log)
	case opLease:
		ttl, _ := leaseTerms(m.cur)
		if r.held < ttl/2 {
			// Not granted, or only for a moment (some granters' grants are
			// about to run out): never go offline on a lease that would
			// lapse first. Back off with jitter, so that requesters racing
			// for one wave do not keep colliding.
			log.Debug("lease not granted yet", "why", r.why, "held", r.held)
			m.retryIn(m.leaseWait.NextBackOff())
			return
		}
		m.leaseWait.Reset()
		m.held(r.started, r.held)
		m.hook(PhaseApply)
		st := m.st
		st.Phase = PhaseApply
		st.LeaseAt = m.e.clock.Now()
		_ = m.transition(st)
	case opApply:
		if r.err != nil {
			m.fail(r.err.Error(), false)
			return
		}
		m.installed = true // the step restarts, once the lease is fresh
	case opRestart:
		if r.err != nil {
			m.fail(fmt.Sprintf("restart: %v", r.err), true)
			return
		}
		st := m.st
		st.Phase, st.Starts = PhaseHealth, 1
		if m.transition(st) == nil {
			m.health = healthGate{}
		}
	case opRevert:
		if r.err != nil {
			log.Error("restart the application at the previous version", "err", r.err)
		}
	case opRelease:
		// A granter that missed the release (lost, or across a partition)
		// holds the wave until its grant expires: try again until then.
		if m.releaseSince.IsZero() {
			m.releaseSince = r.started
		}
		if r.err != nil && m.e.clock.Since(m.releaseSince) < maxLeaseTTL {
			log.Debug("give the lease back: not every granter took it; will retry", "err", r.err)
			m.retryIn(time.Second)
			return
		}
		m.releaseSince = time.Time{}
		st := m.st
		st.Lease = false
		_ = m.transition(st)
	case opHealth:
		m.observed(r, log)
	}
}

// prepared takes the result of a prepare attempt.
func (m *machine) prepared(r opResult, log *slog.Logger) {
	if r.err == nil {
		m.prepSince = time.Time{}
		st := m.st
		st.Phase = PhaseReady
		_ = m.transition(st)
		return
	}
	now := m.e.clock.Now()
	if m.prepSince.IsZero() {
		m.prepSince = now
	}
	if errors.Is(r.err, errNoSource) && now.Sub(m.prepSince) < m.cur.Options.Deadline {
		log.Warn("prepare: will retry", "err", r.err)
		m.retryIn(prepareRetry)
		return
	}
	m.prepSince = time.Time{}
	m.fail(fmt.Sprintf("prepare: %v", r.err), false)
}

// observeHealth starts the next health observation when it is due.
func (m *machine) observeHealth() {
	if m.st.Starts > maxStarts {
		m.fail(fmt.Sprintf("health gate: the new binary started %d times without passing", m.st.Starts), true)
		return
	}
	if m.e.clock.Now().Before(m.health.next) {
		return
	}
	m.startOp(opHealth, func(ctx context.Context) opResult {
		hctx, cancel := context.WithTimeout(ctx, healthCheckTimeout)
		defer cancel()
		return opResult{err: m.e.target.Healthy(hctx)}
	})
}

// observed takes one health observation. The dwell counts only time the
// node was seen healthy without a break: a gap in observation (a paused or
// starved process, a check that took too long) starts it again, and past
// the wave's deadline the node rolls back whatever it looks like now.
func (m *machine) observed(r opResult, log *slog.Logger) {
	p, st, h := m.cur, m.st, &m.health
	interval := m.e.cfg.HealthInterval
	err := r.err
	if took := r.ended.Sub(r.started); err == nil && took > healthCheckTimeout {
		err = fmt.Errorf("the health check took %s", took.Round(time.Millisecond))
	}
	if !h.lastEnd.IsZero() {
		if gap := r.started.Sub(h.lastEnd); gap > 2*interval+time.Second && !h.since.IsZero() {
			log.Warn("health gate: observation gap; the dwell starts again", "gap", gap.Round(time.Millisecond))
			h.since = time.Time{}
		}
	}
	h.lastEnd, h.next = r.ended, r.ended.Add(interval)
	if err != nil {
		h.since, h.last = time.Time{}, err
	} else if h.since.IsZero() {
		h.since = r.ended
	}
	now := r.ended
	late := now.Sub(st.LeaseAt) > p.Options.Deadline
	if !h.since.IsZero() && now.Sub(h.since) >= p.Options.MinHealthy && !late {
		st.Phase, st.Reason = PhaseDone, ""
		if versions.Compare(st.ToVersion, st.Highest) > 0 {
			st.Highest = st.ToVersion
		}
		_ = m.transition(st)
		return
	}
	if late {
		reason := fmt.Sprintf("health gate: not healthy for %s within the %s deadline", p.Options.MinHealthy, p.Options.Deadline)
		if h.last != nil {
			reason += ": " + h.last.Error()
		}
		m.fail(reason, true)
	}
}

// transition persists st and only then makes it the machine's state: a
// step whose state is not on disk does not act. The tag follows in
// reconcile.
func (m *machine) transition(st NodeState) error {
	st.Updated = m.e.clock.Now().UTC()
	st.PrepareAttempts = m.prepareAttemptsIn(st)
	if err := SaveState(m.e.statePath(), st); err != nil {
		m.log.Error("persist rollout state; the step waits until it can be saved", "plan", short(st.PlanID), "phase", st.Phase, "err", err)
		m.retryIn(persistRetry)
		return err
	}
	prev := m.st
	m.st = st
	m.e.setState(st)
	m.e.metrics.stateChanged(prev, st)
	if m.e.cfg.Observe != nil {
		m.e.cfg.Observe(st)
	}
	m.log.Info("rollout phase", "plan", short(st.PlanID), "wave", st.Wave+1, "phase", st.Phase, "from", st.FromVersion, "to", st.ToVersion)
	if st.PlanID != prev.PlanID || st.Phase.Terminal() && !prev.Phase.Terminal() {
		m.e.collect(st)
	}
	return nil
}

// fail marks this node failed for its plan; when it had gone offline, it
// restores the kept binary and restarts into it.
func (m *machine) fail(reason string, rollback bool) {
	st := m.st
	st.Phase = PhaseFailed
	st.Reason = reason
	if rollback {
		st.RolledBackFrom = appendUnique(st.RolledBackFrom, st.ToVersion)
		if err := m.e.target.Versions().Rollback(st.ToVersion); err != nil {
			st.Reason += fmt.Sprintf("; restoring the previous version failed too: %v", err)
		}
	}
	if m.transition(st) != nil {
		return
	}
	m.log.Error("rollout failed on this node; the rollout halts", "plan", short(st.PlanID), "wave", st.Wave+1, "reason", reason, "rolled_back", rollback)
	// Going back to the old version is a restart like any other: inside
	// a live lease (revert).
	m.revertPending = rollback
}

// revert restarts the target into its old version once the lease is
// fresh (keepLease renews it meanwhile).
func (m *machine) revert() {
	if !m.leaseFresh() {
		return
	}
	m.revertPending = false
	if m.e.target.RestartsAgent() {
		m.restartAgent()
		return
	}
	m.startOp(opRevert, func(ctx context.Context) opResult { return opResult{err: m.e.target.Restart(ctx)} })
}

// restartTarget brings up the installed version, inside a fresh lease: the
// agent restarts for peerd; an application restarts under it.
func (m *machine) restartTarget() {
	m.hook(PhaseRestart)
	if m.e.target.RestartsAgent() {
		st := m.st
		st.Phase = PhaseRestart
		if m.transition(st) == nil {
			m.restartAgent()
		}
		return
	}
	m.startOp(opRestart, func(ctx context.Context) opResult { return opResult{err: m.e.target.Restart(ctx)} })
}

// needsLease reports whether this node must hold its wave now: it is
// offline or in its health gate, or about to go back to its old version.
func (m *machine) needsLease() bool {
	return m.cur != nil && (m.st.Active() && m.st.Phase.HoldsLease() || m.revertPending)
}

// leaseFresh reports whether the hold is known to last at least half a
// TTL more: enough to restart in.
func (m *machine) leaseFresh() bool {
	if m.cur == nil {
		return false
	}
	ttl, _ := leaseTerms(m.cur)
	return m.e.clock.Now().Before(m.leaseUntil.Add(-ttl / 2))
}

// renewAt is when the keeper renews the hold: a quarter TTL after the
// last granted request, sooner after a refusal.
func (m *machine) renewAt() time.Time { return m.renewNext }

// held notes a granted request sent at started: a majority holds the
// wave for this node for d from then.
func (m *machine) held(started time.Time, d time.Duration) {
	ttl, _ := leaseTerms(m.cur)
	m.leaseUntil, m.renewNext = started.Add(d), started.Add(min(d/2, ttl/4))
}

// keepLease renews the hold while the node needs it, on the keeper's own
// op, beside whatever step runs (a health observation, an install).
func (m *machine) keepLease() {
	now := m.e.clock.Now()
	if m.keeper != nil || !m.needsLease() || now.Before(m.renewAfter) {
		return
	}
	// Renew on schedule, and at once when a restart waits for a fresh hold.
	if now.Before(m.renewAt()) && m.leaseFresh() {
		return
	}
	// Renew while the hold is known; once it may have lapsed (a restart,
	// refusals) ask for it afresh, as a restart must.
	p, w, renew := m.cur, m.st.Wave, m.e.clock.Now().Before(m.leaseUntil)
	m.spawn(&m.keeper, opRenew, func(ctx context.Context) opResult {
		held, why := m.e.leases.Request(ctx, p, w, renew)
		return opResult{held: held, why: why}
	})
}

// renewed takes a renewal's answer.
func (m *machine) renewed(r opResult) {
	if m.keeper == nil || r.gen != m.keeper.gen {
		return
	}
	m.keeper = nil
	if r.held <= 0 {
		// Not fresh: no restart happens until it is. The hold itself
		// lasts until leaseUntil; a node offline past it is what the
		// deadline and its rollback are for.
		m.log.Warn("lease not renewed; will retry", "plan", short(m.st.PlanID), "wave", m.st.Wave+1, "why", r.why)
		m.renewAfter = r.ended.Add(prepareRetry)
		return
	}
	m.held(r.started, r.held)
}

// release gives the lease back: the node is finished with its wave.
func (m *machine) release() {
	p, ok := m.e.plans.local(m.st.PlanID)
	if !ok {
		// The plan is gone from this node; the holds expire on their own.
		st := m.st
		st.Lease = false
		_ = m.transition(st)
		return
	}
	w := m.st.Wave
	m.startOp(opRelease, func(ctx context.Context) opResult {
		if ok, why := m.e.leases.Release(ctx, p, w); !ok {
			return opResult{err: errors.New(why)}
		}
		return opResult{}
	})
}

// restartAgent asks the agent to restart into the version store's choice.
// This process then takes no further step; the next one carries on.
func (m *machine) restartAgent() {
	m.restarting = true
	_ = m.e.target.Restart(context.Background())
}

// recover decides, once per process start, what an interrupted step means
// now that this binary is running.
func (m *machine) recover() error {
	st := m.st
	running, _ := m.e.target.Running()
	if running != "" && versions.Compare(running, st.Highest) > 0 {
		st.Highest = running
		if err := m.transition(st); err != nil {
			return err
		}
	}
	if !st.Active() {
		return nil
	}
	log := m.log.With("plan", short(st.PlanID), "phase", st.Phase)
	switch st.Phase {
	case PhaseApply, PhaseRestart, PhaseHealth:
		if running == st.ToVersion {
			st.Starts++
			st.Phase = PhaseHealth
			log.Info("started at the target version; entering the health gate", "version", running, "starts", st.Starts)
			return m.transition(st)
		}
		if st.Phase == PhaseApply {
			log.Info("interrupted while applying; applying again", "version", running)
			return nil
		}
		// The old binary is running although the swap was done: whatever
		// brought it back, this node is not upgraded. Make sure the old
		// binary stays, and report.
		if err := m.e.target.Versions().Rollback(st.ToVersion); err != nil {
			return fmt.Errorf("keep %s after a failed upgrade: %w", running, err)
		}
		st.Phase = PhaseFailed
		st.Reason = fmt.Sprintf("the new binary (%s) did not stay up; the node is back at %s", st.ToVersion, running)
		if versions.Compare(running, st.ToVersion) > 0 {
			st.Reason = fmt.Sprintf("this node's launcher (%s, e.g. the package's binary) is newer than %s and wins over the version store; to go below it, downgrade the package", running, st.ToVersion)
		}
		st.RolledBackFrom = appendUnique(st.RolledBackFrom, st.ToVersion)
		log.Warn("rolled back", "reason", st.Reason)
		return m.transition(st)
	}
	return nil
}

// adopt looks for a plan this node has not run: announced by an event, or
// named by another member's tag.
func (m *machine) adopt() {
	if len(m.announced) == 0 && len(m.candidates) == 0 {
		return
	}
	ids := m.announced
	m.announced = nil
	var ask []cluster.Member
	if len(m.candidates) > 0 {
		for _, mem := range m.e.net.Members() {
			if m.candidates[mem.Name] && mem.Status == "alive" {
				ask = append(ask, mem)
			}
		}
		clear(m.candidates)
	}
	if len(ids) == 0 && len(ask) == 0 {
		return
	}
	m.startOp(opAdopt, func(ctx context.Context) opResult {
		var r opResult
		for _, mem := range ask {
			pr, _ := ParseProgress(mem.Tags[m.e.tagKey()])
			st, err := m.e.peers.Node(ctx, mem)
			if err != nil || !isHexID(st.PlanID) || !strings.HasPrefix(st.PlanID, pr.PlanShort) {
				continue
			}
			r.looked = append(r.looked, pr.PlanShort)
			ids = append(ids, st.PlanID)
		}
		slices.Sort(ids)
		for _, id := range slices.Compact(ids) {
			p, err := m.e.planByID(ctx, id)
			if err != nil {
				m.log.Warn("cannot fetch announced plan", "plan", short(id), "err", err)
				r.failed = append(r.failed, id)
				continue
			}
			r.plans = append(r.plans, p)
		}
		return r
	})
}

// adopted picks the newest plan an adoption found and starts it: only a
// plan newer than the last one this node ran (finished plans linger in
// tags and must not run twice).
func (m *machine) adopted(r opResult) {
	for _, s := range r.looked {
		m.seen[s] = true
	}
	if len(r.failed) > 0 {
		m.announced = append(m.announced, r.failed...)
		m.retryIn(prepareRetry)
	}
	var current *plan.Compiled
	if m.st.PlanID != "" {
		current, _ = m.e.plans.local(m.st.PlanID)
	}
	var best *plan.Compiled
	for _, p := range r.plans {
		m.seen[p.Short] = true
		if p.ID == m.st.PlanID || current != nil && !p.Newer(current.Plan) {
			continue
		}
		if best == nil || p.Newer(best.Plan) {
			best = p
		}
	}
	if best != nil {
		m.begin(best)
	}
}

// begin makes p this node's plan.
func (m *machine) begin(p *plan.Compiled) {
	local := m.e.net.LocalMember()
	w := p.WaveOf(local.Name)
	if w < 0 && !p.Options.Selects(local.Tags) {
		return // not selected (--where): this plan is not for this node
	}
	if w < 0 {
		w = len(p.Waves) // joined after the plan was made: the final wave
	}
	if m.triggered == p.ID {
		m.triggered = ""
		m.e.setTriggered("")
	}
	running, _ := m.e.target.Running()
	st := NodeState{
		PlanID: p.ID, Wave: w, Phase: PhaseWait,
		FromVersion: running, ToVersion: p.Version,
		RolledBackFrom: m.st.RolledBackFrom, Highest: m.st.Highest,
	}
	switch ahead := p.Created.Sub(m.e.clock.Now()); {
	case running == p.Version:
		st.Phase = PhaseDone // already there: nothing to do, nothing to hold up
	case p.Options.AllowOutage && !m.e.cfg.AllowOutage:
		// A plan may not impose more than this node's own policy allows.
		st.Phase = PhaseFailed
		st.Reason = "the plan allows an outage (--allow-outage) and this node's policy does not: start its agent with --allow-outage to accept such plans"
	case ahead > maxPlanSkew:
		// Plans are ordered by their sequence, not their clock; but a
		// plan from hours in this node's future means a clock is wrong
		// somewhere, and the operator should know before anything runs.
		st.Phase = PhaseFailed
		st.Reason = fmt.Sprintf("the plan was made %s ahead of this node's clock (more than %s): fix the clock on %s or on this node (NTP), then 'peerd upgrade resume'",
			ahead.Round(time.Minute), maxPlanSkew, p.Origin)
	}
	if err := m.e.lock.seen(p.ID, p.Seq, m.e.clock.Now()); err != nil {
		m.log.Warn("note the plan's sequence", "err", err)
	}
	if m.transition(st) == nil {
		m.cur = p
		m.health = healthGate{}
		m.installed, m.leaseUntil, m.renewNext, m.renewAfter = false, time.Time{}, time.Time{}, time.Time{}
	}
}

// commitTrigger makes a plan triggered here, which holds the plan lock,
// the next one this node runs. The lock is what keeps plans apart across
// the cluster; here, on the owner's goroutine, only this node's own state
// is checked again.
func (m *machine) commitTrigger(p *plan.Compiled) error {
	if id := m.busyWith(); id != "" {
		return fmt.Errorf("a rollout is already running: plan %s; watch it with 'peerd upgrade status', or stop it with 'peerd upgrade abort'", short(id))
	}
	if err := m.e.plans.save(p); err != nil {
		return err
	}
	m.triggered = p.ID
	m.e.setTriggered(p.ID)
	m.announced = append(m.announced, p.ID)
	return nil
}

// busyWith is the plan this node is in, or triggered and has not taken
// up yet, or "".
func (m *machine) busyWith() string { return busyWith(m.st, m.triggered) }

func busyWith(st NodeState, triggered string) string {
	if st.Active() {
		return st.PlanID
	}
	return triggered
}

// applyControl applies the operator actions that arrived, in Lamport order
// (see NodeState.takeControl).
func (m *machine) applyControl() {
	msgs := m.pendingCtl
	m.pendingCtl = nil
	for i, c := range msgs {
		st := m.st
		if !st.takeControl(c, m.e.seenLTime.Load()) {
			c.answer(nil)
			continue
		}
		switch c.Action {
		case ActionPause:
			st.Paused = true
		case ActionResume:
			st.Paused = false
			if st.Phase == PhaseFailed {
				// The operator fixed the cause: try this version again.
				st.RolledBackFrom = slices.DeleteFunc(st.RolledBackFrom, func(v string) bool { return v == st.ToVersion })
				st.Phase, st.Reason, st.Starts = PhaseWait, "", 0
			}
		case ActionAbort:
			switch {
			case st.Phase.Abortable():
				st.Phase = PhaseAborted
				st.Reason = "aborted by the operator"
			case st.Phase == PhaseFailed:
				// The plan ends for good: a failed node must not be sent
				// back into the release it failed by a later resume. Its
				// rollback, if one is under way, still happens (revert).
				st.Phase = PhaseAborted
				st.Reason = "aborted by the operator after this node failed: " + st.Reason
			}
		}
		if err := m.transition(st); err != nil {
			if c.reply != nil {
				// The operator's own action: they hear of it, and it was
				// not sent; the others wait to be recorded.
				c.answer(err)
				i++
			}
			m.pendingCtl = append(msgs[i:], m.pendingCtl...)
			m.ctlRetryAt = m.e.clock.Now().Add(persistRetry)
			return
		}
		c.answer(nil)
		m.log.Info("operator action applied", "plan", short(st.PlanID), "action", c.Action, "from", c.Sender)
		// What was in flight for the old state must not act on the new
		// one: an abort stops a fetch or a lease request at once, and a
		// pause a lease request (no new wave starts).
		if m.op != nil && (st.Phase == PhaseAborted || c.Action == ActionPause && m.op.kind == opLease) {
			m.cancelOp()
		}
		if c.Action == ActionResume {
			m.retryAt = time.Time{}
			m.leaseWait.Reset()
		}
	}
}

// tagValue is this node's rollout tag for its state.
func (m *machine) tagValue() string {
	if m.st.PlanID == "" {
		return ""
	}
	p := Progress{PlanShort: short(m.st.PlanID), Wave: m.st.Wave, Phase: m.st.Phase}
	if signedPhase(p.Phase) {
		p.Sig = m.e.id.Sign(domainState, stateMessage(m.e.net.LocalMember().Name, m.e.tagKey(), p))
	}
	return p.String()
}

// reconcile makes the cluster's view of this node's tag match its state.
// A tag update can be lost (memberlist gives up on a broadcast; a peer
// misses it), and a peer waiting on this node would then wait forever: so
// the tag is set again until the update is confirmed and the local member
// carries it, and re-asserted now and then while the plan runs anywhere in
// this node's view.
func (m *machine) reconcile() {
	p := &m.pub
	now := m.e.clock.Now()
	if p.inflight || now.Before(p.retryAt) {
		return
	}
	want := m.tagValue()
	stale := !p.ok || p.confirmed != want
	due := !p.assertAt.IsZero() && !now.Before(p.assertAt)
	if !stale && !due {
		return
	}
	if !stale {
		// Due: does this node itself still carry what it was told it
		// published, and does anyone still wait on it?
		stale = m.e.net.LocalMember().Tags[m.e.tagKey()] != want
		if !stale && (m.cur == nil || !m.planRunning()) {
			if p.lastCall {
				p.assertAt = time.Time{} // nothing runs: nobody waits on this tag
				return
			}
			p.lastCall = true
		} else {
			p.lastCall = false
		}
	}
	p.inflight = true
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		err := m.e.net.SetTag(m.e.tagKey(), want)
		select {
		case m.pubDone <- pubResult{value: want, err: err}:
		case <-m.ctx.Done():
		}
	}()
}

// planRunning reports whether anyone in this node's view is still in its
// plan and not finished with it.
func (m *machine) planRunning() bool {
	running, _ := m.e.view.running(m.cur)
	return running > 0
}

// published takes the outcome of a tag update.
func (m *machine) published(r pubResult) {
	p := &m.pub
	p.inflight = false
	now := m.e.clock.Now()
	if r.err != nil && m.e.net.LocalMember().Tags[m.e.tagKey()] != r.value {
		m.log.Warn("publish rollout progress; will retry", "err", r.err)
		p.ok = false
		p.retryAt = now.Add(persistRetry)
		return
	}
	if r.err != nil {
		// The tag is set here and its broadcast queued; only the wait for
		// it to spread ran out (a loaded cluster: Serf's broadcast
		// timeout). Setting it again would queue one more broadcast that
		// every member receives and gossips on, adding to the load that
		// delayed this one: in a 100-agent rollout on two cores those
		// retries were ~2,500 broadcasts. Gossip spreads this one, and
		// push/pull and the reassert below heal a peer that missed it.
		m.log.Debug("rollout progress set; its broadcast is still spreading", "err", r.err)
	}
	p.confirmed, p.ok = r.value, true
	p.assertAt = now.Add(m.reassertInterval())
}

// reassertSpacing is the fleet's pace of rollout tag reasserts: each one
// is a broadcast that every member receives and gossips on, so with every
// node reasserting at a fixed interval their cost grew with the square of
// the fleet (at 100 nodes and 5 s, 20 broadcasts a second: over a minute's
// rollout twice as many as all of its phase changes). Spacing them by
// member count keeps the fleet at about four a second, whatever its size.
const reassertSpacing = 250 * time.Millisecond

// reassertInterval is how long a confirmed tag stands before it is set
// again: Config.ReassertInterval, longer in a large cluster.
func (m *machine) reassertInterval() time.Duration {
	return max(m.e.cfg.ReassertInterval, time.Duration(m.e.view.size())*reassertSpacing)
}

// hook pauses at a phase while a test asks it to (Config.HookDir).
func (m *machine) hook(ph Phase) {
	dir := m.e.cfg.HookDir
	if dir == "" {
		return
	}
	pause := filepath.Join(dir, "pause-"+string(ph))
	if _, err := os.Stat(pause); err != nil {
		return
	}
	_ = os.WriteFile(filepath.Join(dir, "at-"+string(ph)), nil, 0o600)
	for {
		if _, err := os.Stat(pause); err != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hookSet reports whether a test set the hook file name (Config.HookDir).
func (e *Engine) hookSet(name string) bool {
	if e.cfg.HookDir == "" {
		return false
	}
	_, err := os.Stat(filepath.Join(e.cfg.HookDir, name))
	return err == nil
}
