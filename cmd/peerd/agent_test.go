package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/peerd/peerd/daemon"
	"github.com/peerd/peerd/daemon/agenttest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/urfave/cli/v2"
)

// parseAgent runs the agent's flag parsing and config layering without
// starting an agent.
func parseAgent(t *testing.T, args ...string) (daemon.Config, error) {
	t.Helper()
	// Every agent needs a gossip key; these tests are about other settings.
	if os.Getenv("PEERD_ENCRYPT") == "" && !slices.ContainsFunc(args, func(a string) bool {
		return a == "--encrypt" || a == "--keyring-file" || a == "--insecure-gossip" || a == "--no-test-key"
	}) {
		args = append(args, "--encrypt", agenttest.GossipKey)
	}
	args = slices.DeleteFunc(args, func(a string) bool { return a == "--no-test-key" })
	var cfg daemon.Config
	var cfgErr error
	app := newApp(&bytes.Buffer{}, &bytes.Buffer{})
	for _, c := range app.Commands {
		if c.Name == "agent" {
			c.Action = func(c *cli.Context) error {
				cfg, cfgErr = agentConfig(c)
				return nil
			}
		}
	}
	if err := app.Run(append([]string{"peerd", "agent"}, args...)); err != nil {
		return cfg, err
	}
	return cfg, cfgErr
}

func writeFile(t *testing.T, body string) string {
	path := filepath.Join(t.TempDir(), "peerd.hcl")
	require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
	return path
}

func TestConfigPrecedence(t *testing.T) {
	file := writeFile(t, `
node      = "from-file"
bind      = "127.0.0.1:1000"
data_dir  = "/tmp/file"
log_level = "debug"
tags      = { zone = "file" }
join      = ["10.0.0.1:7946"]
retry_join_interval = "3s"
`)
	for _, tc := range []struct {
		name  string
		env   map[string]string
		args  []string
		check func(t *testing.T, c daemon.Config)
	}{
		{
			name: "defaults only",
			args: []string{"--data-dir", "/tmp/d"},
			check: func(t *testing.T, c daemon.Config) {
				host, _ := os.Hostname()
				assert.Equal(t, host, c.Node)
				assert.Equal(t, "0.0.0.0:7946", c.Bind)
				assert.Equal(t, "0.0.0.0:7947", c.HTTPAddress())
				assert.Equal(t, "/tmp/d/peerd.sock", c.SocketPath())
				assert.Equal(t, "info", c.LogLevel)
				assert.Equal(t, time.Second, c.RetryJoinInterval)
			},
		},
		{
			name: "file over defaults",
			args: []string{"--config", file},
			check: func(t *testing.T, c daemon.Config) {
				assert.Equal(t, "from-file", c.Node)
				assert.Equal(t, "127.0.0.1:1000", c.Bind)
				assert.Equal(t, "127.0.0.1:7947", c.HTTPAddress(), "http defaults to the bind host")
				assert.Equal(t, "debug", c.LogLevel)
				assert.Equal(t, map[string]string{"zone": "file"}, c.Tags)
				assert.Equal(t, []string{"10.0.0.1:7946"}, c.Join)
				assert.Equal(t, 3*time.Second, c.RetryJoinInterval)
			},
		},
		{
			name: "env over file",
			env:  map[string]string{"PEERD_NODE": "from-env", "PEERD_TAG": "zone=env", "PEERD_CONFIG": file},
			check: func(t *testing.T, c daemon.Config) {
				assert.Equal(t, "from-env", c.Node)
				assert.Equal(t, map[string]string{"zone": "env"}, c.Tags)
				assert.Equal(t, "127.0.0.1:1000", c.Bind, "what env does not set still comes from the file")
			},
		},
		{
			name: "flags over env over file",
			env:  map[string]string{"PEERD_NODE": "from-env", "PEERD_BIND": "127.0.0.1:2000"},
			args: []string{"--config", file, "--node", "from-flag", "--tag", "zone=flag", "--tag", "rack=r1", "--join", "10.0.0.2", "--join", "10.0.0.3:1"},
			check: func(t *testing.T, c daemon.Config) {
				assert.Equal(t, "from-flag", c.Node)
				assert.Equal(t, "127.0.0.1:2000", c.Bind)
				assert.Equal(t, map[string]string{"zone": "flag", "rack": "r1"}, c.Tags)
				assert.Equal(t, []string{"10.0.0.2", "10.0.0.3:1"}, c.Join)
				assert.Equal(t, "/tmp/file", c.DataDir)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := parseAgent(t, tc.args...)
			require.NoError(t, err)
			tc.check(t, c)
		})
	}
}

func TestAgentFlagValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no data dir", nil, "no data dir"},
		{"bind without port", []string{"--data-dir", "/d", "--bind", "localhost"}, `--bind: "localhost" is not HOST:PORT`},
		{"bind port out of range", []string{"--data-dir", "/d", "--bind", "127.0.0.1:70000"}, `port "70000" is not a number`},
		{"bind hostname", []string{"--data-dir", "/d", "--bind", "myhost:1"}, `host "myhost" is not an IP address`},
		{"bad http addr", []string{"--data-dir", "/d", "--http-addr", "x"}, "--http-addr"},
		{"bad join", []string{"--data-dir", "/d", "--join", "a:b:c"}, "is not HOST or HOST:PORT"},
		{"short key", []string{"--data-dir", "/d", "--encrypt", "c2hvcnQ="}, "gossip key is 5 bytes, want 16, 24 or 32"},
		{"key not base64", []string{"--data-dir", "/d", "--encrypt", "%%%"}, "not valid base64"},
		{"no gossip key", []string{"--data-dir", "/d", "--no-test-key"}, "no gossip key: every agent of a cluster needs the same one. Make it once with 'peerd keygen'"},
		{"insecure and a key", []string{"--data-dir", "/d", "--insecure-gossip", "--encrypt", agenttest.GossipKey}, "--insecure-gossip turns gossip encryption off, but --encrypt"},
		{"tag without value", []string{"--data-dir", "/d", "--tag", "zone"}, `--tag "zone": want KEY=VALUE`},
		{"reserved tag", []string{"--data-dir", "/d", "--tag", "v=9"}, `tag "v" is reserved`},
		{"leaving tag", []string{"--data-dir", "/d", "--tag", "l=1"}, `tag "l" is reserved`},
		{"app tag", []string{"--data-dir", "/d", "--tag", "ap.kv=1-2"}, `tag "ap.kv": keys starting with a., ap., r. are peerd's`},
		{"app rollout tag", []string{"--data-dir", "/d", "--tag", "r.kv=x"}, `tag "r.kv": keys starting with`},
		{"bad log level", []string{"--data-dir", "/d", "--log-level", "loud"}, `log level "loud"`},
		{"bad node name", []string{"--data-dir", "/d", "--node", "a b"}, `node name "a b"`},
		{"bad profile", []string{"--data-dir", "/d", "--gossip-profile", "turbo"}, `gossip profile "turbo"`},
		{"long socket", []string{"--data-dir", "/" + strings.Repeat("d", 120)}, "longer than the 107 a unix socket allows"},
		{"unknown flag", []string{"--nope"}, "flag provided but not defined: -nope (see 'peerd agent --help')"},
		{"bad duration", []string{"--data-dir", "/d", "--retry-join-interval", "soon"}, "retry-join-interval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseAgent(t, tc.args...)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}

	// Every problem is reported at once.
	_, err := parseAgent(t, "--bind", "x", "--http-addr", "y")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "--bind")
	assert.Contains(t, err.Error(), "--http-addr")
	assert.Contains(t, err.Error(), "no data dir")
}

func TestConfigFileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
	}{
		{"unknown key names file, line and suggestion", "node = \"a\"\nbnid = \"127.0.0.1:1\"\n", `peerd.hcl:2,1-5: Unsupported argument; An argument named "bnid" is not expected here. Did you mean "bind"?`},
		{"syntax error names line", "node = \"a\"\ndata_dir = \n", "peerd.hcl:2"},
		{"wrong type", "join = \"10.0.0.1\"\n", "peerd.hcl:1"},
		{"bad duration names line", "\n\nretry_join_interval = \"soon\"\n", `peerd.hcl:3: retry_join_interval = "soon" is not a duration`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseAgent(t, "--config", writeFile(t, tc.body))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	_, err := parseAgent(t, "--config", "/nonexistent/peerd.hcl")
	assert.ErrorContains(t, err, "read config file: open /nonexistent/peerd.hcl: no such file or directory")
}

func TestRunExitCodesAndOneLineErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"peerd", "agent", "--bogus"}, 2, "peerd: flag provided but not defined: -bogus (see 'peerd agent --help')\n"},
		{[]string{"peerd", "members", "--socket", "/nonexistent.sock"}, 1, "peerd: no agent answers at socket /nonexistent.sock: is the agent running?"},
		{[]string{"peerd", "agent", "--bind", "x", "--http-addr", "y"}, 1, "; "},
		{[]string{"peerd", "members", "extra"}, 2, `members takes no arguments, got "extra"`},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		assert.Equal(t, tc.code, code, "%v", tc.args)
		assert.Contains(t, stderr.String(), tc.want)
		assert.Equal(t, 1, strings.Count(stderr.String(), "\n"), "one line: %q", stderr.String())
		assert.NotContains(t, stderr.String(), "goroutine", "no stack trace")
	}
}

func TestVersionJSON(t *testing.T) {
	var stdout bytes.Buffer
	require.Equal(t, 0, run([]string{"peerd", "version", "--json"}, &stdout, &bytes.Buffer{}))
	for _, key := range []string{`"version"`, `"protocol_min"`, `"protocol_max"`, `"os"`, `"arch"`} {
		assert.Contains(t, stdout.String(), key)
	}
}
