package upgradetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/internal/clock"
	"github.com/peerd/peerd/internal/identity"
	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/lease"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/peerd/peerd/upgrade/versions"
)

// Options configure a Hub.
type Options struct {
	// Nodes is how many nodes start (node0001...); Version is what they run.
	Nodes   int
	Version string
	// Seed drives every random choice of the hub's.
	Seed   uint64
	Faults Faults
	// Round is one gossip round: every message takes whole rounds.
	Round time.Duration
	// Detect is how long an observer takes to see an unreachable node as
	// failed, and Rejoin to see it back.
	Detect, Rejoin time.Duration
	// RestartDelay is how long a node is down while it restarts into a
	// new version (its re-exec).
	RestartDelay time.Duration
	// Engine is applied to each engine's config (timings, mostly).
	Engine func(*upgrade.Config)
	// Dir holds the nodes' data dirs; default a fresh one in /dev/shm (a
	// thousand nodes fsync their state often) or the system's temp dir.
	Dir string
	// Log, when set, receives every engine's log lines.
	Log io.Writer
	// Offsets skews nodes' clocks (node name -> how far ahead).
	Offsets map[string]time.Duration
	// NoGrantCheck turns off the periodic C2 check (a benchmark's cost).
	NoGrantCheck bool
	// ArtifactBytes pads the fake binaries Trigger rolls out to this
	// size (JSON white space), so that they cut into many pieces.
	ArtifactBytes int
}

func (o Options) withDefaults() Options {
	if o.Version == "" {
		o.Version = "1.0.0"
	}
	if o.Round <= 0 {
		o.Round = 50 * time.Millisecond
	}
	if o.Detect <= 0 {
		o.Detect = 2 * time.Second
	}
	if o.Rejoin <= 0 {
		o.Rejoin = 500 * time.Millisecond
	}
	if o.RestartDelay <= 0 {
		o.RestartDelay = 100 * time.Millisecond
	}
	return o
}

// checkEvery paces the checker's C2 rounds over every offline node; grant
// changes are checked as they are saved.
const checkEvery = 250 * time.Millisecond

// nodeState is a node's process state.
type nodeState int

const (
	stateUp   nodeState = iota
	stateDown           // restarting into a new binary
	stateDead           // killed; Restart brings it back
)

// Hub is an in-memory cluster of nodes, each running a real rollout
// engine. Create and use it inside a synctest bubble.
type Hub struct {
	t     testing.TB
	opts  Options
	rnd   *source
	sched *scheduler
	Rec   *Recorder
	dir   string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu          sync.Mutex // guards everything below and each Node's fields
	nodes       map[string]*Node
	names       []string
	ltime       uint64
	badVersions map[string]bool
	// served counts the artifact bytes each node served, across its
	// restarts; corrupt nodes serve bad pieces, old ones no pieces at all.
	served       map[string]int64
	corrupt, old map[string]bool
	// Counts of what the engines asked of the network.
	tagSets, queries, asked int
	// pending are the member changes each engine is told of at the end of
	// the scheduler's batch: one call per engine per round.
	pending map[*upgrade.Engine][]cluster.Member
	// forge, when set, is asked about every query a node receives: the
	// answers it returns reach the asker as if from the members they name
	// (a member that speaks in others' names). Set it with Forge.
	forge func(to, query string, payload []byte) map[string][]byte
}

// Forge makes the hub deliver, with every query node to receives, the
// answers f returns, each as if from the member it is keyed by.
func (h *Hub) Forge(f func(to, query string, payload []byte) map[string][]byte) {
	h.mu.Lock()
	h.forge = f
	h.mu.Unlock()
}

// Key is a node's identity key (a test may sign in its name: a forger).
func (n *Node) Key() identity.Key { return n.id }

// Traffic returns how many tag updates, queries and query recipients the
// engines caused.
func (h *Hub) Traffic() (tagSets, queries, asked int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.tagSets, h.queries, h.asked
}

