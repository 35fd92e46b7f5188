package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
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

var testPlanID = strings.Repeat("ab", 32)

// rolloutAgent is a fake agent that accepts a trigger and reports the
// rollout running twice, then in state final.
func rolloutAgent(t *testing.T, final string) *fakeAgent {
	var polls atomic.Int32
	res := upgrade.TriggerResult{
		PlanID: testPlanID,
		Plan: plan.Plan{Target: "peerd", Version: "2.0.0", Members: []plan.Member{{Name: "a"}, {Name: "b"}},
			Options: plan.Options{Batch: 1, MinHealthy: 10 * time.Second, Deadline: 5 * time.Minute}},
		Waves:  []plan.Wave{{Index: 0, Nodes: []string{"a"}}, {Index: 1, Nodes: []string{"b"}}},
		Checks: []string{"sha256 ..."},
	}
	status := func(state string, done int) upgrade.Status {
		return upgrade.Status{PlanID: testPlanID, Target: "peerd", Version: "2.0.0", State: state, Done: done, Total: 2,
			Waves: []upgrade.WaveStatus{
				{Index: 0, Nodes: []upgrade.NodeStatus{{Name: "a", Phase: upgrade.PhaseDone, Version: "2.0.0", Member: "alive"}}},
				{Index: 1, Nodes: []upgrade.NodeStatus{{Name: "b", Phase: upgrade.PhaseApply, Version: "1.0.0", Member: "alive"}}},
			}}
	}
	return newFakeAgent(t, map[string]http.HandlerFunc{
		"POST /v1/rollout/artifacts": answer(api.Upload{SHA256: strings.Repeat("0", 64), Size: 3}),
		"POST /v1/rollout/trigger":   answer(res),
		"GET /v1/rollout/status": func(w http.ResponseWriter, r *http.Request) {
			if polls.Add(1) < 3 {
				answer(status(upgrade.StateRunning, 1))(w, r)
				return
			}
			answer(status(final, 2))(w, r)
		},
	})
}

func artifactFile(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "peerd-2.0.0")
	require.NoError(t, os.WriteFile(path, []byte("new"), 0o755))
	return path
}

// TestUpgradeJSONIsOneDocument: with --json, stdout is one JSON document
// whatever the rollout does on the way: no plan text, no progress lines.
func TestUpgradeJSONIsOneDocument(t *testing.T) {
	for _, tc := range []struct {
		final string
		code  int
	}{
		{upgrade.StateComplete, 0},
		{upgrade.StateHalted, 1},
	} {
		t.Run(tc.final, func(t *testing.T) {
			agent := rolloutAgent(t, tc.final)
			var stdout, stderr bytes.Buffer
			code := run([]string{"peerd", "upgrade", "--socket", agent.Socket, "--json", "--to", "2.0.0", "--artifact", artifactFile(t)}, &stdout, &stderr)
			assert.Equal(t, tc.code, code, stderr.String())

			dec := json.NewDecoder(&stdout)
			var doc map[string]any
			require.NoError(t, dec.Decode(&doc), "stdout: %s", stdout.String())
			var more any
			assert.ErrorIs(t, dec.Decode(&more), io.EOF, "nothing after the document")
			assert.Equal(t, testPlanID, doc["plan_id"])
			st, ok := doc["status"].(map[string]any)
			require.True(t, ok, "the final status is in the document: %v", doc)
			assert.Equal(t, tc.final, st["state"])
		})
	}
}

