package daemon

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/peerd/peerd/daemon/api"
)

func TestCheckAppProtocol(t *testing.T) {
	v1 := api.App{Node: "n1", Name: "kv", Version: "1.0.0", Protocol: "1-1", NodeStatus: "alive"}
	v2 := api.App{Node: "n2", Name: "kv", Version: "2.0.0", Protocol: "1-2", NodeStatus: "alive"}
	unknown := api.App{Node: "n3", Name: "kv", Version: "0.9.0", NodeStatus: "alive"}
	for _, tc := range []struct {
		name      string
		protocol  string
		instances []api.App
		wantErr   []string
	}{
		{name: "overlaps every instance", protocol: "1-2", instances: []api.App{v1, v2, unknown}},
		{name: "release declares no range", protocol: "", instances: []api.App{v1}},
		{name: "instances declare none", protocol: "3-3", instances: []api.App{unknown}},
		{name: "no instances yet (install)", protocol: "3-3"},
		{name: "overlaps the new but not the old", protocol: "2-3", instances: []api.App{v1, v2},
			wantErr: []string{"kv 3.0.0 speaks kv protocol 2-3, which shares none with n1 (kv 1.0.0 speaks 1-1)",
				"first roll out a release that speaks both", "protocol_min/protocol_max in its peerd-app.json"}},
		{name: "a node that left does not count", protocol: "2-3",
			instances: []api.App{{Node: "n1", Version: "1.0.0", Protocol: "1-1", NodeStatus: "left"}, v2}},
		{name: "a failed node does (it may come back)", protocol: "2-3",
			instances: []api.App{{Node: "n1", Version: "1.0.0", Protocol: "1-1", NodeStatus: "failed"}, v2},
			wantErr:   []string{"n1 (kv 1.0.0 speaks 1-1)"}},
		{name: "names every node apart", protocol: "3-3", instances: []api.App{v1, v2},
			wantErr: []string{"n1 (kv 1.0.0 speaks 1-1), n2 (kv 2.0.0 speaks 1-2)"}},
		{name: "unreadable tag is no evidence", protocol: "2-2",
			instances: []api.App{{Node: "n1", Version: "1.0.0", Protocol: "one", NodeStatus: "alive"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkAppProtocol("kv", "3.0.0", tc.protocol, tc.instances)
			if len(tc.wantErr) == 0 {
				assert.NoError(t, err)
				return
			}
			for _, want := range tc.wantErr {
				assert.ErrorContains(t, err, want)
			}
		})
	}
}