// Node is one simulated agent: a data dir, a version store with a fake
// binary in it, and the engine of the process running now.
type Node struct {
	h    *Hub
	Name string
	Dir  string
	base string // the launcher's binary
	vs   *versions.Store
	id   identity.Key

	// Guarded by h.mu.
	rec     record
	view    map[string]entry
	group   int
	state   nodeState
	paused  bool
	resume  chan struct{} // closed while not paused
	gen     int
	engine  *upgrade.Engine
	version string
	offset  time.Duration
}

// New starts a hub of opts.Nodes nodes that all know each other. It must
// be called inside a synctest bubble; the test's cleanup stops it.
func New(t testing.TB, opts Options) *Hub {
	opts = opts.withDefaults()
	dir := opts.Dir
	if dir == "" {
		base := ""
		if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
			base = "/dev/shm"
		}
		d, err := os.MkdirTemp(base, "peerd-sim-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dir = d
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &Hub{
		t: t, opts: opts, rnd: newSource(opts.Seed), sched: newScheduler(), Rec: newRecorder(t, opts.Seed),
		dir: dir, ctx: ctx, cancel: cancel,
		nodes: map[string]*Node{}, badVersions: map[string]bool{},
		served: map[string]int64{}, corrupt: map[string]bool{}, old: map[string]bool{},
		pending: map[*upgrade.Engine][]cluster.Member{},
	}
	h.sched.afterBatch = h.flush
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.sched.run(ctx)
	}()
	if !opts.NoGrantCheck {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			t := time.NewTicker(checkEvery)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					h.Rec.tick()
				}
			}
		}()
	}
	for i := 1; i <= opts.Nodes; i++ {
		h.addNode(fmt.Sprintf("node%04d", i), opts.Version)
	}
	// Everyone knows everyone before any engine starts.
	h.mu.Lock()
	for _, n := range h.nodes {
		for _, o := range h.nodes {
			if o != n {
				n.view[o.Name] = entry{rec: o.rec, status: "alive"}
			}
		}
	}
	nodes := h.sortedLocked()
	h.mu.Unlock()
	for _, n := range nodes {
		n.start()
	}
	t.Cleanup(func() {
		h.Close()
		if t.Failed() {
			t.Logf("replay this run with seed %d", opts.Seed)
		}
	})
	return h
}

// addNode prepares a node's data dir and launcher binary.
func (h *Hub) addNode(name, version string) *Node {
	dir := filepath.Join(h.dir, name)
	base := filepath.Join(dir, "bin", "peerd")
	if err := os.MkdirAll(filepath.Dir(base), 0o755); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(base, FakeBinary(version), 0o755); err != nil {
		h.t.Fatal(err)
	}
	n := &Node{
		h: h, Name: name, Dir: filepath.Join(dir, "data"), base: base,
		vs:   versions.New(filepath.Join(dir, "data", "versions"), "peerd", base),
		view: map[string]entry{}, resume: closedChan(), id: identity.New(),
	}
	n.rec = record{tags: map[string]string{cluster.TagVersion: version, cluster.TagProtocol: "1-1", cluster.TagKey: n.id.Public.String()}, inc: 1}
	n.offset = h.opts.Offsets[name]
	h.Rec.mu.Lock()
	h.Rec.offsets[name] = n.offset
	h.Rec.mu.Unlock()
	h.mu.Lock()
	h.nodes[name] = n
	h.names = append(h.names, name)
	h.mu.Unlock()
	return n
}

