package upgrade

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/upgrade/piece"
	"github.com/peerd/peerd/upgrade/swarm"
)

// The peer HTTP API of the rollout engine: what one node fetches from
// another. The routes are defined once here and used by both sides:
// HTTPPeers is the client, PeerRoutes the server.
const (
	routePlan     = "/v1/rollout/plans/"
	routeArtifact = "/v1/rollout/artifacts/"
	routeNode     = "/v1/rollout/node"
	routeStatus   = "/v1/rollout/status"

	// routeArtifact + SHA/pieces/SIZE is a blob's have-bitmap for pieces
	// of SIZE bytes, and .../SIZE/I its piece I. The piece size is in the
	// path so that a node serves a complete blob's pieces without knowing
	// the plan that cut it. Under routeArtifact, they share the daemon's
	// cap on artifact streams.
	routePieces = "/pieces/"

	// headerPlanSig carries a plan's origin signature beside its bytes.
	headerPlanSig = "Peerd-Plan-Signature"

	// maxPlanBytes bounds a fetched plan (a thousand members fit well).
	maxPlanBytes = 1 << 20
	// maxNodeBytes bounds a fetched node state.
	maxNodeBytes = 64 << 10
)

// HTTPPeers fetches from other nodes' peer HTTP APIs.
type HTTPPeers struct {
	Client *http.Client
	// ByName makes the URL https://MEMBER/path: Client resolves the name
	// and checks the member's pinned key (peertls.Client). Without it the
	// URL is http:// to Addr (tests).
	ByName bool
	// Addr is the peer HTTP address a member advertises ("" for none).
	Addr func(cluster.Member) string
	// Target is the engine's target; an application's routes carry it as
	// ?target=NAME.
	Target string
}

func (h HTTPPeers) Plan(ctx context.Context, m cluster.Member, id string) ([]byte, []byte, error) {
	resp, err := h.open(ctx, m, routePlan+id)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxPlanBytes))
	if err != nil {
		return nil, nil, fmt.Errorf("GET %s from %s: %w", routePlan+id, m.Name, err)
	}
	sig, err := base64.StdEncoding.DecodeString(resp.Header.Get(headerPlanSig))
	if err != nil {
		return nil, nil, fmt.Errorf("plan %s from %s: its signature header: %w", short(id), m.Name, err)
	}
	return b, sig, nil
}

func (h HTTPPeers) Artifact(ctx context.Context, m cluster.Member, sha string) (io.ReadCloser, error) {
	resp, err := h.open(ctx, m, routeArtifact+sha)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

func (h HTTPPeers) Pieces(ctx context.Context, m cluster.Member, sha string, size int64) ([]byte, error) {
	path := fmt.Sprintf("%s%s%s%d", routeArtifact, sha, routePieces, size)
	resp, err := h.open(ctx, m, path)
	if errors.Is(err, errNotFound) {
		// A node with the piece API answers an empty bitmap for a blob it
		// lacks: only an agent without the route says 404.
		return nil, fmt.Errorf("%s: %w", m.Name, swarm.ErrOldPeer)
	}
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, piece.MaxCount/8+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s from %s: %w", path, m.Name, err)
	}
	return b, nil
}

func (h HTTPPeers) Piece(ctx context.Context, m cluster.Member, sha string, size int64, i int) (io.ReadCloser, error) {
	resp, err := h.open(ctx, m, fmt.Sprintf("%s%s%s%d/%d", routeArtifact, sha, routePieces, size, i))
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

func (h HTTPPeers) Node(ctx context.Context, m cluster.Member) (NodeState, error) {
	var st NodeState
	b, err := h.get(ctx, m, routeNode, maxNodeBytes)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("rollout state of %s: %w", m.Name, err)
	}
	return st, nil
}

// get fetches a path from a member, reading at most limit bytes.
func (h HTTPPeers) get(ctx context.Context, m cluster.Member, path string, limit int64) ([]byte, error) {
	resp, err := h.open(ctx, m, path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return nil, fmt.Errorf("GET %s from %s: %w", path, m.Name, err)
	}
	return b, nil
}

func (h HTTPPeers) open(ctx context.Context, m cluster.Member, path string) (*http.Response, error) {
	u := url.URL{Scheme: "https", Host: m.Name, Path: path}
	if !h.ByName {
		addr := h.Addr(m)
		if addr == "" {
			return nil, fmt.Errorf("node %s advertises no peer HTTP address", m.Name)
		}
		u = url.URL{Scheme: "http", Host: addr, Path: path}
	}
	if h.Target != "" && h.Target != TargetPeerd {
		u.RawQuery = url.Values{"target": {h.Target}}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := h.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s from %s: %w", path, m.Name, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("GET %s from %s: %w", path, m.Name, errNotFound)
		}
		return nil, fmt.Errorf("GET %s from %s: %s", path, m.Name, resp.Status)
	}
	return resp, nil
}

