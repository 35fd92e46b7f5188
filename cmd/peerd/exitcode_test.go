package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/peerd/peerd/daemon/agenttest"
	"github.com/stretchr/testify/assert"
	"github.com/urfave/cli/v2"
)

// TestExitCodeContract holds every command to the README's contract: 0
// done, 2 a malformed command line (unknown flag or command, wrong
// arguments, missing or conflicting flags, a value of the wrong form), 1
// anything else (no agent, the agent refused, a rollout that did not
// complete, an invalid config). Errors are one line on stderr, and a
// usage error says where help is. A new command needs a row here.
func TestExitCodeContract(t *testing.T) {
	dir := t.TempDir()
	noAgent := filepath.Join(dir, "none.sock")
	art := filepath.Join(dir, "art")
	if err := os.WriteFile(art, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.hcl")
	if err := os.WriteFile(bad, []byte("bnid = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// with is the command's words, --socket at no agent, then rest.
	with := func(cmd string, rest ...string) []string {
		return append(append(strings.Fields(cmd), "--socket", noAgent), rest...)
	}

	key := agenttest.GossipKey
	type rows struct{ usage, runtime [][]string }
	table := map[string]rows{
		"agent":    {usage: [][]string{{"agent", "extra"}}, runtime: [][]string{{"agent", "--config", bad}, {"agent", "--bind", "x"}}},
		"validate": {usage: [][]string{{"validate"}}, runtime: [][]string{{"validate", bad}, {"validate", "--json", bad}}},
		"members":  {usage: [][]string{{"members", "extra"}}, runtime: [][]string{with("members")}},
		"apps":     {usage: [][]string{{"apps", "extra"}}, runtime: [][]string{with("apps")}},
		"info":     {usage: [][]string{{"info", "extra"}}, runtime: [][]string{with("info")}},
		"leave":    {usage: [][]string{{"leave", "now"}}, runtime: [][]string{with("leave")}},
		"join": {usage: [][]string{{"join"}, {"join", "a:b:c"}, {"join", "10.0.0.1", "--socket", noAgent}},
			runtime: [][]string{with("join", "10.0.0.1")}},
		"force-leave":     {usage: [][]string{{"force-leave"}, {"force-leave", "a", "b"}}, runtime: [][]string{with("force-leave", "n1")}},
		"keyring":         {usage: [][]string{{"keyring", "bogus"}}, runtime: [][]string{with("keyring")}},
		"keyring list":    {usage: [][]string{{"keyring", "list", "extra"}}, runtime: [][]string{with("keyring list")}},
		"keyring install": {usage: [][]string{{"keyring", "install"}, {"keyring", "install", "not-a-key"}}, runtime: [][]string{with("keyring install", key)}},
		"keyring use":     {usage: [][]string{{"keyring", "use"}, {"keyring", "use", "a", "b"}}, runtime: [][]string{with("keyring use", key)}},
		"keyring remove":  {usage: [][]string{{"keyring", "remove"}}, runtime: [][]string{with("keyring remove", key)}},
		"forget":          {usage: [][]string{{"forget"}, {"forget", "a", "b"}}, runtime: [][]string{with("forget", "n1")}},
		"monitor":         {usage: [][]string{{"monitor", "extra"}, {"monitor", "--log-level", "loud"}}, runtime: [][]string{with("monitor")}},
		"upgrade": {usage: [][]string{{"upgrade", "bogus"}, {"upgrade", "--artifact", art}, {"upgrade", "--to", "2.0.0"},
			{"upgrade", "--to", "2.0.0", "--artifact", art, "--batch", "0"}, {"upgrade", "--plan", "abcdef12", "--to", "2.0.0"}},
			runtime: [][]string{with("upgrade", "--to", "2.0.0", "--artifact", art)}},
		"upgrade status":   {usage: [][]string{{"upgrade", "status", "extra"}}, runtime: [][]string{with("upgrade status")}},
		"upgrade rollback": {usage: [][]string{{"upgrade", "rollback", "extra"}}, runtime: [][]string{with("upgrade rollback")}},
		"upgrade pause":    {usage: [][]string{{"upgrade", "pause", "extra"}}, runtime: [][]string{with("upgrade pause")}},
		"upgrade resume":   {usage: [][]string{{"upgrade", "resume", "extra"}}, runtime: [][]string{with("upgrade resume")}},
		"upgrade abort":    {usage: [][]string{{"upgrade", "abort", "extra"}}, runtime: [][]string{with("upgrade abort")}},
		"install": {usage: [][]string{{"install", "kv", "--artifact", art}},
			runtime: [][]string{{"install", "kv", "--socket", noAgent, "--artifact", art, "--version", "1.0.0"}}},
		"mkpatch": {usage: [][]string{{"mkpatch", "a", "b"}}, runtime: [][]string{{"mkpatch", filepath.Join(dir, "no-old"), art, filepath.Join(dir, "out")}}},
		"sign": {usage: [][]string{{"sign", art}, {"sign", "--force", art}, {"sign", "--generate", filepath.Join(dir, "k"), art}},
			runtime: [][]string{{"sign", "--key", filepath.Join(dir, "no-key"), "--version", "1.0.0", art}}},
		"version":         {usage: [][]string{{"version", "extra"}}},
		"keygen":          {usage: [][]string{{"keygen", "extra"}}},
		"completion":      {usage: [][]string{{"completion"}, {"completion", "fish"}}},
		"completion bash": {usage: [][]string{{"completion", "bash", "extra"}}},
		"completion zsh":  {usage: [][]string{{"completion", "zsh", "extra"}}},
		"man":             {usage: [][]string{{"man", "extra"}}},
	}

	check := func(args []string, want int) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := run(append([]string{"peerd"}, args...), &stdout, &stderr)
		assert.Equal(t, want, code, "peerd %s: %s", strings.Join(args, " "), stderr.String())
		// validate --json says why on stdout, in its document.
		if want != 0 && code == want && !(args[0] == "validate" && slices.Contains(args, "--json")) {
			assert.Equal(t, 1, strings.Count(stderr.String(), "\n"), "peerd %s: one line: %q", strings.Join(args, " "), stderr.String())
			assert.True(t, strings.HasPrefix(stderr.String(), "peerd: "), "peerd %s: %q", strings.Join(args, " "), stderr.String())
		}
	}
	walkCommands(newApp(io.Discard, io.Discard).Commands, "", func(path string, c *cli.Command) {
		r, ok := table[path]
		if !assert.True(t, ok, "peerd %s has no row in the exit-code table", path) {
			return
		}
		words := strings.Fields(path)
		check(append(append([]string{}, words...), "--help"), 0)
		check(append(append([]string{}, words...), "--no-such-flag"), 2)
		for _, args := range r.usage {
			check(args, 2)
		}
		for _, args := range r.runtime {
			check(args, 1)
		}
	})
}
