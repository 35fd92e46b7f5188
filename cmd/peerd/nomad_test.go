package main

import (
	"testing"

	"github.com/peerd/peerd/daemon"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// setNomadEnv sets what a task of contrib/nomad/peerd.nomad.hcl sees.
func setNomadEnv(t *testing.T) {
	for k, v := range map[string]string{
		"NOMAD_ALLOC_ID":        "5b3d7f7e-1c2a-4f7e-9a0b-2f6c1d0e9a11",
		daemon.NomadNodeNameEnv: "client-1",
		"NOMAD_IP_serf":         "10.0.0.5",
		"NOMAD_PORT_serf":       "7946",
		"NOMAD_ADDR_serf":       "10.0.0.5:7946",
		"NOMAD_HOST_PORT_serf":  "7946",
		"NOMAD_IP_http":         "10.0.0.5",
		"NOMAD_PORT_http":       "7947",
		"NOMAD_ADDR_http":       "10.0.0.5:7947",
		"NOMAD_HOST_PORT_http":  "7947",
		"NOMAD_ALLOC_DIR":       "/alloc",
		"NOMAD_TASK_DIR":        "/local",
		"NOMAD_DC":              "dc1",
		"NOMAD_REGION":          "global",
	} {
		t.Setenv(k, v)
	}
}

func TestAgentConfigNomad(t *testing.T) {
	file := writeFile(t, `
node      = "from-file"
bind      = "10.0.0.9:1000"
`)
	for _, tc := range []struct {
		name  string
		env   map[string]string
		args  []string
		check func(t *testing.T, c daemon.Config)
	}{
		{
			name: "nomad over defaults",
			args: []string{"--data-dir", "/tmp/d"},
			check: func(t *testing.T, c daemon.Config) {
				assert.Equal(t, "client-1", c.Node)
				assert.Equal(t, "10.0.0.5:7946", c.Bind)
				assert.Empty(t, c.Advertise, "bind is a real address: memberlist advertises it")
				assert.Equal(t, "10.0.0.5:7947", c.HTTPAddress())
				assert.Equal(t, "/tmp/d", c.DataDir, "the data dir is not taken from NOMAD_ALLOC_DIR")
			},
		},
		{
			name: "data dir from the job's PEERD_DATA_DIR",
			env:  map[string]string{"PEERD_DATA_DIR": "/alloc/data/peerd"},
			check: func(t *testing.T, c daemon.Config) {
				assert.Equal(t, "client-1", c.Node)
				assert.Equal(t, "/alloc/data/peerd", c.DataDir)
				assert.Equal(t, "/alloc/data/peerd/peerd.sock", c.SocketPath())
			},
		},
		{
			name: "file over nomad",
			args: []string{"--config", file, "--data-dir", "/tmp/d"},
			check: func(t *testing.T, c daemon.Config) {
				assert.Equal(t, "from-file", c.Node)
				assert.Equal(t, "10.0.0.9:1000", c.Bind)
				assert.Equal(t, "10.0.0.5:7947", c.HTTPAddress(), "what the file does not set still comes from nomad")
			},
		},
		{
			name: "PEERD_ env over nomad",
			env:  map[string]string{"PEERD_NODE": "from-env", "PEERD_HTTP_ADDR": "127.0.0.1:9000"},
			args: []string{"--data-dir", "/tmp/d"},
			check: func(t *testing.T, c daemon.Config) {
				assert.Equal(t, "from-env", c.Node)
				assert.Equal(t, "10.0.0.5:7946", c.Bind)
				assert.Equal(t, "127.0.0.1:9000", c.HTTPAddress())
			},
		},
		{
			name: "flags over nomad",
			args: []string{"--data-dir", "/tmp/d", "--node", "from-flag", "--bind", "127.0.0.1:2000", "--advertise", "192.0.2.1:2000"},
			check: func(t *testing.T, c daemon.Config) {
				assert.Equal(t, "from-flag", c.Node)
				assert.Equal(t, "127.0.0.1:2000", c.Bind)
				assert.Equal(t, "192.0.2.1:2000", c.Advertise)
				assert.Equal(t, "10.0.0.5:7947", c.HTTPAddress())
			},
		},
		{
			name: "not under nomad without NOMAD_ALLOC_ID",
			env:  map[string]string{"NOMAD_ALLOC_ID": ""},
			args: []string{"--data-dir", "/tmp/d"},
			check: func(t *testing.T, c daemon.Config) {
				assert.NotEqual(t, "client-1", c.Node)
				assert.Equal(t, "0.0.0.0:7946", c.Bind)
				assert.Equal(t, "0.0.0.0:7947", c.HTTPAddress())
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setNomadEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := parseAgent(t, tc.args...)
			require.NoError(t, err)
			tc.check(t, c)
		})
	}
}