// errNotFound is a peer's 404.
var errNotFound = errors.New("404 Not Found")

// EngineLookup finds the engine a request is for, by its ?target= (""
// for peerd); it returns an error that says what to do when there is none.
type EngineLookup func(target string) (*Engine, error)

// PeerRoutes registers the read-only rollout routes other nodes call:
// plans, artifacts, this node's state and the rollout's status, all under
// /v1/rollout/. The caller serves them to members only (peertls.Member).
func PeerRoutes(mux *http.ServeMux, lookup EngineLookup) {
	mux.HandleFunc("GET "+routePlan+"{id}", withEngine(lookup, func(e *Engine, w http.ResponseWriter, r *http.Request) {
		b, sig, err := e.PlanBytes(r.PathValue("id"))
		if err != nil {
			writeError(w, http.StatusNotFound, fmt.Errorf("no plan %s here", r.PathValue("id")))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set(headerPlanSig, base64.StdEncoding.EncodeToString(sig))
		_, _ = w.Write(b)
	}))
	mux.HandleFunc("GET "+routeArtifact+"{sha}", withEngine(lookup, func(e *Engine, w http.ResponseWriter, r *http.Request) {
		f, size, err := e.OpenArtifact(r.PathValue("sha"))
		if err != nil {
			writeError(w, http.StatusNotFound, fmt.Errorf("no artifact %s here", r.PathValue("sha")))
			return
		}
		defer f.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", fmt.Sprint(size))
		streamArtifact(w, f)
	}))
	mux.HandleFunc("GET "+routeArtifact+"{sha}"+routePieces+"{size}", withEngine(lookup, func(e *Engine, w http.ResponseWriter, r *http.Request) {
		size, err := strconv.ParseInt(r.PathValue("size"), 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("piece size %q: not a number", r.PathValue("size")))
			return
		}
		bm, err := e.PieceBitmap(r.PathValue("sha"), size)
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(bm)
	}))
	mux.HandleFunc("GET "+routeArtifact+"{sha}"+routePieces+"{size}/{i}", withEngine(lookup, func(e *Engine, w http.ResponseWriter, r *http.Request) {
		size, err1 := strconv.ParseInt(r.PathValue("size"), 10, 64)
		i, err2 := strconv.Atoi(r.PathValue("i"))
		if err1 != nil || err2 != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("piece %q of size %q: not numbers", r.PathValue("i"), r.PathValue("size")))
			return
		}
		f, n, err := e.OpenPiece(r.PathValue("sha"), size, i)
		if err != nil {
			writeError(w, http.StatusNotFound, err)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", fmt.Sprint(n))
		streamArtifact(w, f)
	}))
	StateRoutes(mux, lookup)
}

// streamChunk and chunkTimeout are the pace an artifact download must keep:
// each chunk written within the timeout. The server's write timeout bounds
// a whole answer, too short for a large artifact on a slow link and too
// long to leave to a client that stopped reading.
const (
	streamChunk  = 256 << 10
	chunkTimeout = 20 * time.Second
)

// streamArtifact copies f to w, moving the write deadline on per chunk: a
// client that stops reading loses its stream within chunkTimeout.
func streamArtifact(w http.ResponseWriter, f io.Reader) {
	rc := http.NewResponseController(w)
	buf := make([]byte, streamChunk)
	for {
		n, rerr := f.Read(buf)
		if n > 0 {
			_ = rc.SetWriteDeadline(time.Now().Add(chunkTimeout)) // not every writer has one (tests)
			if _, err := w.Write(buf[:n]); err != nil {
				return
			}
		}
		if rerr != nil {
			return
		}
	}
}

// StateRoutes registers the routes that report this node's rollout state
// and the rollout's status (served on the control socket as well).
func StateRoutes(mux *http.ServeMux, lookup EngineLookup) {
	mux.HandleFunc("GET "+routeNode, withEngine(lookup, func(e *Engine, w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, e.State())
	}))
	mux.HandleFunc("GET "+routeStatus, withEngine(lookup, func(e *Engine, w http.ResponseWriter, r *http.Request) {
		st, err := e.Status(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, st)
	}))
}

func withEngine(lookup EngineLookup, h func(*Engine, http.ResponseWriter, *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		e, err := lookup(r.URL.Query().Get("target"))
		if err != nil {
			writeError(w, http.StatusNotFound, err)
			return
		}
		h(e, w, r)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// writeError answers {"error": "..."}, the shape of daemon/api.Error.
func writeError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{err.Error()})
}
