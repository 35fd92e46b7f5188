// Package swarm fetches an artifact in pieces from many peers at once, as
// BitTorrent and Kraken do: each node asks a sample of its peers which
// pieces they hold, fetches the rarest first from whoever has them, and
// serves what it has verified to the others meanwhile (its caller does
// that), so that a wave of nodes starting together spreads each piece
// among themselves instead of each fetching every piece from the origin.
//
// The origin is asked for a piece only when no peer has it, and then
// normally by one node: the piece's duty holder, the node that ranks first
// by a hash of (artifact, piece, name) among the nodes fetching alongside
// (Job.Duty). The others wait for the piece to appear at a peer; after
// each OriginWait without progress the next node in the piece's order
// takes it on too (and the first waits one OriginWait too while a holder
// is only away for its restart, Job.Returning), so that a duty holder
// that is down or slow delays the fetch rather than stalling it, and
// passes its pieces to one other node
// rather than to all. That keeps origin egress near one copy of the
// artifact however many nodes fetch at once.
//
// A peer that serves a piece that does not match its hash is dropped for
// the rest of the fetch; the origin serving a bad piece ends it. One
// goroutine (Fetch's) owns the fetch's state; workers only carry one
// request each and report back on a channel.
package swarm

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/peerd/peerd/internal/clock"
	"github.com/peerd/peerd/upgrade/piece"
)

// ErrOldPeer is what Transport.Have returns for a peer that has no piece
// API (an agent from before pieces): it can serve only whole artifacts.
var ErrOldPeer = errors.New("peer has no piece API")

// ErrWholeOnly is returned when the only peers that could serve the
// artifact speak no pieces: the caller should fetch it whole from them.
var ErrWholeOnly = errors.New("only peers without the piece API hold the artifact")

// ErrStalled is returned when no piece arrived for Config.Stall: no peer
// has what is missing and the origin does not serve it.
var ErrStalled = errors.New("no progress")

// Transport reaches other nodes' pieces.
type Transport interface {
	// Have is peer's have-bitmap for the job's list (already checked
	// against the list's piece count), or ErrOldPeer.
	Have(ctx context.Context, peer string) (piece.Bitmap, error)
	// Piece streams piece i from peer.
	Piece(ctx context.Context, peer string, i int) (io.ReadCloser, error)
}

// Sink keeps the pieces (artifact.Partial).
type Sink interface {
	Has(i int) bool
	// Write reads piece i from r, keeping it only if it matches the list;
	// an error wrapping piece.ErrMismatch means the sender sent a bad piece.
	Write(i int, r io.Reader) (int64, error)
}

// Config paces and bounds a fetch. The zero value of a field means its
// default (DefaultConfig).
type Config struct {
	// Workers is how many pieces are in flight at once; PerPeer how many
	// of them one peer (the origin included) serves.
	Workers, PerPeer int
	// Sample is how many peers are asked for their have-bitmaps per Poll.
	Sample int
	// Poll is how often bitmaps are refreshed while pieces are missing.
	Poll time.Duration
	// OriginWait is how long the fetch may go without progress before
	// this node asks the origin for pieces that are another's duty.
	OriginWait time.Duration
	// Stall ends a fetch that made no progress for that long.
	Stall time.Duration
	// PieceTimeout bounds one piece request, HaveTimeout one bitmap.
	PieceTimeout, HaveTimeout time.Duration
	Clock                     clock.Clock
}

// DefaultConfig is what a real agent uses.
func DefaultConfig() Config {
	return Config{Workers: 4, PerPeer: 2, Sample: 16, Poll: 500 * time.Millisecond, OriginWait: 5 * time.Second,
		Stall: time.Minute, PieceTimeout: time.Minute, HaveTimeout: 5 * time.Second, Clock: clock.Real()}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	pick := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	pickD := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	pick(&c.Workers, d.Workers)
	pick(&c.PerPeer, d.PerPeer)
	pick(&c.Sample, d.Sample)
	pickD(&c.Poll, d.Poll)
	pickD(&c.OriginWait, d.OriginWait)
	pickD(&c.Stall, d.Stall)
	pickD(&c.PieceTimeout, d.PieceTimeout)
	pickD(&c.HaveTimeout, d.HaveTimeout)
	if c.Clock == nil {
		c.Clock = d.Clock
	}
	return c
}

