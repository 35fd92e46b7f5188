package main

import (
	"bytes"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMonitorCommand: the lines the agent streams go to stdout as they
// are; a stream the agent ends is exit 1; a bad level is a usage error.
func TestMonitorCommand(t *testing.T) {
	agent := newFakeAgent(t, map[string]http.HandlerFunc{
		"GET /v1/monitor": func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "level=INFO msg=\"monitor: streaming this agent's log\" level_from=%s format=%s\n",
				r.URL.Query().Get("level"), r.URL.Query().Get("format"))
		},
	})
	var stdout, stderr bytes.Buffer
	code := run([]string{"peerd", "monitor", "--socket", agent.Socket, "--log-level", "DEBUG", "--json"}, &stdout, &stderr)
	assert.Equal(t, 1, code)
	assert.Equal(t, "level=INFO msg=\"monitor: streaming this agent's log\" level_from=debug format=json\n", stdout.String())
	assert.Contains(t, stderr.String(), "the agent ended the log stream")

	code, _ = runCLI(t, "monitor", "--socket", agent.Socket, "--log-level", "loud")
	require.Equal(t, 2, code)
}
