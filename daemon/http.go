package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/daemon/api"
)

// controlHandler serves the local control API. Only the socket's owner can
// reach it, so it may change the agent's state.
func (a *Agent) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/members", a.handleMembers)
	mux.HandleFunc("GET /v1/info", a.handleInfo)
	mux.HandleFunc("POST /v1/leave", a.handleLeave)
	return mux
}

// peerHandler serves the peer HTTP API other nodes and health checks call.
// It must only ever read: anyone on the network can reach it.
func (a *Agent) peerHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", a.handleHealth)
	mux.HandleFunc("GET /v1/info", a.handleInfo)
	return mux
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

func (a *Agent) handleInfo(w http.ResponseWriter, _ *http.Request) { writeJSON(w, a.info()) }

func (a *Agent) handleHealth(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, api.Health{Status: "ok", Node: a.cfg.Node, Version: a.opts.Build.Version})
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
	return api.Info{
		Node:    memberRow(a.cluster.LocalMember()),
		Cluster: ci,
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
		if !slices.Contains(reservedTags, k) {
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