// Job is one artifact to fetch.
type Job struct {
	// Artifact is the artifact's sha256, for the duty ranking.
	Artifact string
	List     piece.List
	// Peers lists the nodes that may hold pieces now (asked again each
	// Poll, since nodes start fetching and finish over time). The origin
	// and this node are left out of it.
	Peers func() []string
	// Origin holds every piece; it is asked as the rules above say.
	Origin string
	// Self and Duty: the nodes among which origin duty is shared (those
	// fetching alongside this one, Self among them).
	Self string
	Duty []string
	// Stable, when set, says which peers are settled (done with the
	// rollout): a piece is taken from a settled holder when one has room,
	// since the others are about to go offline (a transfer cut by their
	// restart is lost) and busy with their own upgrade.
	Stable func(peer string) bool
	// Returning, when set, reports whether a node that holds the whole
	// artifact is offline for its restart and will serve again soon (a
	// node of the rollout past its prepare). The duty holders then give
	// it one OriginWait before they ask the origin: the wave before this
	// one going offline while this one fetches is no reason for the
	// origin to serve a second copy.
	Returning func() bool
	// Seed seeds the random piece and peer order.
	Seed uint64
}

// Result is where a fetch's bytes came from.
type Result struct {
	FromOrigin, FromPeers int64
	// Peers is how many peers served at least one piece; Dropped the ones
	// that served a bad piece.
	Peers   int
	Dropped []string
	// From is the bytes each source served, the origin included.
	From map[string]int64
}

type done struct {
	peer string
	i    int
	n    int64
	err  error
}

type haveAnswer struct {
	peer string
	bm   piece.Bitmap
	err  error
}

// fetch is Fetch's state, owned by its goroutine.
type fetch struct {
	cfg  Config
	t    Transport
	sink Sink
	job  Job
	rnd  *rand.Rand

	have     map[string]piece.Bitmap // latest bitmap per peer
	old      map[string]bool         // peers without the piece API
	bad      map[string]bool
	cooling  map[string]bool // failed since the last refresh: not asked again until it
	load     map[string]int
	inflight map[int]bool
	rank     []int // per piece, this node's place in the origin duty order
	missing  int
	lastGain time.Time // last piece stored or newly seen at a peer
	served   map[string]bool
	res      Result
}