// AddNode starts a new node at version that joins the cluster (a late
// joiner, for a rollout that is running).
func (h *Hub) AddNode(name, version string) *Node {
	n := h.addNode(name, version)
	n.start()
	h.rejoin(n)
	return n
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

func (h *Hub) sortedLocked() []*Node {
	out := make([]*Node, 0, len(h.names))
	for _, name := range h.names {
		out = append(out, h.nodes[name])
	}
	return out
}

// Nodes returns the nodes in name order.
func (h *Hub) Nodes() []*Node {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sortedLocked()
}

// Node returns a node by name.
func (h *Hub) Node(name string) *Node {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.nodes[name]
}

// Close stops every engine and the hub.
func (h *Hub) Close() {
	h.mu.Lock()
	var engines []*upgrade.Engine
	for _, n := range h.nodes {
		if n.paused {
			n.paused = false
			close(n.resume)
		}
		n.gen++
		if n.engine != nil {
			engines = append(engines, n.engine)
			n.engine = nil
		}
	}
	h.mu.Unlock()
	var wg sync.WaitGroup
	for _, e := range engines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.Close()
		}()
	}
	wg.Wait()
	h.cancel()
	h.wg.Wait()
}

// FakeBinary is the content of a fake peerd binary at version: what its
// `version --json` would print, which the hub's preflight reads back.
func FakeBinary(version string) []byte {
	b, _ := json.Marshal(buildinfo.Info{Version: version, OS: runtime.GOOS, Arch: runtime.GOARCH, ProtocolMin: 1, ProtocolMax: 1})
	return append(b, '\n')
}

func readFake(path string) (buildinfo.Info, error) {
	var info buildinfo.Info
	b, err := os.ReadFile(path)
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(bytes.TrimSpace(b), &info); err != nil {
		return info, fmt.Errorf("%s is not a fake peerd binary: %w", path, err)
	}
	return info, nil
}

// start runs a new process of n: the launcher's choice of binary, and an
// engine on n's data dir.
func (n *Node) start() {
	h := n.h
	bin, _, err := n.vs.Select(n.baseVersion())
	if err != nil {
		bin = versions.Binary{Path: n.base}
	}
	info, err := readFake(bin.Path)
	if err != nil {
		h.t.Errorf("node %s: %v", n.Name, err)
		return
	}
	h.mu.Lock()
	n.gen++
	gen := n.gen
	n.state = stateUp
	n.version = info.Version
	offset := n.offset
	protocol := fmt.Sprintf("%d-%d", info.ProtocolMin, info.ProtocolMax)
	changed := n.rec.tags[cluster.TagVersion] != info.Version || n.rec.tags[cluster.TagProtocol] != protocol
	if changed {
		tags := maps.Clone(n.rec.tags)
		tags[cluster.TagVersion] = info.Version
		tags[cluster.TagProtocol] = protocol
		n.rec = record{tags: tags, inc: n.rec.inc + 1}
	}
	rec := n.rec
	h.mu.Unlock()
	if changed {
		h.gossip(n.Name, rec)
	}

	p := &proc{n: n, gen: gen}
	logger := slog.New(slog.DiscardHandler)
	if h.opts.Log != nil {
		logger = slog.New(slog.NewTextHandler(h.opts.Log, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", n.Name)
	}
	cfg := upgrade.Config{
		DataDir: n.Dir,
		Target: &upgrade.Self{
			Build:      info,
			Executable: bin.Path,
			Store:      n.vs,
			Health:     p.healthy,
			RequestRestart: func() {
				go n.reexec(gen)
			},
			Preflight: func(_ context.Context, path string) (buildinfo.Info, error) { return readFake(path) },
		},
		AllowUnsigned: true,
		Identity:      n.id,
		Peers:         p,
		Logger:        logger,
		Observe:       func(st upgrade.NodeState) { h.Rec.observe(n.Name, st) },
		ObserveGrants: func(gs []lease.Grant) { h.Rec.grantsSaved(n.Name, gs) },
	}
	if offset != 0 {
		cfg.Clock = clock.Offset(clock.Real(), offset)
	}
	if h.opts.Engine != nil {
		h.opts.Engine(&cfg)
	}
	e, err := upgrade.New(cfg, p)
	if err == nil {
		err = e.Start(h.ctx)
	}
	if err != nil {
		h.t.Errorf("node %s: start engine: %v", n.Name, err)
		return
	}
	h.mu.Lock()
	if n.gen == gen {
		n.engine = e
	}
	h.mu.Unlock()
	h.Rec.started(n.Name, info.Version)
}

func (n *Node) baseVersion() string {
	info, err := readFake(n.base)
	if err != nil {
		return ""
	}
	return info.Version
}

// stop ends the running process; the node stays in state.
func (n *Node) stop(state nodeState) {
	h := n.h
	h.mu.Lock()
	n.gen++
	n.state = state
	e := n.engine
	n.engine = nil
	h.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// reexec is a self-upgrade's restart: the process stops, the node is down
// for RestartDelay, and the launcher starts the version store's choice. It
// is not seen as failed: a re-exec is quicker than failure detection.
func (n *Node) reexec(gen int) {
	h := n.h
	h.mu.Lock()
	stale := n.gen != gen || n.state != stateUp
	h.mu.Unlock()
	if stale {
		return
	}
	h.Rec.down(n.Name)
	n.stop(stateDown)
	select {
	case <-time.After(h.opts.RestartDelay):
	case <-h.ctx.Done():
		return
	}
	h.mu.Lock()
	dead := n.state == stateDead
	h.mu.Unlock()
	if !dead {
		n.start()
	}
}

// Kill stops n's process at once, as kill -9 does; the others see it fail.
func (h *Hub) Kill(name string) {
	n := h.Node(name)
	h.Rec.down(name)
	n.stop(stateDead)
	h.detect(n)
}

// Restart starts a killed node again on its data dir.
func (h *Hub) Restart(name string) {
	n := h.Node(name)
	n.start()
	h.rejoin(n)
}

// Supervise plays the nodes' process supervisor until the test ends: a
// node named on crashed is killed and, a second later, started again on
// its data dir; restarted, when not nil, is called on the supervisor's
// goroutine once the node is back. The test's cleanup stops it before the
// hub closes (cleanups run last-registered first), so no node is
// restarted into a closing hub.
func (h *Hub) Supervise(crashed <-chan string, restarted func(name string)) {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case name := <-crashed:
				h.Kill(name)
				time.Sleep(time.Second)
				h.Restart(name)
				if restarted != nil {
					restarted(name)
				}
			case <-stop:
				return
			}
		}
	}()
	h.t.Cleanup(func() { close(stop); <-done })
}

