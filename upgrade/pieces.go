package upgrade

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"slices"
	"strings"
	"sync"

	"aead.dev/minisign"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/peerd/peerd/upgrade/piece"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/peerd/peerd/upgrade/swarm"
)

// Fetching and serving an artifact by pieces (package swarm): a node
// assembles the plan's artifact from pieces that it fetches from the
// members of the plan that are preparing or further, serves every verified
// piece to them meanwhile, and asks the origin only for pieces no peer
// has yet, as swarm's duty rule says. Peers without the piece API, plans
// without a piece list, and a fetch by pieces that stalls all fall back to
// fetching the blob whole (prepare.go).

// partials are the blobs this node is assembling, by digest, so that
// their verified pieces can be served while the rest arrive.
type partials struct {
	mu sync.Mutex
	m  map[string]*artifact.Partial
}

func (ps *partials) get(sha string) *artifact.Partial {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.m[sha]
}

func (ps *partials) put(sha string, p *artifact.Partial) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.m == nil {
		ps.m = map[string]*artifact.Partial{}
	}
	ps.m[sha] = p
}

func (ps *partials) drop(sha string, p *artifact.Partial) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.m[sha] == p {
		delete(ps.m, sha)
	}
}

// pieceList is the origin's list of the artifact's pieces for a plan: cut
// as the release signature's manifest says when it says (so that nodes
// find the signed root), else by Config.PieceSize or piece.SizeFor. A list
// that cannot be made leaves the plan without one (fetched whole).
func (e *Engine) pieceList(sha string, size int64, sig string) *piece.List {
	ps := e.cfg.PieceSize
	var s minisign.Signature
	if sig != "" && s.UnmarshalText(bytes.TrimSpace([]byte(sig))) == nil {
		// Unverified: it only picks the size; every node checks the root
		// against the signature it verifies.
		if m, err := artifact.ParseTrustedComment(s.TrustedComment); err == nil && m.PieceSize > 0 {
			ps = m.PieceSize
		}
	}
	if ps <= 0 {
		ps = piece.SizeFor(size)
	}
	f, err := e.store.Open(sha)
	if err != nil {
		e.log.Warn("no piece list: nodes will fetch the artifact whole", "sha256", short(sha), "err", err)
		return nil
	}
	defer f.Close()
	l, err := piece.Compute(f, size, ps)
	if err != nil {
		e.log.Warn("no piece list: nodes will fetch the artifact whole", "sha256", short(sha), "err", err)
		return nil
	}
	return &l
}

// checkSignedPieces refuses a plan whose piece list is not the one the
// release signature binds, before any piece is fetched. A signature this
// node cannot check, or one without a list, leaves it to verify.
func (e *Engine) checkSignedPieces(p *plan.Compiled) error {
	if len(e.cfg.TrustedKeys) == 0 || p.Artifact.Signature == "" {
		return nil
	}
	m, err := artifact.SignedManifest(e.cfg.TrustedKeys, []byte(p.Artifact.Signature))
	if err != nil || m.PieceRoot == "" {
		return nil
	}
	l := p.Artifact.Pieces
	if m.PieceRoot != l.Root() || m.PieceSize != l.Size {
		return fmt.Errorf("%w: the release signature binds piece list %.12s (pieces of %d bytes), the plan carries %.12s (pieces of %d): the plan's origin listed other pieces than the release's",
			artifact.ErrBadSignature, m.PieceRoot, m.PieceSize, l.Root(), l.Size)
	}
	return nil
}

