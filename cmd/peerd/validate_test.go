package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/peerd/peerd/daemon/agenttest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	good := write("peerd.hcl", "data_dir = \"/var/lib/peerd\"\nnode = \"a\"\nencrypt = \""+agenttest.GossipKey+"\"\n")
	code, out := runCLI(t, "validate", good)
	assert.Equal(t, 0, code)
	assert.Equal(t, "config is valid: "+good+"\n", out)

	var stderr strings.Builder
	bad := write("bad.hcl", "bind = \"x\"\nlog_level = \"loud\"\n")
	assert.Equal(t, 1, run([]string{"peerd", "validate", bad}, &strings.Builder{}, &stderr))
	for _, w := range []string{"config is not valid", "--bind", `log level "loud"`, "no data dir"} {
		assert.Contains(t, stderr.String(), w, "every problem at once")
	}
	assert.Equal(t, 1, strings.Count(stderr.String(), "\n"), "on one line")

	var stdout strings.Builder
	assert.Equal(t, 1, run([]string{"peerd", "validate", "--json", bad}, &stdout, &strings.Builder{}))
	var res struct {
		Valid  bool     `json:"valid"`
		Files  []string `json:"files"`
		Errors []string `json:"errors"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout.String()), &res))
	assert.False(t, res.Valid)
	assert.Len(t, res.Errors, 3, "one per problem: %q", res.Errors)

	assert.Equal(t, 2, run([]string{"peerd", "validate"}, &strings.Builder{}, &strings.Builder{}), "nothing to validate")
}

// TestConfigDir: --config-dir reads *.hcl and *.json files in name order
// after --config; a later file's keys win, app blocks add up.
func TestConfigDir(t *testing.T) {
	dir := t.TempDir()
	confd := filepath.Join(dir, "peerd.d")
	require.NoError(t, os.Mkdir(confd, 0o755))
	for name, body := range map[string]string{
		"10-base.hcl":  "node = \"from-10\"\nlog_level = \"debug\"\napp \"kv\" {\n  command = [\"/bin/true\"]\n}\n",
		"20-over.json": `{"node": "from-20", "tags": {"zone": "b"}, "app": {"web": {"command": ["/bin/true"]}}}`,
		"README":       "not a config file",
		"30-off.hcl~":  "node = \"backup\"\n",
	} {
		require.NoError(t, os.WriteFile(filepath.Join(confd, name), []byte(body), 0o600))
	}
	main := filepath.Join(dir, "peerd.hcl")
	require.NoError(t, os.WriteFile(main, []byte("data_dir = \"/d\"\nnode = \"from-main\"\nencrypt = \""+agenttest.GossipKey+"\"\n"), 0o600))

	cfg, err := parseAgent(t, "--config", main, "--config-dir", confd)
	require.NoError(t, err)
	assert.Equal(t, "from-20", cfg.Node, "the last file that sets a key wins")
	assert.Equal(t, "debug", cfg.LogLevel, "what later files do not set stays")
	assert.Equal(t, "/d", cfg.DataDir)
	assert.Equal(t, map[string]string{"zone": "b"}, cfg.Tags)
	require.Len(t, cfg.Apps, 2)
	assert.Equal(t, "kv", cfg.Apps[0].Name)
	assert.Equal(t, "web", cfg.Apps[1].Name)
	assert.Equal(t, []string{main, filepath.Join(confd, "10-base.hcl"), filepath.Join(confd, "20-over.json")}, cfg.ConfigFiles)

	t.Setenv("PEERD_CONFIG_DIR", confd)
	cfg, err = parseAgent(t, "--config", main, "--node", "flag")
	require.NoError(t, err)
	assert.Equal(t, "flag", cfg.Node, "a flag wins over the files")
	assert.Len(t, cfg.Apps, 2, "PEERD_CONFIG_DIR is read")

	code, _ := runCLI(t, "validate", main, confd)
	assert.Equal(t, 0, code)

	_, err = parseAgent(t, "--config-dir", filepath.Join(dir, "missing"), "--data-dir", "/d")
	assert.ErrorContains(t, err, "missing: no such file or directory")
}