// Pause freezes n as SIGSTOP does: it sends, answers and observes nothing
// until Resume; the others see it fail.
func (h *Hub) Pause(name string) {
	n := h.Node(name)
	h.mu.Lock()
	if !n.paused {
		n.paused = true
		n.resume = make(chan struct{})
	}
	h.mu.Unlock()
	h.detect(n)
}

// Resume lets a paused node go on.
func (h *Hub) Resume(name string) {
	n := h.Node(name)
	h.mu.Lock()
	if n.paused {
		n.paused = false
		close(n.resume)
	}
	h.mu.Unlock()
	h.rejoin(n)
}

// Partition splits the cluster: each group is cut off from the others
// (nodes in no group stay with the first). Heal joins it again.
func (h *Hub) Partition(groups ...[]string) {
	h.mu.Lock()
	for _, n := range h.nodes {
		n.group = 0
	}
	for i, g := range groups {
		for _, name := range g {
			h.nodes[name].group = i
		}
	}
	nodes := h.sortedLocked()
	h.mu.Unlock()
	for _, n := range nodes {
		h.detect(n)
	}
}

// Heal ends a partition.
func (h *Hub) Heal() {
	h.mu.Lock()
	for _, n := range h.nodes {
		n.group = 0
	}
	nodes := h.sortedLocked()
	h.mu.Unlock()
	for _, n := range nodes {
		h.rejoin(n)
	}
}

// Served is how many artifact bytes node has served to peers, whole or
// in pieces, over all its processes.
func (h *Hub) Served(node string) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.served[node]
}

