package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/daemon/api"
	"github.com/peerd/peerd/internal/identity"
	"github.com/peerd/peerd/internal/peertls"
	"github.com/peerd/peerd/upgrade"
)

// controlHandler serves the local control API. Only the socket's owner can
// reach it, so it may change the agent's state.
func (a *Agent) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/members", a.handleMembers)
	mux.HandleFunc("GET /v1/apps", a.handleApps)
	mux.HandleFunc("GET /v1/info", a.handleLocalInfo)
	mux.HandleFunc("POST /v1/leave", a.handleLeave)
	mux.HandleFunc("POST /v1/join", a.handleJoin)
	mux.HandleFunc("POST /v1/force-leave", a.handleForceLeave)
	mux.HandleFunc("POST /v1/forget/{node}", a.handleForget)
	mux.HandleFunc("GET /v1/keyring", a.handleKeyring)
	mux.HandleFunc("POST /v1/keyring/{op}", a.handleKeyring)
	mux.HandleFunc("GET /v1/monitor", a.handleMonitor)
	mux.HandleFunc("POST /v1/rollout/artifacts", a.handleUpload)
	mux.HandleFunc("POST /v1/rollout/trigger", a.handleTrigger)
	mux.HandleFunc("POST /v1/rollout/control/{action}", a.handleControl)
	upgrade.StateRoutes(mux, a.engineFor)
	return mux
}

// peerHandler serves the peer HTTP API other nodes and health checks call.
// It must only ever read. Health, info and metrics are for anyone who
// reaches the port (load balancers, Prometheus); plans, artifacts and
// rollout state only for members, over mutual TLS with a node key this
// node pinned.
func (a *Agent) peerHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", a.handleHealth)
	mux.HandleFunc("GET /v1/info", a.handleInfo)
	mux.Handle("GET /metrics", a.metricsHandler())
	members := http.NewServeMux()
	upgrade.PeerRoutes(members, a.engineFor)
	mux.Handle("/v1/rollout/", peertls.Member(func(k identity.PublicKey) string {
		return a.cluster.MemberOfKey(k.String())
	}, members))
	return mux
}

func (a *Agent) handleApps(w http.ResponseWriter, _ *http.Request) {
	rows := a.appRows()
	if rows == nil {
		rows = []api.App{}
	}
	writeJSON(w, rows)
}

func (a *Agent) handleUpload(w http.ResponseWriter, r *http.Request) {
	e, ok := a.engineOf(w, r)
	if !ok {
		return
	}
	sha, size, err := e.ImportArtifact(http.MaxBytesReader(w, r.Body, 1<<30))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("store artifact: %w", err))
		return
	}
	writeJSON(w, api.Upload{SHA256: sha, Size: size})
}

func (a *Agent) handleTrigger(w http.ResponseWriter, r *http.Request) {
	var req upgrade.TriggerRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("decode upgrade request: %w", err))
		return
	}
	e, ok := a.engineOf(w, r)
	if !ok {
		return
	}
	res, err := e.Trigger(r.Context(), req)
	if err != nil {
		writeError(w, http.StatusConflict, err)
		return
	}
	writeJSON(w, res)
}

func (a *Agent) handleControl(w http.ResponseWriter, r *http.Request) {
	e, ok := a.engineOf(w, r)
	if !ok {
		return
	}
	id, err := e.Control(r.Context(), r.PathValue("action"))
	if err != nil {
		writeError(w, http.StatusConflict, err)
		return
	}
	writeJSON(w, map[string]string{"plan_id": id, "action": r.PathValue("action")})
}

var memberStatuses = []string{"alive", "leaving", "left", "failed"}

func (a *Agent) handleMembers(w http.ResponseWriter, r *http.Request) {
	status := r.URL.Query().Get("status")
	if status != "" && !slices.Contains(memberStatuses, status) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("status %q: want one of %s", status, strings.Join(memberStatuses, ", ")))
		return
	}
	rows := []api.Member{}
	for _, m := range a.cluster.Members() {
		if status == "" || m.Status == status {
			rows = append(rows, memberRow(m))
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	writeJSON(w, rows)
}

// handleInfo is the peer API's info: without the PID and socket path,
// which are of no use off this host and tell anyone on the network about it.
func (a *Agent) handleInfo(w http.ResponseWriter, _ *http.Request) {
	i := a.info()
	i.Addrs.PID, i.Addrs.Socket = 0, ""
	writeJSON(w, i)
}

// handleLocalInfo is the control API's info, in full.
func (a *Agent) handleLocalInfo(w http.ResponseWriter, _ *http.Request) { writeJSON(w, a.info()) }

// handleHealth answers 200 while the agent serves as a member of its
// cluster, and 503 with the reason when it does not. It must stay cheap and
// side-effect free: anyone on the network may call it, so it runs none of
// the operator's checks (--health-cmd, --health-url); the rollout's health
// gate runs those itself.
func (a *Agent) handleHealth(w http.ResponseWriter, _ *http.Request) {
	h := api.Health{Status: "ok", Node: a.cfg.Node, Version: a.opts.Build.Version, SafeMode: a.safeMode()}
	reason := a.unhealthy()
	if reason == "" {
		writeJSON(w, h)
		return
	}
	h.Status = "unhealthy"
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusServiceUnavailable)
	_ = json.NewEncoder(w).Encode(struct {
		api.Health
		Reason string `json:"reason"`
	}{h, reason})
}

