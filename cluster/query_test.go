package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/serf/serf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// answering is a Handler that answers every query with its node's name and
// counts the queries it was asked.
type answering struct {
	name  string
	mu    sync.Mutex
	asked []string // the payloads
}

func (a *answering) HandleMembers([]Member)             {}
func (a *answering) HandleEvent(string, uint64, []byte) {}
func (a *answering) HandleQuery(_ string, payload []byte) ([]byte, error) {
	a.mu.Lock()
	a.asked = append(a.asked, string(payload))
	a.mu.Unlock()
	return []byte(a.name), nil
}

func (a *answering) payloads() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.asked)
}

// TestQueryNamesMoreNodesThanAFilterHolds: Serf refuses a query over its
// size limit (1 KiB), node filter included, and a fleet of a hundred
// hosts with real names (ip-10-0-12-34.eu-west-1.compute.internal) does
// not fit in one: asking all of them for a lease failed every time. A
// query that names too many nodes goes to every member, and only the
// answers of the nodes named come back. One that fits still goes to the
// named nodes only.
func TestQueryNamesMoreNodesThanAFilterHolds(t *testing.T) {
	names := []string{"a", "b", "c"}
	nodes := make([]*Cluster, len(names))
	handlers := make([]*answering, len(names))
	for i, name := range names {
		c, err := New(TestConfig(name))
		require.NoError(t, err)
		handlers[i] = &answering{name: name}
		c.SetHandler(handlers[i]) // before Start, which hands it to the event loop
		require.NoError(t, c.Start(context.Background()))
		t.Cleanup(func() { c.Close() })
		nodes[i] = c
		if i > 0 {
			_, err := nodes[i].Join([]string{nodes[0].LocalAddr()})
			require.NoError(t, err)
		}
	}
	waitFor(t, 10*time.Second, func() error {
		if got := aliveNames(nodes[0]); len(got) != len(names) {
			return fmt.Errorf("a sees %v alive", got)
		}
		return nil
	})

	// b, and fifty hosts of a large fleet that are not up.
	many := []string{"b"}
	for i := range 50 {
		many = append(many, fmt.Sprintf("ip-10-0-%d-%d.eu-west-1.compute.internal", i/250, i%250))
	}
	require.Greater(t, len(strings.Join(many, "")), 1024, "the filter must not fit in Serf's query size limit")
	ctx := context.Background()
	got, err := nodes[0].Query(ctx, "q", []byte("many"), many, 5*time.Second, func(from string, _ []byte) bool { return from == "b" })
	require.NoError(t, err, "a query naming more nodes than a filter holds")
	assert.Equal(t, map[string][]byte{"b": []byte("b")}, got, "only the answers of the nodes asked")
	waitFor(t, 10*time.Second, func() error {
		if !slices.Contains(handlers[2].payloads(), "many") {
			return fmt.Errorf("c, not named, was not asked: the query did not go to everyone")
		}
		return nil
	})

	// A filter that fits is still a filter: c is not asked. (It hears the
	// query sent right after, to everyone, by then.)
	got, err = nodes[0].Query(ctx, "q", []byte("b only"), []string{"b"}, 5*time.Second, nil)
	require.NoError(t, err)
	assert.Equal(t, map[string][]byte{"b": []byte("b")}, got)
	got, err = nodes[0].Query(ctx, "q", []byte("all"), nil, 5*time.Second, func(from string, _ []byte) bool { return from == "c" })
	require.NoError(t, err)
	require.Contains(t, got, "c")
	assert.NotContains(t, handlers[2].payloads(), "b only", "c was asked a query that named b only")
}

// TestQuerySizeBoundsSerfs: the largest filter querySize lets through is
// one Serf sends, for short names and long.
func TestQuerySizeBoundsSerfs(t *testing.T) {
	c := startTestNode(t, TestConfig("a-rather-long-node-name-of-the-sender"))
	for _, width := range []int{1, 8, 40} {
		payload := []byte(strings.Repeat("p", 200))
		var nodes []string
		for {
			next := fmt.Sprintf("%0*d", width, len(nodes))
			if querySize(c.cfg.NodeName, "peerd-lease", payload, append(nodes, next)) > c.querySizeLimit {
				break
			}
			nodes = append(nodes, next)
		}
		require.NotEmpty(t, nodes)
		resp, err := c.serf.Query("peerd-lease", payload, &serf.QueryParam{FilterNodes: nodes, Timeout: time.Second})
		require.NoError(t, err, "%d names of %d characters", len(nodes), width)
		resp.Close()
	}
}