// TestUpgradeRefusesMeaninglessOptions: values that cannot work are
// refused at trigger time, as usage errors naming the flag and what to
// do, before anything is uploaded.
func TestUpgradeRefusesMeaninglessOptions(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--deadline", "1s", "--min-healthy", "10s"}, []string{"--deadline 1s leaves no time for --min-healthy 10s", "give --deadline at least 11s"}},
		{[]string{"--deadline", "10s", "--min-healthy", "10s"}, []string{"--deadline 10s leaves no time"}},
		{[]string{"--batch", "0"}, []string{"--batch 0: a wave needs at least one node", "give --batch 1 or more"}},
		{[]string{"--batch", "-2"}, []string{"--batch -2"}},
		{[]string{"--canary", "-1"}, []string{"--canary -1"}},
		{[]string{"--min-healthy", "-1s"}, []string{"--min-healthy -1s"}},
		{[]string{"--deadline", "0s"}, []string{"--deadline 0s: want a positive duration"}},
		{[]string{"--max-unavailable", "0"}, []string{`--max-unavailable "0"`}},
		{[]string{"--max-unavailable", "150%"}, []string{`--max-unavailable "150%"`}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			agent := rolloutAgent(t, upgrade.StateComplete)
			var stderr bytes.Buffer
			args := append([]string{"peerd", "upgrade", "--socket", agent.Socket, "--to", "2.0.0", "--artifact", artifactFile(t)}, tc.args...)
			code := run(args, io.Discard, &stderr)
			assert.Equal(t, 2, code, stderr.String())
			for _, w := range tc.want {
				assert.Contains(t, stderr.String(), w)
			}
			assert.Empty(t, agent.Calls(), "refused before talking to the agent")
		})
	}
}

func TestUpgradePlanFlag(t *testing.T) {
	agent := rolloutAgent(t, upgrade.StateComplete)
	var stderr bytes.Buffer
	code := run([]string{"peerd", "upgrade", "--socket", agent.Socket, "--plan", testPlanID, "--batch", "2"}, io.Discard, &stderr)
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr.String(), "--plan runs the previewed plan as it was shown: leave out --batch")

	var stdout bytes.Buffer
	code = run([]string{"peerd", "upgrade", "--socket", agent.Socket, "--plan", testPlanID[:8]}, &stdout, &stderr)
	require.Equal(t, 0, code, stderr.String())
	var req upgrade.TriggerRequest
	for _, call := range agent.Calls() {
		if call.Path == "/v1/rollout/trigger" {
			require.NoError(t, json.Unmarshal(call.Body, &req))
		}
	}
	assert.Equal(t, testPlanID[:8], req.PlanID, "the agent is asked for the previewed plan, nothing else")
	assert.Empty(t, req.Version)

	// A dry run says how to run what it showed.
	code, out := runCLI(t, "upgrade", "--socket", agent.Socket, "--to", "2.0.0", "--artifact", artifactFile(t), "--dry-run")
	require.Equal(t, 0, code)
	assert.Contains(t, out, "peerd upgrade --plan "+testPlanID)
}

// TestUpgradeSignatureURL: --signature takes a URL, as --artifact does
// (the Nomad docs give both as release URLs).
func TestUpgradeSignatureURL(t *testing.T) {
	const sig = "untrusted comment: signature from minisign secret key\nRUQ...\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/peerd.minisig" {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, sig)
	}))
	defer srv.Close()
	agent := rolloutAgent(t, upgrade.StateComplete)
	code, _ := runCLI(t, "upgrade", "--socket", agent.Socket, "--detach", "--to", "2.0.0",
		"--artifact", artifactFile(t), "--signature", srv.URL+"/peerd.minisig")
	require.Equal(t, 0, code)
	var req upgrade.TriggerRequest
	for _, call := range agent.Calls() {
		if call.Path == "/v1/rollout/trigger" {
			require.NoError(t, json.Unmarshal(call.Body, &req))
		}
	}
	assert.Equal(t, sig, req.Signature)

	var stderr bytes.Buffer
	code = run([]string{"peerd", "upgrade", "--socket", agent.Socket, "--detach", "--to", "2.0.0",
		"--artifact", artifactFile(t), "--signature", srv.URL + "/missing"}, io.Discard, &stderr)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr.String(), "404 Not Found")
}
