package daemon

import (
	"bufio"
	"cmp"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"

	vm "github.com/VictoriaMetrics/metrics"
	"github.com/peerd/peerd/upgrade"
)

// metricsHandler serves /metrics in the Prometheus text exposition format
// (docs/metrics.md lists the metrics). Every peerd metric is read from the
// agent's state at scrape time, so nothing has to keep gauges in step with
// the cluster or the rollout engine, and no registry is shared between the
// many agents a test runs in one process. The Go runtime's and the
// process's standard metrics come from VictoriaMetrics/metrics, which
// writes the text format without prometheus/client_golang's protobuf
// stack: that stack made the binary, which every upgrade moves, 2.5 MB
// (13 %) larger and an idle agent's RSS 2 MiB larger.
func (a *Agent) metricsHandler() http.Handler {
	// TYPE lines for the go_* and process_* metrics, as client_golang
	// wrote them; a process-wide setting, the same for every agent in it.
	vm.ExposeMetadata(true)
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		bw := bufio.NewWriter(w)
		a.writeMetrics(&promWriter{w: bw})
		vm.WriteProcessMetrics(bw)
		_ = bw.Flush()
	})
}

func (a *Agent) writeMetrics(p *promWriter) {
	b := a.opts.Build
	p.family("peerd_build_info", "gauge", "Always 1; the labels identify the running build and the wire-protocol range it speaks.")
	p.sample("peerd_build_info", 1, "version", b.Version, "commit", b.Commit,
		"protocol_min", strconv.Itoa(b.ProtocolMin), "protocol_max", strconv.Itoa(b.ProtocolMax))
	if a.cluster != nil {
		type key struct{ status, version string }
		counts := map[key]int{}
		for _, m := range a.cluster.Members() {
			counts[key{m.Status, m.Version}]++
		}
		order := slices.SortedFunc(maps.Keys(counts), func(x, y key) int {
			return cmp.Or(cmp.Compare(x.status, y.status), cmp.Compare(x.version, y.version))
		})
		p.family("peerd_members", "gauge", "Members this node knows of, by status (alive, leaving, left, failed) and peerd version.")
		for _, k := range order {
			p.sample("peerd_members", float64(counts[k]), "status", k.status, "version", k.version)
		}
		p.family("peerd_protocol_active", "gauge", "The cluster's active wire protocol as this node sees it: the lowest maximum protocol of the members still in the cluster.")
		p.sample("peerd_protocol_active", float64(a.cluster.ProtocolRange().Max))
	}
	if a.engine == nil {
		return
	}

	st := a.engine.State()
	p.family("peerd_rollout_phase", "gauge", "1 for this node's phase in its current or last rollout, 0 for the other phases (all 0 when the node has never had a rollout).")
	for _, ph := range upgrade.Phases() {
		v := 0.0
		if st.PlanID != "" && st.Phase == ph {
			v = 1
		}
		p.sample("peerd_rollout_phase", v, "phase", string(ph))
	}
	wave := 0
	if st.PlanID != "" {
		wave = st.Wave + 1
		p.family("peerd_rollout_plan_info", "gauge", "Always 1 while this node has a rollout plan (current or last); plan is the plan ID's short form, version its target.")
		p.sample("peerd_rollout_plan_info", 1, "plan", shortID(st.PlanID), "version", st.ToVersion)
	}
	p.family("peerd_rollout_wave", "gauge", "This node's wave (from 1, as peerd upgrade status numbers them) in its current or last rollout; 0 when it has had none.")
	p.sample("peerd_rollout_wave", float64(wave))

	s := a.engine.Stats()
	p.family("peerd_artifact_bytes_served_total", "counter", "Artifact bytes this node served to peers since it started.")
	p.sample("peerd_artifact_bytes_served_total", float64(s.ArtifactBytesServed))
	p.family("peerd_lease_grants_total", "counter", "Wave leases this node granted as a granter since it started (each grant once, however often its wave asks again).")
	p.sample("peerd_lease_grants_total", float64(s.LeaseGrants))
	p.family("peerd_lease_requests_total", "counter", "Lease requests this node answered since it started, by answer (granted, refused).")
	for _, result := range []string{"granted", "refused"} {
		p.sample("peerd_lease_requests_total", float64(s.LeaseVotes[result]), "result", result)
	}
	p.family("peerd_upgrade_duration_seconds", "histogram", "Time from taking the wave's lease to passing the health gate (outcome done) or failing (outcome failed), for this node's own upgrades that finished in this process.")
	for _, outcome := range []string{upgrade.OutcomeDone, upgrade.OutcomeFailed} {
		d := s.Upgrades[outcome]
		for _, ub := range upgrade.UpgradeDurationBuckets {
			p.sample("peerd_upgrade_duration_seconds_bucket", float64(d.Buckets[ub]), "outcome", outcome, "le", formatFloat(ub))
		}
		p.sample("peerd_upgrade_duration_seconds_bucket", float64(d.Count), "outcome", outcome, "le", "+Inf")
		p.sample("peerd_upgrade_duration_seconds_sum", d.Sum, "outcome", outcome)
		p.sample("peerd_upgrade_duration_seconds_count", float64(d.Count), "outcome", outcome)
	}
}

// promWriter writes the Prometheus text exposition format (version 0.0.4):
// a family's HELP and TYPE lines, then its samples. Write errors are left
// to the buffered writer under it: a scrape that went away has no reader.
type promWriter struct{ w *bufio.Writer }

var helpEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
var labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)

func (p *promWriter) family(name, typ, help string) {
	p.w.WriteString("# HELP " + name + " " + helpEscaper.Replace(help) + "\n# TYPE " + name + " " + typ + "\n")
}

// sample writes one sample; labels are name, value pairs.
func (p *promWriter) sample(name string, v float64, labels ...string) {
	p.w.WriteString(name)
	for i := 0; i+1 < len(labels); i += 2 {
		sep := ","
		if i == 0 {
			sep = "{"
		}
		p.w.WriteString(sep + labels[i] + `="` + labelEscaper.Replace(labels[i+1]) + `"`)
	}
	if len(labels) > 1 {
		p.w.WriteByte('}')
	}
	p.w.WriteString(" " + formatFloat(v) + "\n")
}

// formatFloat formats a value as the text format spells it.
func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// shortID is a plan ID's short form, as logs and `peerd upgrade status` show it.
func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