// fetchPieces assembles the plan's artifact from pieces and stores it.
func (e *Engine) fetchPieces(ctx context.Context, p *plan.Compiled) error {
	sha, l := p.Artifact.SHA256, *p.Artifact.Pieces
	if err := e.checkSignedPieces(p); err != nil {
		return err
	}
	part, err := e.store.NewPartial(sha, l, p.Artifact.Size)
	if err != nil {
		return err
	}
	e.partials.put(sha, part)
	defer e.partials.drop(sha, part)
	self := e.net.LocalMember().Name
	t := &pieceTransport{e: e, sha: sha, list: l, members: map[string]cluster.Member{}, settled: map[string]bool{}}
	h := fnv.New64a()
	h.Write([]byte(self))
	cfg := e.cfg.Swarm
	if cfg.Clock == nil {
		cfg.Clock = e.clock
	}
	res, err := swarm.Fetch(ctx, cfg, t, part, swarm.Job{
		Artifact: sha, List: l, Origin: p.Origin, Self: self, Seed: h.Sum64(),
		Peers:     func() []string { return t.refresh(p) },
		Stable:    t.done,
		Returning: func() bool { return t.returning(p) },
		Duty:      e.fetchingAlongside(p),
	})
	if err != nil {
		part.Abort()
		return fmt.Errorf("fetch %s by pieces: %w", short(sha), err)
	}
	if err := part.Commit(); err != nil {
		return err
	}
	e.log.Info("fetched artifact", "plan", p.Short, "sha256", short(sha), "from", "pieces", "pieces", l.Count(),
		"origin_bytes", res.FromOrigin, "peer_bytes", res.FromPeers, "peers", res.Peers, "from_versions", t.versions(res.From),
		"dropped", res.Dropped)
	return nil
}

// versions lists the versions the sources of a fetch ran, for the log
// (mixed-version peering is something to see).
func (t *pieceTransport) versions(from map[string]int64) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var vs []string
	for name := range from {
		if v := t.members[name].Version; v != "" && !slices.Contains(vs, v) {
			vs = append(vs, v)
		}
	}
	slices.Sort(vs)
	return strings.Join(vs, ",")
}

// fetchingAlongside is who shares origin duty with this node: the alive
// members of its wave, which prepare at the same time (the plan says who
// they are, so every one of them computes the same set, whatever their
// tags say yet).
func (e *Engine) fetchingAlongside(p *plan.Compiled) []string {
	self := e.net.LocalMember().Name
	w := p.WaveOf(self)
	if w < 0 {
		return []string{self}
	}
	alive := map[string]bool{}
	for _, m := range e.alivePeers() {
		alive[m.Name] = true
	}
	out := []string{self}
	for _, n := range p.Waves[w].Nodes {
		if alive[n] {
			out = append(out, n)
		}
	}
	return out
}

// pieceTransport is swarm's Transport over the Peers seam.
type pieceTransport struct {
	e    *Engine
	sha  string
	list piece.List

	mu      sync.Mutex
	members map[string]cluster.Member // by name, as refresh last saw them
	settled map[string]bool           // by name: done with the plan at the last refresh
}

// pieceSourcePhases are the phases of the nodes of a plan that hold or
// are assembling its artifact and are online.
var pieceSourcePhases = map[Phase]bool{PhasePrepare: true, PhaseReady: true, PhaseHealth: true, PhaseDone: true}

// refresh lists the alive members of p that are preparing or further,
// and remembers every alive member (the origin among them) by name.
func (t *pieceTransport) refresh(p *plan.Compiled) []string {
	var names []string
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range t.e.alivePeers() {
		t.members[m.Name] = m
		if m.Name == p.Origin {
			continue
		}
		pr, ok := ParseProgress(m.Tags[t.e.tagKey()])
		if !ok || pr.PlanShort != p.Short {
			continue
		}
		if pieceSourcePhases[pr.Phase] {
			names = append(names, m.Name)
			t.settled[m.Name] = pr.Phase == PhaseDone
		}
	}
	return names
}

// returning reports whether a member of plan p is offline for its restart
// now (swarm.Job.Returning): past its prepare, so it holds the artifact,
// and back soon. It reads the member list afresh, not as the last refresh
// saw it: the node whose piece request just failed went offline since.
// A member the cluster sees as failed or left counts by the phase it last
// gossiped (a restart under a supervisor leaves and joins again).
func (t *pieceTransport) returning(p *plan.Compiled) bool {
	self := t.e.net.LocalMember().Name
	for _, m := range t.e.net.Members() {
		if m.Name == self || m.Name == p.Origin {
			continue
		}
		if pr, ok := ParseProgress(m.Tags[t.e.tagKey()]); ok && pr.PlanShort == p.Short && pr.Phase.Offline() {
			return true
		}
	}
	return false
}

