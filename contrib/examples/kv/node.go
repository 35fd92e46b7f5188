package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// node is one kv instance: its HTTP API, replication and anti-entropy.
type node struct {
	cfg    config
	st     *store
	log    *slog.Logger
	client *http.Client

	mu      sync.Mutex
	peers   []Peer
	protos  map[string]int             // by peer addr: negotiated wire protocol while the peer answers
	pending map[string]map[string]bool // by peer addr: keys whose push failed, to push again
}

func newNode(cfg config, st *store, log *slog.Logger) *node {
	return &node{
		cfg: cfg, st: st, log: log,
		client:  &http.Client{Timeout: cfg.peerTimeout},
		protos:  map[string]int{},
		pending: map[string]map[string]bool{},
	}
}

// setPeers replaces the peer list and forgets what it knew of removed peers.
func (n *node) setPeers(peers []Peer) {
	n.mu.Lock()
	defer n.mu.Unlock()
	keep := map[string]bool{}
	for _, p := range peers {
		keep[p.Addr] = true
	}
	maps.DeleteFunc(n.protos, func(addr string, _ int) bool { return !keep[addr] })
	maps.DeleteFunc(n.pending, func(addr string, _ map[string]bool) bool { return !keep[addr] })
	n.peers = peers
	n.log.Info("peers set", "peers", peers)
}

func (n *node) peerList() []Peer {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.peers
}

func (n *node) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /kv/{key...}", n.handlePut)
	mux.HandleFunc("GET /kv/{key...}", n.handleGet)
	mux.HandleFunc("GET /kv", n.handleList)
	mux.HandleFunc("GET /health", n.handleHealth)
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, versionInfo{Version: version, Protocol: n.cfg.maxProto, ProtocolMin: wireMin})
	})
	mux.HandleFunc("POST /sync/push", n.handlePush)
	mux.HandleFunc("GET /sync/dump", n.handleDump)
	return mux
}

// putResult is the body of a successful PUT: which peers hold the write now,
// and which will get it later (background retry and anti-entropy).
type putResult struct {
	Key        string   `json:"key"`
	TS         int64    `json:"ts"`
	Replicated []string `json:"replicated"`
	Pending    []string `json:"pending"`
}

