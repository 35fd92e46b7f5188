package daemon

import (
	"net/http"
	"strconv"

	"github.com/peerd/peerd/upgrade"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsHandler serves /metrics in the Prometheus format (docs/metrics.md
// lists the metrics). Each agent has a registry of its own rather than the
// global one: tests run many agents in one process.
func (a *Agent) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		agentCollector{a},
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

var (
	descMembers = prometheus.NewDesc("peerd_members",
		"Members this node knows of, by status (alive, leaving, left, failed) and peerd version.",
		[]string{"status", "version"}, nil)
	descBuildInfo = prometheus.NewDesc("peerd_build_info",
		"Always 1; the labels identify the running build and the wire-protocol range it speaks.",
		[]string{"version", "commit", "protocol_min", "protocol_max"}, nil)
	descProtocolActive = prometheus.NewDesc("peerd_protocol_active",
		"The cluster's active wire protocol as this node sees it: the lowest maximum protocol of the members still in the cluster.",
		nil, nil)
	descRolloutPhase = prometheus.NewDesc("peerd_rollout_phase",
		"1 for this node's phase in its current or last rollout, 0 for the other phases (all 0 when the node has never had a rollout).",
		[]string{"phase"}, nil)
	descRolloutWave = prometheus.NewDesc("peerd_rollout_wave",
		"This node's wave (from 1, as peerd upgrade status numbers them) in its current or last rollout; 0 when it has had none.",
		nil, nil)
	descRolloutPlan = prometheus.NewDesc("peerd_rollout_plan_info",
		"Always 1 while this node has a rollout plan (current or last); plan is the plan ID's short form, version its target.",
		[]string{"plan", "version"}, nil)
	descBytesServed = prometheus.NewDesc("peerd_artifact_bytes_served_total",
		"Artifact bytes this node served to peers since it started.",
		nil, nil)
	descLeaseGrants = prometheus.NewDesc("peerd_lease_grants_total",
		"Wave leases this node granted as a granter since it started (each grant once, however often its wave asks again).",
		nil, nil)
	descLeaseRequests = prometheus.NewDesc("peerd_lease_requests_total",
		"Lease requests this node answered since it started, by answer (granted, refused).",
		[]string{"result"}, nil)
	descUpgradeDuration = prometheus.NewDesc("peerd_upgrade_duration_seconds",
		"Time from taking the wave's lease to passing the health gate (outcome done) or failing (outcome failed), for this node's own upgrades that finished in this process.",
		[]string{"outcome"}, nil)
)

// agentCollector reads the agent's state at scrape time, so that nothing
// has to keep gauges in step with the cluster or the rollout engine.
type agentCollector struct{ a *Agent }

func (c agentCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMembers, descBuildInfo, descProtocolActive, descRolloutPhase,
		descRolloutWave, descRolloutPlan, descBytesServed, descLeaseGrants, descLeaseRequests, descUpgradeDuration} {
		ch <- d
	}
}

func (c agentCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	send := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		m, err := prometheus.NewConstMetric(d, t, v, labels...)
		if err != nil {
			m = prometheus.NewInvalidMetric(d, err)
		}
		ch <- m
	}

	b := a.opts.Build
	send(descBuildInfo, prometheus.GaugeValue, 1, b.Version, b.Commit, strconv.Itoa(b.ProtocolMin), strconv.Itoa(b.ProtocolMax))
	if a.cluster != nil {
		type key struct{ status, version string }
		counts := map[key]int{}
		for _, m := range a.cluster.Members() {
			counts[key{m.Status, m.Version}]++
		}
		for k, n := range counts {
			send(descMembers, prometheus.GaugeValue, float64(n), k.status, k.version)
		}
		send(descProtocolActive, prometheus.GaugeValue, float64(a.cluster.ProtocolRange().Max))
	}
	if a.engine == nil {
		return
	}

	st := a.engine.State()
	for _, ph := range upgrade.Phases() {
		v := 0.0
		if st.PlanID != "" && st.Phase == ph {
			v = 1
		}
		send(descRolloutPhase, prometheus.GaugeValue, v, string(ph))
	}
	wave := 0
	if st.PlanID != "" {
		wave = st.Wave + 1
		send(descRolloutPlan, prometheus.GaugeValue, 1, shortID(st.PlanID), st.ToVersion)
	}
	send(descRolloutWave, prometheus.GaugeValue, float64(wave))

	s := a.engine.Stats()
	send(descBytesServed, prometheus.CounterValue, float64(s.ArtifactBytesServed))
	send(descLeaseGrants, prometheus.CounterValue, float64(s.LeaseGrants))
	for _, result := range []string{"granted", "refused"} {
		send(descLeaseRequests, prometheus.CounterValue, float64(s.LeaseVotes[result]), result)
	}
	for _, outcome := range []string{upgrade.OutcomeDone, upgrade.OutcomeFailed} {
		d := s.Upgrades[outcome]
		buckets := make(map[float64]uint64, len(upgrade.UpgradeDurationBuckets))
		for _, ub := range upgrade.UpgradeDurationBuckets {
			buckets[ub] = d.Buckets[ub]
		}
		m, err := prometheus.NewConstHistogram(descUpgradeDuration, d.Count, d.Sum, buckets, outcome)
		if err != nil {
			m = prometheus.NewInvalidMetric(descUpgradeDuration, err)
		}
		ch <- m
	}
}

// shortID is a plan ID's short form, as logs and `peerd upgrade status` show it.
func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
