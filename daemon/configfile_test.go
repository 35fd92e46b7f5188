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
	return cfg, daemon.LoadFile(path, &cfg)
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
			[]string{`peerd.hcl:3,1-10: Unsupported argument;`, `The valid keys are advertise, allow_unsigned, bind, data_dir,`, `retry_join_max_interval,`}},
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

	examples := regexp.MustCompile(`(?m)^#\s*([a-z_]+\s*=)`)
	require.Greater(t, len(examples.FindAll(shipped, -1)), 10)
	_, err = loadConfig(t, examples.ReplaceAllString(string(shipped), "$1"))
	require.NoError(t, err, "an uncommented example in packaging/peerd.hcl")
}