func (h *Hub) countServed(node string, n int64) {
	h.mu.Lock()
	h.served[node] += n
	h.mu.Unlock()
}

// CorruptPieces makes node flip a byte of every piece it serves, as a
// faulty disk or a hostile member would.
func (h *Hub) CorruptPieces(node string) {
	h.mu.Lock()
	h.corrupt[node] = true
	h.mu.Unlock()
}

func (h *Hub) corrupts(node string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.corrupt[node]
}

// OldPeer makes node answer as an agent from before pieces: it serves
// artifacts only whole.
func (h *Hub) OldPeer(node string) {
	h.mu.Lock()
	h.old[node] = true
	h.mu.Unlock()
}

func (h *Hub) oldPeer(node string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.old[node]
}

// artifact is the fake binary of version, padded to ArtifactBytes.
func (h *Hub) artifact(version string) []byte {
	b := FakeBinary(version)
	// White space that varies, so that no two pieces are alike.
	ws := []byte{' ', '\t', '\n', '\r'}
	x := uint32(2463534242)
	for len(b) < h.opts.ArtifactBytes {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b = append(b, ws[x%4])
	}
	return b
}

// SetBad makes a version's health check fail (a bad release).
func (h *Hub) SetBad(version string) {
	h.mu.Lock()
	h.badVersions[version] = true
	h.mu.Unlock()
}

// reachableLocked reports whether a message from a gets to b now.
func (h *Hub) reachableLocked(a, b *Node) bool {
	return a.state == stateUp && b.state == stateUp && a.group == b.group
}

// canTalkLocked reports whether a and b exchange gossip now: both up,
// neither paused, on the same side of any partition.
func (h *Hub) canTalkLocked(a, b *Node) bool {
	return h.reachableLocked(a, b) && !a.paused && !b.paused
}

// detect has every node that cannot talk to n see it failed after
// Detect, if that is still so then (and n, if it runs, see them failed).
func (h *Hub) detect(n *Node) {
	h.sched.at(time.Now().Add(h.opts.Detect), func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, o := range h.nodes {
			if o == n || h.canTalkLocked(o, n) {
				continue
			}
			if o.state == stateUp && !o.paused {
				h.setStatusLocked(o, n.Name, "failed")
			}
			if n.state == stateUp && !n.paused {
				h.setStatusLocked(n, o.Name, "failed")
			}
		}
	})
}

// rejoin has every node that can talk to n again see it alive, with its
// newest record, after Rejoin (a push/pull sync), and n see them.
func (h *Hub) rejoin(n *Node) {
	h.sched.at(time.Now().Add(h.opts.Rejoin), func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, o := range h.nodes {
			if o == n || !h.canTalkLocked(o, n) {
				continue
			}
			h.mergeLocked(o, n.Name, n.rec, "alive")
			h.mergeLocked(n, o.Name, o.rec, "alive")
		}
	})
}

// setStatusLocked changes o's view of name's status.
func (h *Hub) setStatusLocked(o *Node, name, status string) {
	e, ok := o.view[name]
	if !ok || e.status == status {
		return
	}
	e.status = status
	o.view[name] = e
	h.notifyLocked(o, name, e)
}

// mergeLocked takes rec into o's view if it is newer.
func (h *Hub) mergeLocked(o *Node, name string, rec record, status string) {
	e, ok := o.view[name]
	if ok && e.rec.inc >= rec.inc && e.status == status {
		return
	}
	if !ok || rec.inc > e.rec.inc {
		e.rec = rec
	}
	e.status = status
	o.view[name] = e
	h.notifyLocked(o, name, e)
}

// notifyLocked queues a member change for o's engine; flush delivers it.
func (h *Hub) notifyLocked(o *Node, name string, e entry) {
	if o.engine != nil {
		h.pending[o.engine] = append(h.pending[o.engine], o.member(name, e))
	}
}

