package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/peerd/peerd/daemon/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestJoinAndForceLeave: what the commands send the agent and print; a
// malformed address is a usage error before the agent is asked.
func TestJoinAndForceLeave(t *testing.T) {
	agent := newFakeAgent(t, map[string]http.HandlerFunc{
		"POST /v1/join":        answer(api.JoinResult{Contacted: 1}),
		"POST /v1/force-leave": answer(api.ForceLeaveResult{Node: "n3", Status: "left"}),
	})
	var stdout, stderr bytes.Buffer
	code := run([]string{"peerd", "join", "--socket", agent.Socket, "10.0.0.1", "10.0.0.2:8946"}, &stdout, &stderr)
	require.Equal(t, 0, code, stderr.String())
	assert.Equal(t, "joined: 1 of 2 addresses answered\n", stdout.String())
	calls := agent.Calls()
	require.Len(t, calls, 1)
	var req api.JoinRequest
	require.NoError(t, json.Unmarshal(calls[0].Body, &req))
	assert.Equal(t, []string{"10.0.0.1", "10.0.0.2:8946"}, req.Addrs)

	stdout.Reset()
	code = run([]string{"peerd", "force-leave", "--socket", agent.Socket, "--json", "n3"}, &stdout, &stderr)
	require.Equal(t, 0, code, stderr.String())
	assert.JSONEq(t, `{"node": "n3", "status": "left"}`, stdout.String())

	for _, args := range [][]string{
		{"join"},
		{"join", "a:b:c"},
		{"join", "10.0.0.1:99999"},
		{"force-leave"},
		{"force-leave", "n1", "n2"},
	} {
		stderr.Reset()
		code := run(append([]string{"peerd", args[0], "--socket", agent.Socket}, args[1:]...), &stdout, &stderr)
		assert.Equal(t, 2, code, "%v: %s", args, stderr.String())
	}
	assert.Len(t, agent.Calls(), 2, "a usage error asks the agent nothing")

	// The agent's refusal is a runtime error: exit 1, its message on one line.
	refusing := newFakeAgent(t, map[string]http.HandlerFunc{
		"POST /v1/force-leave": fail(http.StatusConflict, "member n1 is alive: only a failed member can be forced to leave"),
	})
	stderr.Reset()
	code = run([]string{"peerd", "force-leave", "--socket", refusing.Socket, "n1"}, &stdout, &stderr)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr.String(), "member n1 is alive")
}

// TestForget: what peerd forget prints, whether or not a key was pinned.
func TestForget(t *testing.T) {
	agent := newFakeAgent(t, map[string]http.HandlerFunc{
		"POST /v1/forget/n3": answer(api.ForgetResult{Node: "n3", Forgotten: true, Key: "ed25519:0123456789abcdef"}),
		"POST /v1/forget/n9": answer(api.ForgetResult{Node: "n9"}),
	})
	code, out := runCLI(t, "forget", "--socket", agent.Socket, "n3")
	require.Equal(t, 0, code)
	assert.Equal(t, "forgot the identity key of n3 (ed25519:0123…): its next one will be pinned on sight\n", out)
	code, out = runCLI(t, "forget", "--socket", agent.Socket, "n9")
	require.Equal(t, 0, code)
	assert.Contains(t, out, `no identity key was pinned for "n9": nothing to forget`)
	code, out = runCLI(t, "forget", "--socket", agent.Socket, "--json", "n3")
	require.Equal(t, 0, code)
	assert.JSONEq(t, `{"node": "n3", "forgotten": true, "key": "ed25519:0123456789abcdef"}`, out)
	code, _ = runCLI(t, "forget", "--socket", agent.Socket)
	assert.Equal(t, 2, code)
}
