package cluster

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseProtocolRange(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    ProtocolRange
		wantErr string
	}{
		{in: "1-1", want: ProtocolRange{1, 1}},
		{in: "1-2", want: ProtocolRange{1, 2}},
		{in: "3-7", want: ProtocolRange{3, 7}},
		{in: "2", wantErr: "want MIN-MAX"},
		{in: "a-2", wantErr: "whole numbers"},
		{in: "2-1", wantErr: "1 <= min <= max"},
		{in: "0-1", wantErr: "1 <= min <= max"},
		{in: "", wantErr: "want MIN-MAX"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseProtocolRange(tc.in)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.in, got.String())
		})
	}
}

func TestClusterRange(t *testing.T) {
	_, ok := ClusterRange(nil)
	assert.False(t, ok)

	r, ok := ClusterRange([]ProtocolRange{{1, 1}, {1, 2}, {1, 2}})
	require.True(t, ok)
	assert.Equal(t, ProtocolRange{1, 1}, r, "active protocol is the minimum of the maxima")

	r, _ = ClusterRange([]ProtocolRange{{1, 2}, {2, 3}})
	assert.Equal(t, ProtocolRange{2, 2}, r)

	r, _ = ClusterRange([]ProtocolRange{{1, 2}, {1, 2}})
	assert.Equal(t, 2, r.Max, "a fully upgraded cluster switches protocol 2 on")
}

func TestCheckCompatible(t *testing.T) {
	v1, v2, v3 := ProtocolRange{1, 1}, ProtocolRange{1, 2}, ProtocolRange{3, 3}
	for _, tc := range []struct {
		name    string
		joiner  ProtocolRange
		cluster []ProtocolRange
		ok      bool
	}{
		{"empty cluster accepts anything", v3, nil, true},
		{"lone v1 node accepts v2", v2, []ProtocolRange{v1}, true},
		{"lone v2 node accepts v1: nothing switched on yet", v1, []ProtocolRange{v2}, true},
		{"lone v1 node refuses v3", v3, []ProtocolRange{v1}, false},
		{"v2 joins v1 cluster", v2, []ProtocolRange{v1, v1}, true},
		{"v1 joins mixed cluster", v1, []ProtocolRange{v1, v2}, true},
		{"v2 joins mixed cluster", v2, []ProtocolRange{v1, v2}, true},
		{"v3 refused by v1 cluster", v3, []ProtocolRange{v1, v1}, false},
		{"v3 refused by mixed cluster", v3, []ProtocolRange{v1, v2}, false},
		{"v3 refused by v2 cluster: active 2 not spoken", v3, []ProtocolRange{v2, v2}, false},
		{"v1 refused once the cluster switched to 2", v1, []ProtocolRange{v2, v2}, false},
		{"wide joiner accepted", ProtocolRange{1, 5}, []ProtocolRange{v2, {2, 4}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckCompatible("n1", tc.joiner, tc.cluster)
			if tc.ok {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.True(t, errors.Is(err, ErrIncompatibleProtocol))
			assert.Contains(t, err.Error(), tc.joiner.String(), "error names the joiner's range")
			cr, _ := ClusterRange(tc.cluster)
			assert.Contains(t, err.Error(), "range "+cr.String(), "error names the cluster's range")
		})
	}
}
