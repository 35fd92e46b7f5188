package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/peerd/peerd/daemon/agenttest"
	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/plan"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// scrape is one parsed answer of a node's /metrics.
type scrape map[string]*dto.MetricFamily

func scrapeMetrics(t testing.TB, httpAddr string) (scrape, error) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// sample finds the one sample of family name whose labels include the
// given name/value pairs.
func (s scrape) sample(name string, labels ...string) (*dto.Metric, bool) {
	mf := s[name]
	if mf == nil {
		return nil, false
	}
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if v, ok := have[labels[i]]; !ok || v != labels[i+1] {
				match = false
			}
		}
		if match {
			return m, true
		}
	}
	return nil, false
}

// value is a gauge's or counter's value, or -1000 when there is no such sample.
func (s scrape) value(name string, labels ...string) float64 {
	m, ok := s.sample(name, labels...)
	switch {
	case !ok:
		return -1000
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	}
	return -1000
}

func TestMetricsReportMembersBuildAndNoRollout(t *testing.T) {
	nodes := agenttest.StartCluster(t, 3, v1)
	cfg := agenttest.Config(t, "new")
	cfg.Join = []string{nodes[0].Agent.Cluster().LocalAddr()}
	n, err := agenttest.Start(t, cfg, agenttest.Options(t, v2))
	require.NoError(t, err)
	nodes = append(nodes, n)
	agenttest.WaitAlive(t, nodes, 4)

	var s scrape
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var err error
		s, err = scrapeMetrics(t, nodes[0].Agent.HTTPAddr())
		if !assert.NoError(c, err) {
			return
		}
		assert.Equal(c, 3.0, s.value("peerd_members", "status", "alive", "version", "1.0.0"))
		assert.Equal(c, 1.0, s.value("peerd_members", "status", "alive", "version", "2.0.0"))
	}, 10*time.Second, 20*time.Millisecond)

	assert.Equal(t, 1.0, s.value("peerd_build_info", "version", "1.0.0", "commit", v1.Commit, "protocol_min", "1", "protocol_max", "1"))
	assert.Equal(t, 1.0, s.value("peerd_protocol_active"), "a 1.0.0 member keeps the cluster at protocol 1")
	assert.Equal(t, 0.0, s.value("peerd_rollout_wave"), "no rollout yet")
	assert.Nil(t, s["peerd_rollout_plan_info"], "no plan, no plan info")
	require.NotNil(t, s["peerd_rollout_phase"])
	assert.Len(t, s["peerd_rollout_phase"].GetMetric(), len(upgrade.Phases()), "one series per phase")
	for _, ph := range upgrade.Phases() {
		assert.Equal(t, 0.0, s.value("peerd_rollout_phase", "phase", string(ph)), "phase %s", ph)
	}
	assert.Equal(t, 0.0, s.value("peerd_artifact_bytes_served_total"))
	assert.Equal(t, 0.0, s.value("peerd_lease_grants_total"))
	assert.Equal(t, 0.0, s.value("peerd_lease_requests_total", "result", "granted"))
	assert.Equal(t, 0.0, s.value("peerd_lease_requests_total", "result", "refused"))
	for _, outcome := range []string{"done", "failed"} {
		m, ok := s.sample("peerd_upgrade_duration_seconds", "outcome", outcome)
		if assert.True(t, ok, "an empty histogram for %s", outcome) {
			assert.Zero(t, m.GetHistogram().GetSampleCount())
		}
	}
	for name, mf := range s {
		if len(name) > 6 && name[:6] == "peerd_" {
			assert.NotEmpty(t, mf.GetHelp(), "%s has help text", name)
		}
	}
	assert.Contains(t, s, "go_goroutines", "the Go collector")
	assert.Contains(t, s, "process_cpu_seconds_total", "the process collector")

	// Each agent has its own registry: the 2.0.0 node reports its own build.
	s4, err := scrapeMetrics(t, nodes[3].Agent.HTTPAddr())
	require.NoError(t, err)
	assert.Equal(t, 1.0, s4.value("peerd_build_info", "version", "2.0.0", "protocol_max", "2"))
	assert.Len(t, s4["peerd_build_info"].GetMetric(), 1)
}

type healthAnswer struct {
	Status string `json:"status"`
	Node   string `json:"node"`
	Reason string `json:"reason"`
}

func getHealth(t testing.TB, httpAddr string) (int, healthAnswer) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://" + httpAddr + "/v1/health")
	require.NoError(t, err)
	defer resp.Body.Close()
	var h healthAnswer
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&h))
	return resp.StatusCode, h
}

