package daemon_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/peerd/peerd/daemon/agenttest"
	"github.com/peerd/peerd/daemon/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// monitorLines runs a monitor on node at level and returns its lines as
// they come; the monitor ends with the test.
func monitorLines(t *testing.T, node *agenttest.Node, level string, jsonLines bool) <-chan string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := api.NewClient(node.Agent.SocketPath()).Monitor(ctx, level, jsonLines, pw)
		pw.CloseWithError(err)
	}()
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		for range lines {
		}
	})
	return lines
}

// next returns the next line that contains want, failing the test after a
// deadline; it returns the lines before it too.
func next(t *testing.T, lines <-chan string, want string) (string, []string) {
	t.Helper()
	var before []string
	deadline := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			require.True(t, ok, "the stream ended before a line with %q; lines: %q", want, before)
			if strings.Contains(l, want) {
				return l, before
			}
			before = append(before, l)
		case <-deadline:
			t.Fatalf("no line with %q within 10s; lines: %q", want, before)
		}
	}
}

// TestMonitor: peerd monitor streams the agent's log from its start line
// on, filtered by its own level whatever the agent's, as text or JSON lines.
func TestMonitor(t *testing.T) {
	nodes := agenttest.StartCluster(t, 2, v1)
	ctx := context.Background()
	c := api.NewClient(nodes[0].Agent.SocketPath())

	warn := monitorLines(t, nodes[0], "warn", false)
	info := monitorLines(t, nodes[0], "info", true)
	next(t, warn, "monitor: streaming this agent's log")
	next(t, info, "monitor: streaming this agent's log")

	// An info line, then a warning.
	_, err := c.Join(ctx, []string{nodes[1].Agent.Cluster().LocalAddr()})
	require.NoError(t, err)
	_, err = c.Forget(ctx, "node2")
	require.NoError(t, err)

	line, before := next(t, warn, "identity key forgotten")
	assert.Contains(t, line, "level=WARN")
	assert.Contains(t, line, "member=node2")
	assert.Contains(t, line, "component=agent", "the logger's own attributes are kept")
	for _, l := range before {
		assert.NotContains(t, l, "joined cluster on request", "an info line in a warn monitor")
	}

	line, _ = next(t, info, "joined cluster on request")
	var rec map[string]any
	require.NoError(t, json.Unmarshal([]byte(line), &rec), "a JSON line: %s", line)
	assert.Equal(t, "INFO", rec["level"])
	assert.Equal(t, "agent", rec["component"])
	assert.Contains(t, rec, "time")

	err = c.Monitor(ctx, "loud", false, io.Discard)
	assert.ErrorContains(t, err, `log level "loud": want debug, info, warn or error`)
}

// TestMonitorEndsWhenTheAgentStops: the stream ends with the agent, and
// the client says so.
func TestMonitorEndsWhenTheAgentStops(t *testing.T) {
	n, err := agenttest.Start(t, agenttest.Config(t, "a"), agenttest.Options(t, v1))
	require.NoError(t, err)
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := api.NewClient(n.Agent.SocketPath()).Monitor(context.Background(), "debug", false, pw)
		pw.Close()
		errc <- err
	}()
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			select {
			case first <- sc.Text():
			default:
			}
		}
	}()
	select {
	case l := <-first:
		require.Contains(t, l, "monitor: streaming this agent's log")
	case <-time.After(10 * time.Second):
		t.Fatal("no first line")
	}
	require.NoError(t, n.Agent.Close())
	select {
	case err := <-errc:
		assert.ErrorContains(t, err, "the agent ended the log stream")
	case <-time.After(10 * time.Second):
		t.Fatal("the monitor did not end with the agent")
	}
}