func (n *node) handlePut(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	switch {
	case key == "":
		http.Error(w, "empty key", http.StatusBadRequest)
		return
	case err != nil:
		http.Error(w, "read value: "+err.Error(), http.StatusBadRequest)
		return
	case !utf8.Valid(body):
		// Values travel as JSON strings, which hold text only.
		http.Error(w, "value must be UTF-8 text", http.StatusBadRequest)
		return
	}
	var meta *Meta
	if ct := r.Header.Get("Content-Type"); ct != "" && n.cfg.maxProto >= 2 {
		meta = &Meta{ContentType: ct}
	}
	e, err := n.st.Put(key, string(body), n.cfg.name, meta)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	res := putResult{Key: key, TS: e.TS, Replicated: []string{}, Pending: []string{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range n.peerList() {
		wg.Go(func() {
			err := n.push(r.Context(), p, e)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				n.log.Warn("replicate later", "key", key, "peer", p.Addr, "err", err)
				res.Pending = append(res.Pending, p.Addr)
				n.markPending(p.Addr, key)
			} else {
				res.Replicated = append(res.Replicated, p.Addr)
			}
		})
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, res)
}

func (n *node) handleGet(w http.ResponseWriter, r *http.Request) {
	e, ok := n.st.Get(r.PathValue("key"))
	if !ok {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	ct := "text/plain; charset=utf-8"
	if e.Meta != nil && n.cfg.maxProto >= 2 {
		ct = e.Meta.ContentType
	}
	w.Header().Set("Content-Type", ct)
	io.WriteString(w, e.Value)
}

func (n *node) handleList(w http.ResponseWriter, r *http.Request) {
	all := map[string]string{}
	for _, e := range n.st.All() {
		all[e.Key] = e.Value
	}
	writeJSON(w, http.StatusOK, all)
}

func (n *node) handleHealth(w http.ResponseWriter, r *http.Request) {
	h := struct {
		Status   string `json:"status"`
		Reason   string `json:"reason,omitempty"`
		Version  string `json:"version"`
		Protocol int    `json:"protocol"`
		Peers    int    `json:"peers"`
		Keys     int    `json:"keys"`
	}{"ok", "", version, n.cfg.maxProto, len(n.peerList()), n.st.Len()}
	code := http.StatusOK
	if err := n.st.Err(); err != nil {
		h.Status, h.Reason, code = "unhealthy", err.Error(), http.StatusServiceUnavailable
	} else if healthFault != "" {
		h.Status, h.Reason, code = "unhealthy", healthFault, http.StatusServiceUnavailable
	}
	writeJSON(w, code, h)
}

func (n *node) handlePush(w http.ResponseWriter, r *http.Request) {
	var m message
	// Room for a 1 MiB value even when JSON escaping inflates it.
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 8<<20)).Decode(&m); err != nil {
		http.Error(w, "decode message: "+err.Error(), http.StatusBadRequest)
		return
	}
	e, err := decode(m, n.cfg.maxProto)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if _, err := n.st.Apply([]Entry{e}); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleDump serves every entry encoded for the asking peer's protocol.
func (n *node) handleDump(w http.ResponseWriter, r *http.Request) {
	proto, err := strconv.Atoi(r.URL.Query().Get("proto"))
	if err != nil || proto < wireMin || proto > n.cfg.maxProto {
		http.Error(w, fmt.Sprintf("want ?proto= between %d and %d", wireMin, n.cfg.maxProto), http.StatusBadRequest)
		return
	}
	all := n.st.All()
	msgs := make([]message, len(all))
	for i, e := range all {
		msgs[i] = encode(e, proto)
	}
	writeJSON(w, http.StatusOK, msgs)
}

// push sends one write to a peer. A peer that answers with an error may have
// been replaced by an older build since we negotiated, so negotiate again
// and retry once; a peer that does not answer at all is left to the retry
// queue and anti-entropy.
func (n *node) push(ctx context.Context, p Peer, e Entry) error {
	var err error
	for range 2 {
		var proto int
		if proto, err = n.protocol(ctx, p, false); err != nil {
			return err
		}
		body, _ := json.Marshal(encode(e, proto))
		var resp *http.Response
		resp, err = n.do(ctx, http.MethodPost, p, "/sync/push", bytes.NewReader(body))
		if err != nil {
			n.forget(p, err)
			return err
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusNoContent {
			return nil
		}
		err = fmt.Errorf("push to %s: %s", p.Addr, resp.Status)
		n.forget(p, err)
	}
	return err
}

// protocol returns the wire protocol to speak with p, asking p unless it
// is known and fresh is false.
func (n *node) protocol(ctx context.Context, p Peer, fresh bool) (int, error) {
	n.mu.Lock()
	proto, ok := n.protos[p.Addr]
	n.mu.Unlock()
	if ok && !fresh {
		return proto, nil
	}
	var info versionInfo
	resp, err := n.do(ctx, http.MethodGet, p, "/version", nil)
	if err == nil {
		err = decodeResponse(resp, &info)
	}
	if err == nil {
		proto, err = negotiate(n.cfg.maxProto, info)
	}
	if err != nil {
		n.forget(p, err)
		return 0, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if old, ok := n.protos[p.Addr]; !ok || old != proto {
		n.log.Info("peer reachable", "peer", p.Addr, "version", info.Version, "protocol", proto)
	}
	n.protos[p.Addr] = proto
	return proto, nil
}

// forget drops what we negotiated with p, logging only the transition so a
// peer that is down for an upgrade does not flood the log.
func (n *node) forget(p Peer, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.protos[p.Addr]; ok {
		n.log.Warn("peer unreachable", "peer", p.Addr, "err", err)
		delete(n.protos, p.Addr)
	}
}

func (n *node) markPending(addr, key string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.pending[addr] == nil {
		n.pending[addr] = map[string]bool{}
	}
	n.pending[addr][key] = true
}

// antiEntropy pulls every peer's data each interval until ctx ends. It is
// what lets an instance that was down (being upgraded) catch up with the
// writes it missed, and repairs anything a push lost.
func (n *node) antiEntropy(ctx context.Context) {
	t := time.NewTicker(n.cfg.antiEntropy)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var wg sync.WaitGroup
		for _, p := range n.peerList() {
			wg.Go(func() {
				if err := n.syncPeer(ctx, p); err != nil && ctx.Err() == nil {
					n.log.Debug("anti-entropy", "peer", p.Addr, "err", err)
				}
			})
		}
		wg.Wait()
	}
}

// syncPeer merges p's data into ours, then pushes the writes p missed.
func (n *node) syncPeer(ctx context.Context, p Peer) error {
	// Ask afresh each round: the peer may have been upgraded in place.
	proto, err := n.protocol(ctx, p, true)
	if err != nil {
		return err
	}
	var msgs []message
	resp, err := n.do(ctx, http.MethodGet, p, "/sync/dump?proto="+strconv.Itoa(proto), nil)
	if err == nil {
		err = decodeResponse(resp, &msgs)
	}
	if err != nil {
		n.forget(p, err)
		return err
	}
	entries := make([]Entry, 0, len(msgs))
	for _, m := range msgs {
		e, err := decode(m, n.cfg.maxProto)
		if err != nil {
			return fmt.Errorf("dump from %s: %w", p.Addr, err)
		}
		entries = append(entries, e)
	}
	changed, err := n.st.Apply(entries)
	if err != nil {
		return err
	}
	if changed > 0 {
		n.log.Info("anti-entropy merged", "peer", p.Addr, "changed", changed)
	}

	n.mu.Lock()
	keys := n.pending[p.Addr]
	delete(n.pending, p.Addr)
	n.mu.Unlock()
	for key := range keys {
		if e, ok := n.st.Get(key); ok {
			if err := n.push(ctx, p, e); err != nil {
				n.markPending(p.Addr, key)
			}
		}
	}
	return nil
}

func (n *node) do(ctx context.Context, method string, p Peer, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+p.Addr+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return n.client.Do(req)
}

func decodeResponse(resp *http.Response, v any) error {
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s %s: %s: %s", resp.Request.Method, resp.Request.URL, resp.Status, bytes.TrimSpace(msg))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("%s %s: %w", resp.Request.Method, resp.Request.URL, err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	// An error here means the client went away; there is no one to tell.
	_ = json.NewEncoder(w).Encode(v)
}
