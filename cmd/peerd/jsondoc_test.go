package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/peerd/peerd/daemon/api"
	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// freeForm are JSON objects whose keys are data (tag names, statuses),
// not part of the shape.
var freeForm = []string{"[].tags", "node.tags", "cluster.by_status", "plan.options.where", "keys", "primary", "failed"}

// keyPaths lists the key paths of a JSON document: "a", "a.b", "a[].c".
func keyPaths(t *testing.T, doc []byte) []string {
	var v any
	require.NoError(t, json.Unmarshal(doc, &v), "%s", doc)
	seen := map[string]bool{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if slices.Contains(freeForm, prefix) {
				return
			}
			for k, e := range v {
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				seen[p] = true
				walk(p, e)
			}
		case []any:
			for _, e := range v {
				walk(prefix+"[]", e)
			}
		}
	}
	walk("", v)
	var out []string
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// documented reads docs/json.md: each "### `peerd ... --json`" heading and
// the JSON block under it.
func documented(t *testing.T) map[string][]byte {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "json.md"))
	require.NoError(t, err)
	re := regexp.MustCompile("(?s)### `(peerd [^`]+)`\n.*?```json\n(.*?)```")
	out := map[string][]byte{}
	for _, m := range re.FindAllSubmatch(b, -1) {
		out[string(m[1])] = m[2]
	}
	return out
}

// TestJSONShapesAreDocumented: every --json output has its shape in
// docs/json.md, key for key: the documented example and the real output
// (with every optional field set) have the same key paths.
func TestJSONShapesAreDocumented(t *testing.T) {
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	res := upgrade.TriggerResult{
		PlanID: testPlanID, DryRun: true, Checks: []string{"sha256 ..."},
		Plan: plan.Plan{Target: "peerd", Version: "2.0.0", Rollback: true, Origin: "a", Created: created,
			Artifact: plan.Artifact{SHA256: strings.Repeat("0", 64), Size: 3, URL: "https://example.com/peerd", Signature: "untrusted comment: ..."},
			Patch:    &plan.Patch{FromVersion: "1.0.0", Artifact: plan.Artifact{SHA256: strings.Repeat("1", 64), Size: 1, URL: "https://example.com/p", Signature: "..."}},
			Members:  []plan.Member{{Name: "a", Version: "1.0.0", Tag: "a", Key: "k"}},
			Options: plan.Options{MaxUnavailable: "10%", Canary: 1, ByTag: "zone", MinHealthy: 10 * time.Second, Deadline: 5 * time.Minute,
				AllowOutage: true, Where: map[string]string{"zone": "a"}}},
		Waves: []plan.Wave{{Index: 0, Nodes: []string{"a"}, Canary: true, Tag: "zone=a"}},
	}
	node := upgrade.NodeStatus{Name: "a", Phase: upgrade.PhaseFailed, Version: "1.0.0", Member: "alive", Reason: "health check failed"}
	status := upgrade.Status{PlanID: testPlanID, Target: "peerd", Version: "2.0.0", Rollback: true, State: upgrade.StateHalted,
		Done: 0, Total: 1, Failed: []upgrade.NodeStatus{node}, Hint: "fix, then peerd upgrade resume", SafeMode: "safe mode: ...",
		Waves: []upgrade.WaveStatus{{Index: 0, Canary: true, Late: true, Tag: "zone=a", Nodes: []upgrade.NodeStatus{node}}}}
	member := api.Member{Name: "a", Addr: "10.0.0.1:7946", Status: "alive", Version: "1.0.0", ProtocolMin: 1, ProtocolMax: 2,
		HTTPAddr: "10.0.0.1:7947", Tags: map[string]string{"zone": "a"}}
	var running atomic.Bool
	agent := newFakeAgent(t, map[string]http.HandlerFunc{
		"GET /v1/members": answer([]api.Member{member}),
		"GET /v1/apps": answer([]api.App{{Node: "a", NodeStatus: "alive", Name: "kv", Version: "1.0.0", State: "running",
			Address: "10.0.0.1:8080", Protocol: "1-2", Reason: "..."}}),
		"GET /v1/info": answer(api.Info{Node: member, Cluster: api.ClusterInfo{Size: 1, ByStatus: map[string]int{"alive": 1}, ActiveProtocol: 2, ProtocolMin: 1},
			Build:               api.Build{Version: "1.0.0", Commit: "abc", GoVersion: "go1.26", OS: "linux", Arch: "amd64", ProtocolMin: 1, ProtocolMax: 2},
			Addrs:               api.Addrs{PID: 1, Gossip: "0.0.0.0:7946", GossipAdvertise: "10.0.0.1:7946", HTTP: "0.0.0.0:7947", Socket: "/var/lib/peerd/peerd.sock"},
			ArtifactBytesServed: 1}),
		"POST /v1/leave":       answer(struct{}{}),
		"POST /v1/join":        answer(api.JoinResult{Contacted: 1}),
		"POST /v1/force-leave": answer(api.ForceLeaveResult{Node: "a", Status: "left"}),
		"POST /v1/forget/a":    answer(api.ForgetResult{Node: "a", Forgotten: true, Key: "k"}),
		"GET /v1/keyring": answer(api.Keyring{Nodes: 3, Responses: 3, Errors: 1, Failed: map[string]string{"n3": "no"},
			Keys: map[string]int{"K1": 3}, Primary: map[string]int{"K1": 3}, Error: "keyring list: 1 failed"}),
		"POST /v1/rollout/artifacts": answer(api.Upload{SHA256: strings.Repeat("0", 64), Size: 3}),
		"POST /v1/rollout/trigger": func(w http.ResponseWriter, r *http.Request) {
			var req upgrade.TriggerRequest
			_ = json.NewDecoder(r.Body).Decode(&req)
			r2 := res
			r2.DryRun = req.DryRun
			running.Store(!req.DryRun)
			answer(r2)(w, r)
		},
		"GET /v1/rollout/status":            answer(status),
		"POST /v1/rollout/control/{action}": answer(map[string]string{"plan_id": testPlanID}),
	})
	dir := t.TempDir()
	art := filepath.Join(dir, "peerd-2.0.0")
	require.NoError(t, os.WriteFile(art, []byte("new"), 0o755))
	cfg := filepath.Join(dir, "peerd.hcl")
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf("data_dir = %q\n", dir)), 0o644))
	sock := []string{"--socket", agent.Socket, "--json"}
	up := []string{"--to", "2.0.0", "--artifact", art}
	runs := map[string][]string{
		"peerd version --json":           {"version", "--json"},
		"peerd keygen --json":            {"keygen", "--json"},
		"peerd validate --json":          {"validate", "--json", cfg},
		"peerd members --json":           append([]string{"members"}, sock...),
		"peerd apps --json":              append([]string{"apps"}, sock...),
		"peerd info --json":              append([]string{"info"}, sock...),
		"peerd leave --json":             append([]string{"leave"}, sock...),
		"peerd join --json":              append(append([]string{"join"}, sock...), "10.0.0.1"),
		"peerd force-leave --json":       append(append([]string{"force-leave"}, sock...), "a"),
		"peerd forget --json":            append(append([]string{"forget"}, sock...), "a"),
		"peerd keyring --json":           append([]string{"keyring"}, sock...),
		"peerd upgrade --dry-run --json": append(append([]string{"upgrade", "--dry-run"}, sock...), up...),
		"peerd upgrade --json":           append(append([]string{"upgrade"}, sock...), up...),
		"peerd upgrade status --json":    append([]string{"upgrade", "status"}, sock...),
		"peerd upgrade pause --json":     append([]string{"upgrade", "pause"}, sock...),
	}
	docs := documented(t)
	for name, args := range runs {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"peerd"}, args...), &stdout, &stderr)
			require.Contains(t, []int{0, 1}, code, stderr.String())
			example, ok := docs[name]
			if !assert.True(t, ok, "docs/json.md has no section \"### `%s`\"; the output is:\n%s", name, stdout.String()) {
				return
			}
			assert.Equal(t, keyPaths(t, example), keyPaths(t, stdout.Bytes()), "docs/json.md's example of %s, and the real output:\n%s", name, stdout.String())
		})
	}
	for name := range docs {
		_, tested := runs[name]
		assert.True(t, tested || name == "peerd monitor --json", "docs/json.md documents %s, which no test runs", name)
	}
}

