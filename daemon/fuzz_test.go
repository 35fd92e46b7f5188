package daemon_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/peerd/peerd/daemon"
)

// FuzzConfigFile: an HCL config file either loads or fails with an error
// that names the file; a loaded config validates without a panic.
func FuzzConfigFile(f *testing.F) {
	if shipped, err := os.ReadFile("../packaging/peerd.hcl"); err == nil {
		f.Add(string(shipped))
	}
	f.Add("node = \"a\"\ntags = { zone = \"a\" }\napp \"kv\" {\n  command = [\"kv\"]\n}\n")
	f.Fuzz(func(t *testing.T, body string) {
		path := filepath.Join(t.TempDir(), "peerd.hcl")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := daemon.DefaultConfig()
		if err := daemon.LoadFile(path, &cfg); err != nil {
			if !strings.Contains(err.Error(), "config file") {
				t.Fatalf("the error does not say it is about the config file: %v", err)
			}
			return
		}
		_ = cfg.Validate()
	})
}