// unhealthy says why the agent does not serve as a member, or "" when it does.
func (a *Agent) unhealthy() string {
	select {
	case <-a.cluster.ShutdownCh():
		return "gossip has stopped"
	default:
	}
	self := a.cluster.LocalMember()
	switch self.Status {
	case "alive":
	case "leaving":
		return "this node is leaving the cluster"
	case "left":
		return "this node has left the cluster"
	default:
		return "this node's own status is " + self.Status
	}
	if a.engine != nil {
		if st := a.engine.State(); st.Active() && st.Phase.Offline() {
			return fmt.Sprintf("offline for rollout %s: restarting into %s", shortID(st.PlanID), st.ToVersion)
		}
	}
	if others, alive := a.cluster.Others(); others > 0 && alive == 0 {
		return fmt.Sprintf("isolated: none of the %d other members still in the cluster is alive in this node's view", others)
	}
	return ""
}

// handleKeyring lists or changes the gossip keyring on every member. The
// answer is 200 with the members' answers even when some failed (Error says
// so): the operator needs both to decide what to do next.
func (a *Agent) handleKeyring(w http.ResponseWriter, r *http.Request) {
	op := r.PathValue("op")
	if r.Method == http.MethodGet {
		op = cluster.KeyringList
	}
	var req struct {
		Key string `json:"key"`
	}
	if op != cluster.KeyringList {
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("keyring %s: want a JSON body {\"key\": \"BASE64\"}: %w", op, err))
			return
		}
	}
	res, err := a.cluster.Keyring(op, req.Key)
	if err != nil && res.Nodes == 0 {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	out := api.Keyring{Nodes: res.Nodes, Responses: res.Responses, Errors: res.Errors,
		Keys: res.Keys, Primary: res.PrimaryKeys}
	for name, msg := range res.Messages {
		if msg != "" {
			if out.Failed == nil {
				out.Failed = map[string]string{}
			}
			out.Failed[name] = msg
		}
	}
	if err != nil {
		out.Error = err.Error()
	}
	if op != cluster.KeyringList {
		a.log.Warn("gossip keyring changed on the cluster's members", "op", op, "answered", res.Responses, "failed", res.Errors, "members", res.Nodes)
	}
	writeJSON(w, out)
}

func (a *Agent) handleForget(w http.ResponseWriter, r *http.Request) {
	node := r.PathValue("node")
	if node == a.cfg.Node {
		writeError(w, http.StatusBadRequest, errors.New("a node does not forget its own key; run 'peerd forget' on the other agents"))
		return
	}
	key, err := a.cluster.Forget(node)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	if key != "" {
		a.log.Warn("identity key forgotten; the next key this member shows is pinned on sight", "member", node, "key", key)
	}
	writeJSON(w, api.ForgetResult{Node: node, Forgotten: key != "", Key: key})
}

func (a *Agent) handleLeave(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), leaveTimeout)
	defer cancel()
	if err := a.Leave(ctx); err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, struct{}{})
	a.requestExit()
}

func (a *Agent) handleJoin(w http.ResponseWriter, r *http.Request) {
	var req api.JoinRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("decode join request: %w", err))
		return
	}
	if len(req.Addrs) == 0 {
		writeError(w, http.StatusBadRequest, errors.New("join: no address given"))
		return
	}
	for _, addr := range req.Addrs {
		if err := ValidateJoinAddr(addr); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("join: %w", err))
			return
		}
	}
	n, err := a.cluster.Join(req.Addrs)
	if err != nil {
		writeError(w, http.StatusBadGateway, err)
		return
	}
	a.log.Info("joined cluster on request", "contacted", n, "addrs", req.Addrs)
	writeJSON(w, api.JoinResult{Contacted: n})
}

func (a *Agent) handleForceLeave(w http.ResponseWriter, r *http.Request) {
	var req api.ForceLeaveRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || req.Node == "" {
		writeError(w, http.StatusBadRequest, errors.New("force-leave: name the member, e.g. {\"node\": \"n3\"}"))
		return
	}
	if err := a.cluster.ForceLeave(req.Node); err != nil {
		writeError(w, http.StatusConflict, err)
		return
	}
	a.log.Info("forced a failed member to leave", "member", req.Node)
	writeJSON(w, api.ForceLeaveResult{Node: req.Node, Status: "left"})
}

func (a *Agent) info() api.Info {
	members := a.cluster.Members()
	ci := api.ClusterInfo{ByStatus: map[string]int{}}
	for _, m := range members {
		ci.ByStatus[m.Status]++
		if m.Status != "left" {
			ci.Size++
		}
	}
	pr := a.cluster.ProtocolRange()
	ci.ActiveProtocol, ci.ProtocolMin = pr.Max, pr.Min
	b := a.opts.Build
	var served int64
	if a.engine != nil {
		served = a.engine.BytesServed()
	}
	return api.Info{
		ArtifactBytesServed: served,
		Node:                memberRow(a.cluster.LocalMember()),
		Cluster:             ci,
		Addrs:               a.addrs(),
		Build: api.Build{Version: b.Version, Commit: b.Commit, GoVersion: b.GoVersion, OS: b.OS, Arch: b.Arch,
			ProtocolMin: b.ProtocolMin, ProtocolMax: b.ProtocolMax},
	}
}

// memberRow turns a member into its API form: the agent's own tags become
// fields, and Tags keeps only the user's.
func memberRow(m cluster.Member) api.Member {
	row := api.Member{
		Name: m.Name, Addr: m.Addr, Status: m.Status, Version: m.Version,
		ProtocolMin: m.Protocol.Min, ProtocolMax: m.Protocol.Max,
		Tags: map[string]string{},
	}
	for k, v := range m.Tags {
		if !peerdTag(k) {
			row.Tags[k] = v
		}
	}
	if h := m.Tags[TagHTTP]; h != "" {
		if strings.Contains(h, ":") {
			row.HTTPAddr = h
		} else if host, _, err := net.SplitHostPort(m.Addr); err == nil {
			row.HTTPAddr = net.JoinHostPort(host, h)
		}
	}
	return row
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(api.Error{Error: err.Error()})
}