// flush tells each engine of the member changes of the last batch, in
// one call, as the cluster's event loop would after a gossip round.
func (h *Hub) flush() {
	h.mu.Lock()
	pending := h.pending
	h.pending = map[*upgrade.Engine][]cluster.Member{}
	h.mu.Unlock()
	for e, ms := range pending {
		e.MembersChanged(ms)
	}
}

// delay is how many rounds a message takes.
func (h *Hub) delay() time.Duration {
	return time.Duration(1+h.rnd.intN(h.opts.Faults.MaxDelayRounds+1)) * h.opts.Round
}

// gossip spreads a node's new record to every other node: one scheduled
// batch per delay, so each observer's engine is told once per round.
func (h *Hub) gossip(from string, rec record) {
	buckets := map[time.Duration][]string{}
	h.mu.Lock()
	for _, name := range h.names {
		if name == from || h.rnd.chance(h.opts.Faults.Loss) {
			continue
		}
		d := h.delay()
		buckets[d] = append(buckets[d], name)
	}
	h.mu.Unlock()
	now := time.Now()
	for d, names := range buckets {
		h.sched.at(now.Add(d), func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			src := h.nodes[from]
			for _, name := range names {
				if o := h.nodes[name]; h.canTalkLocked(src, o) {
					h.mergeLocked(o, from, rec, "alive")
				}
			}
		})
	}
}

// broadcast delivers a user event to every node reachable from the sender
// when it arrives, at a Lamport time one above the last.
func (h *Hub) broadcast(from, name string, payload []byte) {
	h.mu.Lock()
	h.ltime++
	ltime := h.ltime
	names := slices.Clone(h.names)
	h.mu.Unlock()
	now := time.Now()
	for _, to := range names {
		copies := 1
		if h.rnd.chance(h.opts.Faults.Duplicate) {
			copies = 2
		}
		for range copies {
			if h.rnd.chance(h.opts.Faults.Loss) {
				continue
			}
			h.sched.at(now.Add(h.delay()), func() {
				h.mu.Lock()
				src, dst := h.nodes[from], h.nodes[to]
				ok := h.reachableLocked(src, dst) || src == dst && dst.state == stateUp
				e, paused, resume := dst.engine, dst.paused, dst.resume
				h.mu.Unlock()
				if !ok || e == nil {
					return
				}
				if paused {
					// Held in the kernel's buffers until the process runs.
					h.wg.Add(1)
					go func() {
						defer h.wg.Done()
						select {
						case <-resume:
							e.HandleEvent(name, ltime, payload)
						case <-h.ctx.Done():
						}
					}()
					return
				}
				e.HandleEvent(name, ltime, payload)
			})
		}
	}
}

// query sends a query to nodes: one goroutine per delay, which hands it
// to each of its nodes in turn (a goroutine per node would exceed what the
// race detector allows at a few hundred nodes); each answer comes back a
// few rounds later on answers, unless lost or the query is over (done).
func (h *Hub) query(from string, targets []string, name string, payload []byte, answers chan<- answer) {
	buckets := map[time.Duration][]string{}
	for _, to := range targets {
		if !h.rnd.chance(h.opts.Faults.Loss) {
			d := h.delay()
			buckets[d] = append(buckets[d], to)
		}
	}
	for d, tos := range buckets {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			select {
			case <-time.After(d):
			case <-h.ctx.Done():
				return
			}
			for _, to := range tos {
				h.deliverQuery(from, to, name, payload, answers)
			}
		}()
	}
}

