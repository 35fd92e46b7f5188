package daemon_test

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/peerd/peerd/daemon"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func loadConfig(t *testing.T, body string) (daemon.Config, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "peerd.hcl")
	require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
	cfg := daemon.DefaultConfig()
	err := daemon.LoadFile(path, &cfg)
	return cfg, err
}

// An unknown key names the file, the line and the key meant; hcl suggests
// only keys within two edits, so flag and variable spellings and keys like
// nothing valid are peerd's own additions.
func TestLoadFileUnknownKeys(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{"typo", "node = \"a\"\nbnid = \"x\"\n",
			[]string{`peerd.hcl:2,1-5: Unsupported argument; An argument named "bnid" is not expected here. Did you mean "bind"?`}},
		{"flag spelling", "retry-join-max-interval = \"3s\"\n",
			[]string{`peerd.hcl:1,1-24: Unsupported argument;`, `Did you mean "retry_join_max_interval"?`}},
		{"variable spelling", "\nDATA_DIR = \"/x\"\n",
			[]string{`peerd.hcl:2,1-9: Unsupported argument;`, `Did you mean "data_dir"?`}},
		{"flag name for a map", "tag = { zone = \"a\" }\n",
			[]string{`peerd.hcl:1,1-4:`, `Did you mean "tags"?`}},
		{"block instead of attribute", "tags {\n  zone = \"a\"\n}\n",
			[]string{`peerd.hcl:1,1-5: Unsupported block type;`, `Did you mean to define argument "tags"? If so, use the equals sign`}},
		{"like no key", "\n\nverbosity = 3\n",
			[]string{`peerd.hcl:3,1-10: Unsupported argument;`, `The valid keys are advertise, allow_outage, allow_unsigned, bind, data_dir,`, `retry_join_max_interval,`}},
		{"unknown block", "telemetry {\n}\n",
			[]string{`peerd.hcl:1,1-10: Unsupported block type;`, `The valid keys are advertise,`}},
		{"every problem at once", "nodes = \"a\"\nbnid = \"b\"\n",
			[]string{`peerd.hcl:1,1-6: Unsupported argument; An argument named "nodes" is not expected here. Did you mean "node"?`,
				`peerd.hcl:2,1-5: Unsupported argument; An argument named "bnid" is not expected here. Did you mean "bind"?`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadConfig(t, tc.body)
			require.Error(t, err)
			for _, want := range tc.want {
				assert.Contains(t, err.Error(), want)
			}
		})
	}
}

// The config file the packages install as /etc/peerd/peerd.hcl loads, and so
// does every example in it once uncommented.
func TestShippedConfigLoads(t *testing.T) {
	shipped, err := os.ReadFile("../packaging/peerd.hcl")
	require.NoError(t, err)
	cfg, err := loadConfig(t, string(shipped))
	require.NoError(t, err)
	assert.Equal(t, "/var/lib/peerd", cfg.DataDir)

	// "# key = ..." examples; the app block's indented lines are its own.
	examples := regexp.MustCompile(`(?m)^# ?([a-z_]+\s*=)`)
	require.Greater(t, len(examples.FindAll(shipped, -1)), 10)
	_, err = loadConfig(t, examples.ReplaceAllString(string(shipped), "$1"))
	require.NoError(t, err, "an uncommented example in packaging/peerd.hcl")
}

// The shipped app block example, uncommented, declares a managed app.
func TestShippedAppExampleLoads(t *testing.T) {
	shipped, err := os.ReadFile("../packaging/peerd.hcl")
	require.NoError(t, err)
	block := regexp.MustCompile(`(?ms)^# app "kv" \{$.*?^# \}$`).Find(shipped)
	require.NotNil(t, block, "packaging/peerd.hcl documents an app block")
	src := regexp.MustCompile(`(?m)^# ?`).ReplaceAll(block, nil)
	cfg, err := loadConfig(t, "data_dir = \"/var/lib/peerd\"\n"+string(src))
	require.NoError(t, err, "%s", src)
	require.Len(t, cfg.Apps, 1)
	app := cfg.Apps[0]
	assert.Equal(t, "kv", app.Name)
	assert.Equal(t, "/usr/local/bin/kv", app.Binary)
	assert.Equal(t, []string{"--listen", "0.0.0.0:8080", "--data-dir", "data", "--peers-file", "peers.json"}, app.Args)
	assert.Equal(t, ":8080", app.Address)
	assert.Equal(t, "http://127.0.0.1:8080/health", app.Health.HTTP)
	assert.Equal(t, "2s", app.HealthInterval.String())
	assert.Equal(t, "SIGHUP", app.Peers.Signal)
	assert.Equal(t, map[string]string{"KV_NAME": "node-1"}, app.Env)
}

func TestAppBlockErrors(t *testing.T) {
	_, err := loadConfig(t, `data_dir = "/tmp/x"
app "kv" {
  command  = ["/bin/true"]
  address  = "nohost"
  health { interval = "soon" }
}
app "kv" { command = ["/bin/true"] }
`)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `interval = "soon" is not a duration`)

	_, err = loadConfig(t, `data_dir = "/tmp/x"
app "kv" {
  command = ["/bin/true"]
  adress  = ":8080"
}
`)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "address", "a misspelt key names the right one")
}

func TestAppListen(t *testing.T) {
	cfg, err := loadConfig(t, `data_dir = "/tmp/x"
app "kv" {
  command = ["/bin/true"]
  listen  = ["tcp://127.0.0.1:0"]
  health { http = "/health" }
}
`)
	require.NoError(t, err)
	assert.Equal(t, []string{"tcp://127.0.0.1:0"}, cfg.Apps[0].Listen)
	assert.NoError(t, cfg.Apps[0].Validate())

	cfg, err = loadConfig(t, `data_dir = "/tmp/x"
app "kv" {
  command = ["/bin/true"]
  listen  = ["unix:///run/kv.sock", "tcp://127.0.0.1"]
}
`)
	require.NoError(t, err)
	err = cfg.Validate() // the agent's check, as 'peerd validate' runs it
	assert.Contains(t, err.Error(), `app "kv": listen "unix:///run/kv.sock": scheme "unix"`)
	assert.Contains(t, err.Error(), `app "kv": listen "tcp://127.0.0.1": "127.0.0.1": want HOST:PORT`)
}