// Fetch gets every piece of job into sink.
func Fetch(ctx context.Context, cfg Config, t Transport, sink Sink, job Job) (Result, error) {
	cfg = cfg.withDefaults()
	n := job.List.Count()
	f := &fetch{
		cfg: cfg, t: t, sink: sink, job: job,
		rnd:  rand.New(rand.NewPCG(job.Seed, 0x5eed)),
		have: map[string]piece.Bitmap{}, old: map[string]bool{}, bad: map[string]bool{}, cooling: map[string]bool{},
		load: map[string]int{}, inflight: map[int]bool{}, served: map[string]bool{},
		rank: duty(job, n), lastGain: cfg.Clock.Now(),
	}
	for i := range n {
		if !sink.Has(i) {
			f.missing++
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan done, cfg.Workers)
	running := 0
	// Every worker reports before Fetch returns: none outlives it.
	defer func() {
		cancel()
		for ; running > 0; running-- {
			<-results
		}
	}()
	first := true
	for f.missing > 0 {
		if cfg.Clock.Since(f.lastGain) >= cfg.Stall {
			return f.res, fmt.Errorf("%w for %s: %d of %d pieces missing, no peer has them and the origin %s did not serve them",
				ErrStalled, cfg.Stall, f.missing, n, job.Origin)
		}
		f.refresh(ctx)
		if first {
			first = false
			if f.onlyOld() {
				return f.res, ErrWholeOnly
			}
		}
		for running < cfg.Workers {
			peer, i, ok := f.next()
			if !ok {
				break
			}
			f.inflight[i] = true
			f.load[peer]++
			running++
			go func() { results <- f.get(ctx, peer, i) }()
		}
		poll := cfg.Clock.After(cfg.Poll)
	wait:
		for {
			select {
			case d := <-results:
				running--
				if err := f.settle(d); err != nil {
					return f.res, err
				}
				if running < cfg.Workers && f.missing > 0 {
					// Start the next piece at once when one is known.
					if peer, i, ok := f.next(); ok {
						f.inflight[i] = true
						f.load[peer]++
						running++
						go func() { results <- f.get(ctx, peer, i) }()
					}
				}
				if f.missing == 0 {
					break wait
				}
			case <-poll:
				break wait
			case <-ctx.Done():
				return f.res, ctx.Err()
			}
		}
	}
	return f.res, nil
}

// duty is this node's rank for each piece among the duty holders: 0 for
// the pieces it fetches from the origin at once, r for those it takes on
// after r OriginWaits without progress (the r holders before it are down
// or slow), so that a dead holder's pieces pass to one other node, not to
// every node at once. FNV is enough: ranks only spread load, and a member
// that games its name to get more duty only costs itself.
func duty(job Job, n int) []int {
	names := slices.Clone(job.Duty)
	if !slices.Contains(names, job.Self) {
		names = append(names, job.Self)
	}
	names = slices.DeleteFunc(names, func(s string) bool { return s == job.Origin })
	ranks := make([]int, n)
	for i := range n {
		mine := rankKey(job.Artifact, i, job.Self)
		for _, name := range names {
			if k := rankKey(job.Artifact, i, name); k < mine || (k == mine && name < job.Self) {
				ranks[i]++
			}
		}
	}
	return ranks
}

func rankKey(artifact string, i int, name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(artifact))
	h.Write([]byte{'/'})
	h.Write([]byte(strconv.Itoa(i)))
	h.Write([]byte{'/'})
	h.Write([]byte(name))
	return h.Sum64()
}

// refresh asks a random sample of the peers for their bitmaps, at once.
func (f *fetch) refresh(ctx context.Context) {
	clear(f.cooling)
	var peers []string
	listed := map[string]bool{}
	for _, p := range f.job.Peers() {
		listed[p] = true
		if p != f.job.Self && p != f.job.Origin && !f.bad[p] && !f.old[p] {
			peers = append(peers, p)
		}
	}
	for p := range f.have {
		if !listed[p] {
			delete(f.have, p) // offline or gone since: Job.Returning covers a restart
		}
	}
	f.rnd.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	peers = peers[:min(len(peers), f.cfg.Sample)]
	answers := make(chan haveAnswer, len(peers))
	for _, p := range peers {
		go func() {
			hctx, cancel := context.WithTimeout(ctx, f.cfg.HaveTimeout)
			defer cancel()
			bm, err := f.t.Have(hctx, p)
			answers <- haveAnswer{peer: p, bm: bm, err: err}
		}()
	}
	for range peers {
		a := <-answers
		switch {
		case errors.Is(a.err, ErrOldPeer):
			f.old[a.peer] = true
			delete(f.have, a.peer)
		case a.err != nil:
			delete(f.have, a.peer) // it may have restarted and lost its pieces
		default:
			if prev := f.have[a.peer]; a.bm.Count() > prev.Count() {
				f.lastGain = f.cfg.Clock.Now()
			}
			f.have[a.peer] = a.bm
		}
	}
}

// onlyOld: the first round found peers without the piece API and none
// with a piece.
func (f *fetch) onlyOld() bool {
	if len(f.old) == 0 {
		return false
	}
	for _, bm := range f.have {
		if bm.Count() > 0 {
			return false
		}
	}
	return true
}

