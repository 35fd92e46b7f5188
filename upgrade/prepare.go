package upgrade

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"sort"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/internal/durable"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/peerd/peerd/upgrade/versions"
)

// errNoSource marks a fetch that found no source this time: peers restart
// and gossip can briefly lose one, so prepare tries again until the wave's
// deadline instead of failing the rollout.
var errNoSource = errors.New("no source served it")

// ErrUnsigned is returned when an artifact has no signature and the agent
// was not told to accept that.
var ErrUnsigned = errors.New("unsigned artifact refused: start the agent with --trust-key FILE and sign the artifact (peerd sign), or pass --allow-unsigned to the agent for demos and tests")

// prepare gets the plan's artifact into the store (by patch where this
// node runs the patch's base version), verifies digest and signature, runs
// the target's preflight, and stages the version into the target's
// version store. It all happens online, before the lease, on an op's
// goroutine: it reads only what it is given and shared stores. Under the
// lease the node then only activates what was staged (a swap of links)
// and restarts.
func (e *Engine) prepare(ctx context.Context, p *plan.Compiled, running, runningPath string, active int) error {
	sha := p.Artifact.SHA256
	patching := !e.store.Has(sha) && p.Patch != nil && p.Patch.FromVersion == running
	if err := e.checkSpace(p, patching); err != nil {
		return err
	}
	if patching {
		if err := e.preparePatch(ctx, p, runningPath); err != nil {
			e.log.Warn("patch failed; falling back to the full artifact", "plan", p.Short, "err", err)
		}
	}
	if !e.store.Has(sha) {
		if err := e.fetch(ctx, p, sha); err != nil {
			return err
		}
	}
	if _, err := e.verify(ctx, p, active); err != nil {
		return err
	}
	if err := e.target.Stage(e.stagedPath(p), p.Version); err != nil {
		return fmt.Errorf("stage: %w", err)
	}
	return nil
}

// verify checks the stored artifact's signature, stages it as an
// executable and runs the target's preflight. The origin (before
// announcing) and every node (before its lease) go through it alike. It
// returns what it checked, as the origin prints it.
func (e *Engine) verify(ctx context.Context, p *plan.Compiled, active int) ([]string, error) {
	data, err := os.ReadFile(e.store.Path(p.Artifact.SHA256))
	if err != nil {
		return nil, fmt.Errorf("read artifact: %w", err)
	}
	signed, err := e.verifySignature(p, data)
	if err != nil {
		return nil, err
	}
	// The staged executable is a link to the store's synced blob (and the
	// version store links to it in turn): the whole binary is written to
	// disk once per node, not three times, which on a wave of nodes
	// preparing at once is what the disk and both cores were busy with.
	// A copy only where the link cannot be made.
	staged := e.stagedPath(p)
	if err := durable.Link(e.store.Path(p.Artifact.SHA256), staged, 0o555); err != nil {
		if err := durable.WriteFile(staged, data, 0o755); err != nil {
			return nil, fmt.Errorf("stage artifact: %w", err)
		}
	}
	checks, err := e.target.Check(ctx, Check{Staged: staged, Version: p.Version, Rollback: p.Rollback, ActiveProtocol: active})
	return append([]string{signed}, checks...), err
}

// preparePatch fetches the plan's patch, applies it to the running binary
// and stores the result only if it hashes to the full artifact's digest.
func (e *Engine) preparePatch(ctx context.Context, p *plan.Compiled, runningPath string) error {
	if !e.store.Has(p.Patch.SHA256) {
		if err := e.fetch(ctx, p, p.Patch.SHA256); err != nil {
			return err
		}
	}
	f, err := e.store.Open(p.Patch.SHA256)
	if err != nil {
		return err
	}
	defer f.Close()
	var out bytes.Buffer
	if err := artifact.ApplyPatch(runningPath, f, &out, patchOf(p)); err != nil {
		return err
	}
	if _, _, err := e.store.Put(&out, p.Artifact.SHA256); err != nil {
		return fmt.Errorf("patched binary: %w", err)
	}
	e.log.Info("built the new binary from the patch", "plan", p.Short, "patch_bytes", p.Patch.Size)
	return nil
}