// done reports whether name was done with the plan at the last refresh.
func (t *pieceTransport) done(name string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.settled[name]
}

func (t *pieceTransport) member(name string) (cluster.Member, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m, ok := t.members[name]
	if !ok {
		return m, fmt.Errorf("%s is not an alive member", name)
	}
	return m, nil
}

func (t *pieceTransport) Have(ctx context.Context, name string) (piece.Bitmap, error) {
	m, err := t.member(name)
	if err != nil {
		return nil, err
	}
	b, err := t.e.peers.Pieces(ctx, m, t.sha, t.list.Size)
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return piece.NewBitmap(t.list.Count()), nil // it holds none yet
	}
	bm, err := piece.ParseBitmap(b, t.list.Count())
	if err != nil {
		return nil, fmt.Errorf("pieces of %s at %s: %w", short(t.sha), name, err)
	}
	return bm, nil
}

func (t *pieceTransport) Piece(ctx context.Context, name string, i int) (io.ReadCloser, error) {
	m, err := t.member(name)
	if err != nil {
		return nil, err
	}
	return t.e.peers.Piece(ctx, m, t.sha, t.list.Size, i)
}

// PieceBitmap is which pieces of size of blob sha this node holds, for a
// peer: every piece of a stored blob, the verified ones of a blob being
// assembled with that piece size, or none (an empty answer: the peer knows
// how many pieces it expects, this node need not).
func (e *Engine) PieceBitmap(sha string, size int64) (piece.Bitmap, error) {
	if err := (piece.List{Size: size}).CheckSize(); err != nil {
		return nil, err
	}
	if e.store.Has(sha) {
		n, err := e.storedPieces(sha, size)
		if err != nil {
			return nil, err
		}
		bm := piece.NewBitmap(n)
		for i := range n {
			bm.Set(i)
		}
		return bm, nil
	}
	if p := e.partials.get(sha); p != nil && p.List().Size == size {
		return p.Have(), nil
	}
	return piece.Bitmap{}, nil
}

// storedPieces is how many pieces of size a stored blob has.
func (e *Engine) storedPieces(sha string, size int64) (int, error) {
	fi, err := os.Stat(e.store.Path(sha))
	if err != nil {
		return 0, err
	}
	n := (fi.Size() + size - 1) / size
	if n > piece.MaxCount {
		return 0, fmt.Errorf("%d bytes in pieces of %d: more than %d pieces", fi.Size(), size, piece.MaxCount)
	}
	return int(n), nil
}

// OpenPiece opens piece i (of size bytes) of blob sha for a peer, from the
// store or a blob being assembled, counting what is served.
func (e *Engine) OpenPiece(sha string, size int64, i int) (io.ReadCloser, int64, error) {
	if err := (piece.List{Size: size}).CheckSize(); err != nil {
		return nil, 0, err
	}
	if e.store.Has(sha) {
		n, err := e.storedPieces(sha, size)
		if err != nil {
			return nil, 0, err
		}
		if i < 0 || i >= n {
			return nil, 0, fmt.Errorf("piece %d of %s: it has %d", i, short(sha), n)
		}
		f, err := e.store.Open(sha)
		if err != nil {
			return nil, 0, err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, 0, err
		}
		l := piece.List{Size: size}
		length := min(size, fi.Size()-l.Offset(i))
		e.served.Add(length)
		return struct {
			io.Reader
			io.Closer
		}{io.NewSectionReader(f, l.Offset(i), length), f}, length, nil
	}
	if p := e.partials.get(sha); p != nil && p.List().Size == size {
		rc, n, err := p.OpenPiece(i)
		if err == nil {
			e.served.Add(n)
		}
		return rc, n, err
	}
	return nil, 0, fmt.Errorf("piece %d of %s: %w", i, short(sha), os.ErrNotExist)
}
