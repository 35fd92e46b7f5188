package daemon_test

import (
	"testing"

	"github.com/peerd/peerd/daemon"
	"github.com/peerd/peerd/daemon/agenttest"
	"github.com/stretchr/testify/assert"
)

func TestApplyNomadEnv(t *testing.T) {
	// What a task of contrib/nomad/peerd.nomad.hcl sees, host networking.
	nomad := map[string]string{
		"NOMAD_ALLOC_ID":  "5b3d7f7e-1c2a-4f7e-9a0b-2f6c1d0e9a11",
		"NOMAD_NODE_NAME": "client-1",
		"NOMAD_IP_serf":   "10.0.0.5",
		"NOMAD_PORT_serf": "7946",
		"NOMAD_ADDR_serf": "10.0.0.5:7946",
		"NOMAD_IP_http":   "10.0.0.5",
		"NOMAD_PORT_http": "7947",
		"NOMAD_ADDR_http": "10.0.0.5:7947",
	}
	with := func(changes map[string]string) map[string]string {
		env := map[string]string{}
		for k, v := range nomad {
			env[k] = v
		}
		for k, v := range changes {
			if v == "" {
				delete(env, k)
			} else {
				env[k] = v
			}
		}
		return env
	}
	defaults := daemon.Config{Node: "hostname", Bind: "0.0.0.0:7946"}
	for _, tc := range []struct {
		name string
		env  map[string]string
		want daemon.Config
	}{
		{
			name: "not under nomad: nothing changes",
			env:  with(map[string]string{"NOMAD_ALLOC_ID": ""}),
			want: defaults,
		},
		{
			name: "empty environment",
			env:  map[string]string{},
			want: defaults,
		},
		{
			name: "node name and both addresses",
			env:  nomad,
			want: daemon.Config{Node: "client-1", Bind: "10.0.0.5:7946", HTTPAddr: "10.0.0.5:7947"},
		},
		{
			name: "no node name: the default (hostname) stays",
			env:  with(map[string]string{"NOMAD_NODE_NAME": ""}),
			want: daemon.Config{Node: "hostname", Bind: "10.0.0.5:7946", HTTPAddr: "10.0.0.5:7947"},
		},
		{
			name: "no serf port: bind stays, http still from nomad",
			env:  with(map[string]string{"NOMAD_PORT_serf": "", "NOMAD_IP_serf": "", "NOMAD_ADDR_serf": ""}),
			want: daemon.Config{Node: "client-1", Bind: "0.0.0.0:7946", HTTPAddr: "10.0.0.5:7947"},
		},
		{
			name: "no http port: http_addr stays empty (bind host, port 7947)",
			env:  with(map[string]string{"NOMAD_PORT_http": "", "NOMAD_IP_http": "", "NOMAD_ADDR_http": ""}),
			want: daemon.Config{Node: "client-1", Bind: "10.0.0.5:7946"},
		},
		{
			name: "port without ip binds every interface",
			env:  with(map[string]string{"NOMAD_IP_serf": "", "NOMAD_IP_http": ""}),
			want: daemon.Config{Node: "client-1", Bind: "0.0.0.0:7946", HTTPAddr: "0.0.0.0:7947"},
		},
		{
			name: "ipv6",
			env:  with(map[string]string{"NOMAD_IP_serf": "fd00::5", "NOMAD_IP_http": "fd00::5"}),
			want: daemon.Config{Node: "client-1", Bind: "[fd00::5]:7946", HTTPAddr: "[fd00::5]:7947"},
		},
		{
			name: "other port labels are not ours",
			env: with(map[string]string{
				"NOMAD_PORT_serf": "", "NOMAD_IP_serf": "", "NOMAD_PORT_http": "", "NOMAD_IP_http": "",
				"NOMAD_PORT_gossip": "8000", "NOMAD_IP_gossip": "10.0.0.5",
			}),
			want: daemon.Config{Node: "client-1", Bind: "0.0.0.0:7946"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaults
			daemon.ApplyNomadEnv(&cfg, func(k string) string { return tc.env[k] })
			assert.Equal(t, tc.want, cfg)
		})
	}
}

// The Nomad layer only fills what it knows; everything else is untouched.
func TestApplyNomadEnvLeavesOtherFields(t *testing.T) {
	cfg := daemon.DefaultConfig()
	cfg.DataDir = "/var/lib/peerd"
	cfg.Encrypt = agenttest.GossipKey
	want := cfg
	want.Node, want.Bind, want.HTTPAddr = "client-1", "10.0.0.5:7946", "10.0.0.5:7947"
	env := map[string]string{
		daemon.NomadAllocIDEnv: "a", daemon.NomadNodeNameEnv: "client-1",
		"NOMAD_IP_serf": "10.0.0.5", "NOMAD_PORT_serf": "7946",
		"NOMAD_IP_http": "10.0.0.5", "NOMAD_PORT_http": "7947",
		"NOMAD_ALLOC_DIR": "/alloc", "NOMAD_DC": "dc1", "NOMAD_REGION": "global",
	}
	daemon.ApplyNomadEnv(&cfg, func(k string) string { return env[k] })
	assert.Equal(t, want, cfg)
	assert.NoError(t, cfg.Validate())
}