// patchOf is what the plan declares about its patch, for ApplyPatch.
func patchOf(p *plan.Compiled) artifact.Patch {
	return artifact.Patch{Name: short(p.Patch.SHA256), Size: p.Patch.Size, ResultSize: p.Artifact.Size}
}

// declaredSize is the size the plan declares for one of its blobs.
func declaredSize(p *plan.Compiled, sha string) int64 {
	if p.Patch != nil && sha == p.Patch.SHA256 {
		return p.Patch.Size
	}
	return p.Artifact.Size
}

// verifySignature accepts the artifact or says why not; what it accepted
// it on is said as the origin prints it, true of this agent's settings.
func (e *Engine) verifySignature(p *plan.Compiled, data []byte) (string, error) {
	sig := p.Artifact.Signature
	// Going down in version needs the release key's consent, a rollback
	// statement ('peerd sign --rollback'): a plain release signature, which
	// anyone can replay from a public release, would let a member walk the
	// fleet back to an old, vulnerable one.
	running, _ := e.target.Running()
	highest := e.State().Highest
	if versions.Compare(running, highest) > 0 {
		highest = running
	}
	down := versions.Compare(p.Version, highest) < 0
	if len(e.cfg.TrustedKeys) == 0 {
		if !e.cfg.AllowUnsigned {
			return "", ErrUnsigned
		}
		if down && !p.Rollback {
			return "", fmt.Errorf("%s is older than %s, which this node has run, and the plan is no rollback: refused", p.Version, highest)
		}
		if sig != "" {
			return "signature not checked: this agent trusts no key (--trust-key) and accepts unsigned artifacts (--allow-unsigned); every agent checks by its own keys", nil
		}
		return "unsigned: this agent accepts unsigned artifacts (--allow-unsigned); every agent decides by its own settings", nil
	}
	if sig == "" {
		return "", fmt.Errorf("artifact %s is not signed and this agent trusts only signed artifacts: sign it (peerd sign) and pass --signature", short(p.Artifact.SHA256))
	}
	m, err := artifact.VerifySignature(e.cfg.TrustedKeys, data, []byte(sig))
	if err != nil {
		return "", err
	}
	want := artifact.Manifest{Target: p.Target, Version: p.Version, OS: runtime.GOOS, Arch: runtime.GOARCH, SHA256: p.Artifact.SHA256}
	if l := p.Artifact.Pieces; l != nil {
		want.PieceRoot, want.PieceSize = l.Root(), l.Size
	}
	if err := m.Check(want); err != nil {
		return "", fmt.Errorf("signature vouches for another artifact: %w", err)
	}
	if down && !m.Rollback {
		return "", fmt.Errorf("%s is older than %s, which this node has run: going back needs a rollback statement signed by a release key "+
			"('peerd sign --rollback --version %s ARTIFACT', then pass it as --signature)", p.Version, highest, p.Version)
	}
	if m.Rollback {
		return "minisign rollback statement by a key this agent trusts, over target, version, platform and sha256", nil
	}
	return "minisign signature by a key this agent trusts, over target, version, platform and sha256", nil
}

// keptPath is the binary a rollback of this node's current version brings
// back: the version store's previous one, or the launcher.
func (e *Engine) keptPath() string {
	b, err := e.target.Versions().Previous()
	if err != nil {
		return ""
	}
	return b.Path
}