// deliverQuery hands a query to one node and schedules its answer.
func (h *Hub) deliverQuery(from, to, name string, payload []byte, answers chan<- answer) {
	h.mu.Lock()
	src, dst := h.nodes[from], h.nodes[to]
	ok := dst != nil && (h.reachableLocked(src, dst) || src == dst && dst.state == stateUp)
	var e *upgrade.Engine
	var paused bool
	var resume chan struct{}
	if ok {
		e, paused, resume = dst.engine, dst.paused, dst.resume
	}
	h.mu.Unlock()
	if !ok || e == nil {
		return
	}
	h.mu.Lock()
	forge := h.forge
	h.mu.Unlock()
	if forge != nil {
		for from, b := range forge(to, name, payload) {
			h.sched.at(time.Now().Add(h.delay()), func() {
				select {
				case answers <- answer{from: from, payload: b}:
				default:
				}
			})
		}
	}
	answerNow := func() {
		resp, err := e.HandleQuery(name, payload)
		if err != nil || h.rnd.chance(h.opts.Faults.Loss) {
			return
		}
		copies := 1 + btoi(h.rnd.chance(h.opts.Faults.Duplicate))
		h.sched.at(time.Now().Add(h.delay()), func() {
			for range copies {
				select {
				case answers <- answer{from: to, payload: resp}:
				default: // the asker is long gone
				}
			}
		})
	}
	if !paused {
		answerNow()
		return
	}
	// A paused node answers when it runs again, too late to count.
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		select {
		case <-resume:
			answerNow()
		case <-h.ctx.Done():
		}
	}()
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Trigger makes node the origin of a rollout to version, with the fake
// binary of that version as the artifact.
func (h *Hub) Trigger(node, version string, opts plan.Options) (upgrade.TriggerResult, error) {
	n := h.Node(node)
	h.mu.Lock()
	e := n.engine
	h.mu.Unlock()
	if e == nil {
		return upgrade.TriggerResult{}, fmt.Errorf("node %s is not running", node)
	}
	sha, _, err := e.ImportArtifact(bytes.NewReader(h.artifact(version)))
	if err != nil {
		return upgrade.TriggerResult{}, err
	}
	res, err := e.Trigger(h.ctx, upgrade.TriggerRequest{Version: version, ArtifactSHA256: sha, Options: opts})
	if err == nil {
		h.Rec.plan(res.PlanID, res.Plan.Members)
	}
	return res, err
}

// Engine returns the engine of n's running process, or nil.
func (n *Node) Engine() *upgrade.Engine {
	n.h.mu.Lock()
	defer n.h.mu.Unlock()
	return n.engine
}

// Running waits (fake time, up to a minute) until n has a running engine
// and returns it: a node that re-execs, rolls back or restarts has none for
// a while, and a test that asks it then must wait, not dereference nil.
func (n *Node) Running() *upgrade.Engine {
	var e *upgrade.Engine
	if !n.h.WaitFor(time.Minute, func() bool { e = n.Engine(); return e != nil }) {
		n.h.t.Fatalf("%s has no running engine after a minute: %s", n.Name, n.h.Summary())
	}
	return e
}

// State is n's rollout state, or the zero state while n is down.
func (n *Node) State() upgrade.NodeState {
	if e := n.Engine(); e != nil {
		return e.State()
	}
	return upgrade.NodeState{}
}

// Version is what n runs now.
func (n *Node) Version() string {
	n.h.mu.Lock()
	defer n.h.mu.Unlock()
	return n.version
}

// WaitFor polls cond every round until it holds or timeout (fake time)
// passes; it reports whether it held.
func (h *Hub) WaitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(h.opts.Round)
	}
	return true
}

// AllAt reports whether every node that is up runs version and has
// finished its plan.
func (h *Hub) AllAt(version string) bool {
	for _, n := range h.Nodes() {
		e := n.Engine()
		if e == nil || n.Version() != version {
			return false
		}
		if st := e.State(); st.Phase != upgrade.PhaseDone {
			return false
		}
	}
	return true
}

// Summary describes where every node is, for a failure message.
func (h *Hub) Summary() string {
	count := map[string]int{}
	for _, n := range h.Nodes() {
		count[fmt.Sprintf("%s/%s", n.Version(), n.State().Phase)]++
	}
	var keys []string
	for k := range count {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%d ", k, count[k])
	}
	return b.String()
}
