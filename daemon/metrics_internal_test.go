package daemon

import (
	"bufio"
	"math"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Label values come from peers' tags (a member's version): whatever they
// hold, the exposition stays parseable and carries them unchanged, as
// Prometheus' own parser reads it.
func TestPromWriterEscapesWhatPeersSend(t *testing.T) {
	var sb strings.Builder
	bw := bufio.NewWriter(&sb)
	p := &promWriter{w: bw}
	hostile := "1.0\"} 9\nevil_metric 1\\"
	p.family("peerd_members", "gauge", "Members, by \\ version\nand status.")
	p.sample("peerd_members", 3, "status", "alive", "version", hostile)
	p.family("peerd_odd", "gauge", "Values the format spells specially.")
	p.sample("peerd_odd", math.Inf(1), "v", "inf")
	p.sample("peerd_odd", math.NaN(), "v", "nan")
	p.sample("peerd_odd", 0.25, "v", "quarter")
	require.NoError(t, bw.Flush())

	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(sb.String()))
	require.NoError(t, err, sb.String())
	assert.NotContains(t, fams, "evil_metric", "a label value cannot start a sample of its own")
	require.Contains(t, fams, "peerd_members")
	m := fams["peerd_members"].GetMetric()
	require.Len(t, m, 1)
	assert.Equal(t, 3.0, m[0].GetGauge().GetValue())
	labels := map[string]string{}
	for _, l := range m[0].GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	assert.Equal(t, map[string]string{"status": "alive", "version": hostile}, labels)
	assert.Equal(t, "Members, by \\ version\nand status.", fams["peerd_members"].GetHelp())

	odd := fams["peerd_odd"].GetMetric()
	require.Len(t, odd, 3)
	assert.True(t, math.IsInf(odd[0].GetGauge().GetValue(), 1))
	assert.True(t, math.IsNaN(odd[1].GetGauge().GetValue()))
	assert.Equal(t, 0.25, odd[2].GetGauge().GetValue())
}