// fetch gets a blob by digest: the plan's artifact by pieces when the plan
// lists them (pieces.go); else, or when that does not complete, whole from
// the peers that have it first, then the plan's origin, then its URL, so
// origin egress stays near one copy however large the fleet. The store
// checks the digest as it writes.
func (e *Engine) fetch(ctx context.Context, p *plan.Compiled, sha string) error {
	if sha == p.Artifact.SHA256 && p.Artifact.Pieces != nil {
		err := e.fetchPieces(ctx, p)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, artifact.ErrBadSignature):
			return err
		case ctx.Err() != nil:
			return fmt.Errorf("fetch %s: %w", short(sha), ctx.Err())
		}
		e.log.Info("fetching the artifact whole", "plan", p.Short, "sha256", short(sha), "why", err)
	}
	var errs []error
	for _, m := range e.sources(p, sha) {
		body, err := e.peers.Artifact(ctx, m, sha)
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		// Never more than the plan declares: a peer that streams on
		// forever must not fill the disk.
		_, _, err = e.store.Put(io.LimitReader(body, declaredSize(p, sha)), sha)
		body.Close()
		if err == nil {
			e.log.Info("fetched artifact", "plan", p.Short, "sha256", short(sha), "from", m.Name, "from_version", m.Version)
			return nil
		}
		errs = append(errs, fmt.Errorf("from %s: %w", m.Name, err))
		if ctx.Err() != nil {
			break
		}
	}
	if p.Artifact.URL != "" && sha == p.Artifact.SHA256 && ctx.Err() == nil {
		_, _, err := e.fetchURLAtMost(ctx, p.Artifact.URL, sha, p.Artifact.Size)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("from %s: %w", p.Artifact.URL, err))
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fetch %s: %w", short(sha), err)
	}
	if len(errs) == 0 {
		errs = append(errs, fmt.Errorf("no peer holds it yet and the origin %s is not reachable", p.Origin))
	}
	return fmt.Errorf("fetch %s: %w: %w", short(sha), errNoSource, errors.Join(errs...))
}

// maxImportBytes bounds an artifact an operator imports from a URL, as the
// control API bounds an upload.
const maxImportBytes = 1 << 30

// fetchURL stores the blob at url; want, when set, is its digest.
func (e *Engine) fetchURL(ctx context.Context, url, want string) (string, int64, error) {
	return e.fetchURLAtMost(ctx, url, want, maxImportBytes)
}

// fetchURLAtMost is fetchURL reading at most limit bytes.
func (e *Engine) fetchURLAtMost(ctx context.Context, url, want string, limit int64) (string, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", 0, fmt.Errorf("artifact URL %q: %w", url, err)
	}
	resp, err := e.cfg.HTTPClient.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return e.store.Put(resp.Body, want)
}

// sources orders the members to fetch a blob from: nodes that hold it,
// finished ones first (stable, and not about to restart), then those in
// their health gate, then those merely prepared; each tier in an order
// spread by the digest; the plan's origin last. Nodes offline right now
// are skipped.
func (e *Engine) sources(p *plan.Compiled, sha string) []cluster.Member {
	tier := map[Phase]int{PhaseDone: 0, PhaseHealth: 1, PhaseReady: 2}
	type candidate struct {
		m    cluster.Member
		tier int
		rank string
	}
	var have []candidate
	var origin *cluster.Member
	self := e.net.LocalMember().Name
	for _, m := range e.alivePeers() {
		if m.Name == p.Origin {
			origin = &m
			continue
		}
		pr, ok := ParseProgress(m.Tags[e.tagKey()])
		if !ok || pr.PlanShort != p.Short {
			continue
		}
		if t, ok := tier[pr.Phase]; ok {
			h := sha256.Sum256([]byte(sha + m.Name + self))
			have = append(have, candidate{m: m, tier: t, rank: string(h[:])})
		}
	}
	sort.Slice(have, func(i, j int) bool {
		if have[i].tier != have[j].tier {
			return have[i].tier < have[j].tier
		}
		return have[i].rank < have[j].rank
	})
	out := make([]cluster.Member, 0, len(have)+1)
	for _, c := range have {
		out = append(out, c.m)
	}
	if origin != nil {
		out = append(out, *origin)
	}
	return out
}

// OpenArtifact opens a stored blob for a peer, counting what is served.
func (e *Engine) OpenArtifact(sha string) (io.ReadSeekCloser, int64, error) {
	if !e.store.Has(sha) {
		return nil, 0, os.ErrNotExist
	}
	f, err := e.store.Open(sha)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	e.served.Add(st.Size())
	return f, st.Size(), nil
}

// BytesServed is how many artifact bytes this node has served to peers.
func (e *Engine) BytesServed() int64 { return e.served.Load() }

// ImportArtifact stores an uploaded artifact and returns its digest.
func (e *Engine) ImportArtifact(r io.Reader) (string, int64, error) {
	return e.store.Put(r, "")
}