func TestHealthReportsWhyANodeDoesNotServe(t *testing.T) {
	nodes := agenttest.StartCluster(t, 3, v1)
	code, h := getHealth(t, nodes[0].Agent.HTTPAddr())
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, healthAnswer{Status: "ok", Node: "node1"}, h)

	// A node that leaves says so.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, nodes[2].Agent.Leave(ctx))
	code, h = getHealth(t, nodes[2].Agent.HTTPAddr())
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "unhealthy", h.Status)
	assert.Equal(t, "node3", h.Node)
	assert.Regexp(t, `this node (is leaving|has left) the cluster`, h.Reason)

	// node1 stays healthy while node3 has left (it no longer counts) and
	// node2 is alive; once node2 fails, node1 is isolated.
	require.Eventually(t, func() bool { return agenttest.StatusOf(nodes[0], "node3") == "left" }, 10*time.Second, 10*time.Millisecond)
	code, _ = getHealth(t, nodes[0].Agent.HTTPAddr())
	assert.Equal(t, http.StatusOK, code)
	require.NoError(t, nodes[1].Agent.Close())
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		code, h := getHealth(t, nodes[0].Agent.HTTPAddr())
		assert.Equal(c, http.StatusServiceUnavailable, code)
		assert.Contains(c, h.Reason, "isolated: none of the 1 other members")
	}, 10*time.Second, 20*time.Millisecond)
}

func TestMetricsAfterARollout(t *testing.T) {
	// Four waves of one: the third and fourth prepare after the first is
	// done, and fetch from a done node, whose counters survive the rollout
	// (a node's counters restart with its process).
	nodes := fleet(t, 4, v1, nil)
	res, err := trigger(t, nodes[1], agenttest.FakeBinary(t, t.TempDir(), v2), upgrade.TriggerRequest{
		Version: "2.0.0",
		Options: plan.Options{Batch: 1, MinHealthy: 100 * time.Millisecond, Deadline: 30 * time.Second},
	})
	require.NoError(t, err)
	require.Len(t, res.Waves, 4)
	waitState(t, nodes[0], upgrade.StateComplete)

	var served, grants, granted float64
	for _, sup := range nodes {
		name := sup.Node().Name
		wave := slices.IndexFunc(res.Waves, func(w plan.Wave) bool { return slices.Contains(w.Nodes, name) })
		require.GreaterOrEqual(t, wave, 0)
		var s scrape
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			var err error
			s, err = scrapeMetrics(t, sup.Node().Agent.HTTPAddr())
			if !assert.NoError(c, err) {
				return
			}
			assert.Equal(c, 1.0, s.value("peerd_build_info", "version", "2.0.0"), "%s runs the new build", name)
			assert.Equal(c, 4.0, s.value("peerd_members", "status", "alive", "version", "2.0.0"))
			assert.Equal(c, 2.0, s.value("peerd_protocol_active"))
			assert.Equal(c, 1.0, s.value("peerd_rollout_phase", "phase", string(upgrade.PhaseDone)))
		}, 20*time.Second, 20*time.Millisecond)

		for _, ph := range upgrade.Phases() {
			if ph != upgrade.PhaseDone {
				assert.Equal(t, 0.0, s.value("peerd_rollout_phase", "phase", string(ph)), "%s: phase %s", name, ph)
			}
		}
		assert.Equal(t, float64(wave+1), s.value("peerd_rollout_wave"), name, "waves count from 1")
		assert.Equal(t, 1.0, s.value("peerd_rollout_plan_info", "plan", res.PlanID[:8], "version", "2.0.0"), name)

		done, ok := s.sample("peerd_upgrade_duration_seconds", "outcome", "done")
		if assert.True(t, ok, name) {
			h := done.GetHistogram()
			assert.Equal(t, uint64(1), h.GetSampleCount(), "%s: one upgrade, observed by the new process", name)
			assert.GreaterOrEqual(t, h.GetSampleSum(), 0.1, "%s: lease to done includes the health gate's 100ms", name)
		}
		failed, ok := s.sample("peerd_upgrade_duration_seconds", "outcome", "failed")
		if assert.True(t, ok, name) {
			assert.Zero(t, failed.GetHistogram().GetSampleCount(), name)
		}

		assert.LessOrEqual(t, s.value("peerd_lease_grants_total"), 4.0, "%s: each wave's grant counted once, however often it was asked", name)
		served += s.value("peerd_artifact_bytes_served_total")
		grants += s.value("peerd_lease_grants_total")
		granted += s.value("peerd_lease_requests_total", "result", "granted")
	}
	assert.Positive(t, served, "a done node served the artifact to a later wave")
	assert.Positive(t, grants, "done nodes granted the later waves' leases")
	assert.GreaterOrEqual(t, granted, grants, "every grant was answered at least once")
}
