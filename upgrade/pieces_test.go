package upgrade

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"aead.dev/minisign"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/peerd/peerd/upgrade/piece"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/peerd/peerd/upgrade/swarm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// piecesServer serves e's peer routes; the client reaches it as member m.
func piecesServer(t *testing.T, e *Engine) (HTTPPeers, cluster.Member) {
	mux := http.NewServeMux()
	PeerRoutes(mux, func(string) (*Engine, error) { return e, nil })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	return HTTPPeers{Client: srv.Client(), Addr: func(cluster.Member) string { return addr }}, cluster.Member{Name: "peer"}
}

func TestPieceRoutes(t *testing.T) {
	e := testEngine(t, "1.0.0")
	data := make([]byte, 3*piece.MinSize+10)
	_, err := rand.Read(data)
	require.NoError(t, err)
	sha, _, err := artifact.Digest(bytes.NewReader(data))
	require.NoError(t, err)
	l, err := piece.Compute(bytes.NewReader(data), int64(len(data)), piece.MinSize)
	require.NoError(t, err)
	peers, m := piecesServer(t, e)
	ctx := t.Context()

	b, err := peers.Pieces(ctx, m, sha, l.Size)
	require.NoError(t, err)
	assert.Empty(t, b, "a node with the piece API that holds nothing answers an empty bitmap, not 404")
	_, err = peers.Piece(ctx, m, sha, l.Size, 0)
	assert.Error(t, err)

	// Assembling: only verified pieces are offered and served.
	part, err := e.store.NewPartial(sha, l, int64(len(data)))
	require.NoError(t, err)
	e.partials.put(sha, part)
	_, err = part.Write(2, bytes.NewReader(data[2*piece.MinSize:3*piece.MinSize]))
	require.NoError(t, err)
	b, err = peers.Pieces(ctx, m, sha, l.Size)
	require.NoError(t, err)
	bm, err := piece.ParseBitmap(b, l.Count())
	require.NoError(t, err)
	assert.True(t, bm.Has(2))
	assert.Equal(t, 1, bm.Count())
	rc, err := peers.Piece(ctx, m, sha, l.Size, 2)
	require.NoError(t, err)
	got, _ := io.ReadAll(rc)
	rc.Close()
	assert.Equal(t, data[2*piece.MinSize:3*piece.MinSize], got)
	_, err = peers.Piece(ctx, m, sha, l.Size, 1)
	assert.Error(t, err, "piece 1 is not here yet")
	part.Abort()
	e.partials.drop(sha, part)

	// Stored whole: every piece, the last one short.
	_, _, err = e.store.Put(bytes.NewReader(data), sha)
	require.NoError(t, err)
	b, err = peers.Pieces(ctx, m, sha, l.Size)
	require.NoError(t, err)
	bm, err = piece.ParseBitmap(b, l.Count())
	require.NoError(t, err)
	assert.Equal(t, l.Count(), bm.Count())
	rc, err = peers.Piece(ctx, m, sha, l.Size, 3)
	require.NoError(t, err)
	got, _ = io.ReadAll(rc)
	rc.Close()
	assert.NoError(t, l.Verify(3, got))
	_, err = peers.Piece(ctx, m, sha, l.Size, 4)
	assert.Error(t, err, "past the last piece")
	_, err = peers.Pieces(ctx, m, sha, 1000)
	assert.Error(t, err, "a piece size no list has")
	assert.Equal(t, int64(piece.MinSize+10), e.BytesServed(), "what was served is counted")
}

// TestPiecesFromOldPeer: an agent from before pieces has no route (404 from
// its mux): the client says so, and the fetch goes whole.
func TestPiecesFromOldPeer(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+routeArtifact+"{sha}", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("whole")) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	peers := HTTPPeers{Client: srv.Client(), Addr: func(cluster.Member) string { return strings.TrimPrefix(srv.URL, "http://") }}
	_, err := peers.Pieces(t.Context(), cluster.Member{Name: "old"}, strings.Repeat("a", 64), piece.MinSize)
	assert.ErrorIs(t, err, swarm.ErrOldPeer)
}

// TestSignedPieceRoot: a signature that binds a piece list refuses a plan
// with another list, before and after the fetch; one without a list
// accepts any (the pieces and the whole digest are checked anyway).
func TestSignedPieceRoot(t *testing.T) {
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	require.NoError(t, err)
	e := testEngine(t, "1.0.0", pub)
	data := bytes.Repeat([]byte("release 2.0.0 "), 500)
	sha, size, err := artifact.Digest(bytes.NewReader(data))
	require.NoError(t, err)
	l, err := piece.Compute(bytes.NewReader(data), size, piece.MinSize)
	require.NoError(t, err)
	other, err := piece.Compute(bytes.NewReader(data), size, 2*piece.MinSize)
	require.NoError(t, err)
	m := artifact.Manifest{Target: TargetPeerd, Version: "2.0.0", OS: runtime.GOOS, Arch: runtime.GOARCH, SHA256: sha, Size: size}
	sign := func(m artifact.Manifest) string {
		sig, err := artifact.Sign(priv, data, m)
		require.NoError(t, err)
		return string(sig)
	}
	withList := m
	withList.PieceRoot, withList.PieceSize = l.Root(), l.Size
	planOf := func(sig string, pl *piece.List) *plan.Compiled {
		return &plan.Compiled{Plan: plan.Plan{Target: TargetPeerd, Version: "2.0.0", Artifact: plan.Artifact{SHA256: sha, Size: size, Signature: sig, Pieces: pl}}}
	}
	for _, c := range []struct {
		name string
		p    *plan.Compiled
		ok   bool
	}{
		{"signed list, same list", planOf(sign(withList), &l), true},
		{"signed list, other list", planOf(sign(withList), &other), false},
		{"signed list, plan without", planOf(sign(withList), nil), true},
		{"old signature, any list", planOf(sign(m), &other), true},
	} {
		if c.p.Artifact.Pieces != nil {
			err := e.checkSignedPieces(c.p)
			assert.Equal(t, c.ok, err == nil, "%s, before the fetch: %v", c.name, err)
		}
		_, err := e.verifySignature(c.p, data)
		assert.Equal(t, c.ok, err == nil, "%s, after: %v", c.name, err)
		if !c.ok {
			assert.ErrorIs(t, err, artifact.ErrBadSignature)
		}
	}

	// The origin cuts the pieces as the signature says, whatever its own
	// setting, so that nodes find the signed root.
	_, _, err = e.store.Put(bytes.NewReader(data), sha)
	require.NoError(t, err)
	e.cfg.PieceSize = 4 * piece.MinSize
	got := e.pieceList(sha, size, sign(withList))
	require.NotNil(t, got)
	assert.Equal(t, l.Root(), got.Root())
	assert.Equal(t, int64(4*piece.MinSize), e.pieceList(sha, size, sign(m)).Size, "an old signature: the origin's own setting")
}