// TestStatusTextAndJSONAgree: the table and the JSON number waves alike,
// from 1, and name phases alike.
func TestStatusTextAndJSONAgree(t *testing.T) {
	st := upgrade.Status{PlanID: testPlanID, Target: "peerd", Version: "2.0.0", State: upgrade.StateRunning, Done: 1, Total: 2,
		Waves: []upgrade.WaveStatus{
			{Index: 0, Nodes: []upgrade.NodeStatus{{Name: "a", Phase: upgrade.PhaseDone, Version: "2.0.0", Member: "alive"}}},
			{Index: 1, Nodes: []upgrade.NodeStatus{{Name: "b", Phase: upgrade.PhaseReady, Version: "1.0.0", Member: "alive"}}},
		}}
	agent := newFakeAgent(t, map[string]http.HandlerFunc{"GET /v1/rollout/status": answer(st)})
	code, text := runCLI(t, "upgrade", "status", "--socket", agent.Socket)
	require.Equal(t, 0, code)
	assert.Regexp(t, `(?m)^1\s+a\s+done\s+2\.0\.0`, text)
	assert.Regexp(t, `(?m)^2\s+b\s+ready\s+1\.0\.0`, text)

	code, out := runCLI(t, "upgrade", "status", "--socket", agent.Socket, "--json")
	require.Equal(t, 0, code)
	var doc rolloutState
	require.NoError(t, json.Unmarshal([]byte(out), &doc))
	require.Len(t, doc.Waves, 2)
	assert.Equal(t, 1, doc.Waves[0].Wave)
	assert.Equal(t, "done", doc.Waves[0].Nodes[0].Phase)
	assert.Equal(t, 2, doc.Waves[1].Wave)
	assert.Equal(t, "ready", doc.Waves[1].Nodes[0].Phase)
}