// next picks a missing piece not in flight and who to get it from: the
// rarest piece a peer with spare capacity has, at random among equals;
// else one the origin should serve now.
func (f *fetch) next() (peer string, i int, ok bool) {
	n := f.job.List.Count()
	order := f.rnd.Perm(n)
	bestCount, bestPiece := 0, -1
	var bestPeers []string
	for _, i := range order {
		if f.inflight[i] || f.sink.Has(i) {
			continue
		}
		var holders []string
		count := 0
		for p, bm := range f.have {
			if !bm.Has(i) || f.bad[p] || f.cooling[p] {
				continue
			}
			count++
			if f.load[p] < f.cfg.PerPeer {
				holders = append(holders, p)
			}
		}
		if len(holders) > 0 && (bestPiece < 0 || count < bestCount) {
			bestCount, bestPiece, bestPeers = count, i, holders
		}
	}
	if bestPiece >= 0 {
		slices.Sort(bestPeers) // map order is not the seeded order
		if f.job.Stable != nil {
			if stable := slices.DeleteFunc(slices.Clone(bestPeers), func(p string) bool { return !f.job.Stable(p) }); len(stable) > 0 {
				bestPeers = stable
			}
		}
		return bestPeers[f.rnd.IntN(len(bestPeers))], bestPiece, true
	}
	if f.bad[f.job.Origin] || f.cooling[f.job.Origin] || f.load[f.job.Origin] >= f.cfg.PerPeer {
		return "", 0, false
	}
	takeOver := int(f.cfg.Clock.Since(f.lastGain) / f.cfg.OriginWait)
	if f.job.Returning != nil && f.job.Returning() {
		takeOver-- // even the first in a piece's order waits one OriginWait
	}
	for _, i := range order {
		if f.inflight[i] || f.sink.Has(i) || f.held(i) {
			continue
		}
		if f.rank[i] <= takeOver {
			return f.job.Origin, i, true
		}
	}
	return "", 0, false
}

// held reports whether a peer not dropped has piece i (then it is fetched
// from a peer once one has room).
func (f *fetch) held(i int) bool {
	for p, bm := range f.have {
		if bm.Has(i) && !f.bad[p] {
			return true
		}
	}
	return false
}

func (f *fetch) get(ctx context.Context, peer string, i int) done {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.PieceTimeout)
	defer cancel()
	body, err := f.t.Piece(ctx, peer, i)
	if err != nil {
		return done{peer: peer, i: i, err: err}
	}
	defer body.Close()
	n, err := f.sink.Write(i, body)
	return done{peer: peer, i: i, n: n, err: err}
}

// settle records a finished request; a bad piece from the origin ends the
// fetch.
func (f *fetch) settle(d done) error {
	delete(f.inflight, d.i)
	f.load[d.peer]--
	switch {
	case errors.Is(d.err, piece.ErrMismatch):
		if d.peer == f.job.Origin {
			return fmt.Errorf("the origin %s served a bad piece: %w", d.peer, d.err)
		}
		if !f.bad[d.peer] {
			f.res.Dropped = append(f.res.Dropped, d.peer)
		}
		f.bad[d.peer] = true
		delete(f.have, d.peer)
	case d.err != nil:
		// Unreachable, restarting, busy: ask it again next round, not
		// at once (a refused connection fails fast, and would spin). Its
		// pieces still count as held until the next refresh says
		// otherwise: a holder away for a moment is no reason to send its
		// pieces' duty holders to the origin.
		f.cooling[d.peer] = true
	default:
		f.missing--
		f.lastGain = f.cfg.Clock.Now()
		if f.res.From == nil {
			f.res.From = map[string]int64{}
		}
		f.res.From[d.peer] += d.n
		if d.peer == f.job.Origin {
			f.res.FromOrigin += d.n
		} else {
			f.res.FromPeers += d.n
			if !f.served[d.peer] {
				f.served[d.peer] = true
				f.res.Peers++
			}
		}
	}
	return nil
}
