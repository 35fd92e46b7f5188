package main

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/peerd/peerd/daemon"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/urfave/cli/v2"
)

// runCLI runs peerd in this process and returns its exit code and stdout.
func runCLI(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(append([]string{"peerd"}, args...), &stdout, &stderr)
	if code != 0 {
		t.Logf("peerd %s: exit %d: %s", strings.Join(args, " "), code, stderr.String())
	}
	return code, stdout.String()
}

// complete asks peerd for completion candidates as a shell script does.
// urfave/cli reads the word before --generate-bash-completion from os.Args,
// not from the arguments given to Run, so os.Args is set the way main's would
// be. Tests that call it must not run in parallel.
func complete(t *testing.T, args ...string) []string {
	t.Helper()
	saved := os.Args
	t.Cleanup(func() { os.Args = saved })
	os.Args = append(append([]string{"peerd"}, args...), "--generate-bash-completion")
	code, out := runCLI(t, os.Args[1:]...)
	require.Equal(t, 0, code, "peerd %v", os.Args[1:])
	return strings.Fields(out)
}

func lookPath(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed (apt-get install %s)", name, pkg)
	}
	return path
}

func TestCompletionScripts(t *testing.T) {
	for _, tc := range []struct {
		shell, pkg, first string
	}{
		{"bash", "bash", "# bash completion for peerd"},
		{"zsh", "zsh", "#compdef peerd\n"},
	} {
		t.Run(tc.shell, func(t *testing.T) {
			code, script := runCLI(t, "completion", tc.shell)
			require.Equal(t, 0, code)
			assert.True(t, strings.HasPrefix(script, tc.first), "starts with %q:\n%s", tc.first, script)
			assert.Contains(t, script, "_peerd")
			assert.Contains(t, script, "--generate-bash-completion")
			assert.NotContains(t, script, "$PROG", "the program name is fixed")

			path := filepath.Join(t.TempDir(), "script")
			require.NoError(t, os.WriteFile(path, []byte(script), 0o644))
			out, err := exec.Command(lookPath(t, tc.shell, tc.pkg), "-n", path).CombinedOutput()
			require.NoError(t, err, "%s -n: %s", tc.shell, out)
		})
	}

	code, _ := runCLI(t, "completion")
	assert.Equal(t, 2, code, "no shell is a usage error")
	code, _ = runCLI(t, "completion", "fish")
	assert.Equal(t, 2, code)
}

func longFlags(flags []cli.Flag) []string {
	var names []string
	for _, f := range flags {
		names = append(names, "--"+f.Names()[0])
	}
	return names
}

func TestCompletionCandidates(t *testing.T) {
	var visible []string
	for _, c := range newApp(nil, nil).Commands {
		if !c.Hidden {
			visible = append(visible, c.Name)
		}
	}
	commands := complete(t)
	assert.Subset(t, commands, visible)
	assert.NotContains(t, commands, "man", "man is for packagers, not listed")

	assert.Subset(t, complete(t, "upgrade"), []string{"status", "rollback", "pause", "resume", "abort"})
	assert.ElementsMatch(t, []string{"bash", "zsh"}, complete(t, "completion"))

	// The scripts send "-" when the word being completed starts with '-':
	// urfave/cli then prints the flags of the command before it.
	assert.Subset(t, complete(t, "agent", "-"), longFlags(agentFlags()))
	assert.Subset(t, complete(t, "upgrade", "-"), []string{"--to", "--artifact", "--batch", "--dry-run"})
	status := complete(t, "upgrade", "status", "-")
	assert.Subset(t, status, []string{"--watch", "--json", "--socket"})
	assert.NotContains(t, status, "--artifact", "the subcommand's flags, not its parent's")
	assert.Equal(t, []string{"--data-dir"}, complete(t, "agent", "--data"))

	// Completing must never run the command: leave would make the agent leave.
	assert.Equal(t, []string{"--socket", "--json", "--help", "-h"}, complete(t, "leave", "-"))
}

// TestCompletionHelperPeerd is peerd itself when the shell scripts run it
// (see TestCompletionInShells).
func TestCompletionHelperPeerd(t *testing.T) {
	log := os.Getenv("PEERD_TEST_COMPLETION_LOG")
	if log == "" {
		t.Skip("run by TestCompletionInShells as peerd")
	}
	f, err := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, _ = f.WriteString(strings.Join(flag.Args(), " ") + "\n")
		_ = f.Close()
	}
	os.Args = append([]string{"peerd"}, flag.Args()...)
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// TestCompletionInShells runs the scripts as a shell does on TAB, with this
// test binary as peerd on PATH, and checks what they offer.
func TestCompletionInShells(t *testing.T) {
	exe, err := os.Executable()
	require.NoError(t, err)
	bin := t.TempDir()
	calls := filepath.Join(bin, "calls")
	require.NoError(t, os.WriteFile(calls, nil, 0o600))
	wrapper := "#!/bin/sh\nexec " + shellQuote(exe) + " -test.run='^TestCompletionHelperPeerd$' -- \"$@\"\n"
	require.NoError(t, os.WriteFile(filepath.Join(bin, "peerd"), []byte(wrapper), 0o755))
	env := append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"), "PEERD_TEST_COMPLETION_LOG="+calls)

	cases := []struct {
		words []string // the last is the word being completed
		want  []string // exactly, in order; nil: nothing (the shell completes file names)
	}{
		{[]string{"peerd", "up"}, []string{"upgrade"}},
		{[]string{"peerd", "completion", ""}, []string{"bash", "zsh"}},
		{[]string{"peerd", "upgrade", "--"}, append(longFlags(upgradeFlags()), "--help")},
		{[]string{"peerd", "upgrade", "--ar"}, []string{"--artifact"}},
		{[]string{"peerd", "upgrade", "status", "--"}, []string{"--socket", "--json", "--app", "--watch", "--help"}},
		{[]string{"peerd", "agent", "--data-dir", "/tmp/x", "--log-"}, []string{"--log-level", "--log-json"}},
		// After "--" urfave/cli does not complete but runs the command: the
		// scripts must not call peerd at all.
		{[]string{"peerd", "mkpatch", "--", "a", ""}, nil},
	}

	t.Run("bash", func(t *testing.T) {
		bash := lookPath(t, "bash", "bash")
		_, script := runCLI(t, "completion", "bash")
		preludes := map[string]string{"plain": ""}
		// Most systems have the bash-completion package; the script uses it when there.
		if _, err := os.Stat("/usr/share/bash-completion/bash_completion"); err == nil {
			preludes["bash-completion"] = "source /usr/share/bash-completion/bash_completion\n"
		}
		for name, prelude := range preludes {
			for _, tc := range cases {
				require.NoError(t, os.Truncate(calls, 0))
				line := strings.Join(tc.words, " ")
				prog := prelude + script + `
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
_peerd
printf '%s\n' "${COMPREPLY[@]}"
`
				cmd := exec.Command(bash, append([]string{"--norc", "-c", prog, "bash"}, tc.words...)...)
				cmd.Env = env
				out, err := cmd.Output()
				require.NoError(t, err, "%s: %q", name, line)
				if tc.want == nil {
					assert.Empty(t, strings.Fields(string(out)), "%s: %q<TAB>", name, line)
				} else {
					assert.Equal(t, tc.want, strings.Fields(string(out)), "%s: %q<TAB>", name, line)
				}
				c, _ := os.ReadFile(calls)
				assert.Equal(t, tc.want == nil, len(c) == 0, "%s: %q<TAB> ran peerd: %q", name, line, c)
			}
		}
	})

	t.Run("zsh", func(t *testing.T) {
		zsh := lookPath(t, "zsh", "zsh")
		_, script := runCLI(t, "completion", "zsh")
		for _, tc := range cases {
			require.NoError(t, os.Truncate(calls, 0))
			line := strings.Join(tc.words, " ")
			// The completion system's functions, reduced to what the script uses.
			prog := `
compdef() { }
_describe() { local -a c; c=("${(@P)2}"); print -rl -- "${c[@]%%:*}" | grep -- "^${words[CURRENT]}" }
_files() { }
` + script + `
words=("$@"); CURRENT=$#
_peerd
`
			cmd := exec.Command(zsh, append([]string{"-f", "-c", prog, "zsh"}, tc.words...)...)
			cmd.Env = env
			out, err := cmd.Output()
			if tc.want != nil {
				require.NoError(t, err, "%q", line)
			}
			if tc.want == nil {
				assert.Empty(t, strings.Fields(string(out)), "%q<TAB>", line)
			} else {
				assert.Equal(t, tc.want, strings.Fields(string(out)), "%q<TAB>", line)
			}
			c, _ := os.ReadFile(calls)
			assert.Equal(t, tc.want == nil, len(c) == 0, "%q<TAB> ran peerd: %q", line, c)
		}
	})
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func TestManPage(t *testing.T) {
	code, page := runCLI(t, "man")
	require.Equal(t, 0, code)
	contains := func(s string) {
		t.Helper()
		assert.True(t, strings.Contains(page, s), "the page has %q", s)
	}
	assert.True(t, strings.HasPrefix(page, ".TH PEERD 1 "), "starts with the title: %.40q", page)
	for _, section := range []string{"NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "ENVIRONMENT", "FILES", "EXIT STATUS"} {
		contains("\n.SH " + section + "\n")
	}
	contains(".SH NAME\npeerd \\- ")
	for _, c := range newApp(nil, nil).Commands {
		if c.Hidden {
			assert.NotContains(t, page, ".SS peerd "+c.Name)
			continue
		}
		assert.Regexp(t, `(?m)^\.SS peerd `+regexp.QuoteMeta(c.Name)+`\b`, page)
	}
	contains(".SS peerd upgrade status")
	for _, f := range []string{`\-\-data\-dir\fP \fIDIR\fP`, `\-\-artifact\fP \fIFILE|URL\fP`, `\-\-watch`, `\-\-restart`} {
		contains(f)
	}
	for _, f := range agentFlags() {
		env := "PEERD_" + strings.ToUpper(strings.ReplaceAll(f.Names()[0], "-", "_"))
		contains("\n.B " + env + "\n")
	}
	for _, s := range []string{"/etc/peerd/peerd.hcl", "/var/lib/peerd/versions", "\n.B 75\n", "\n.B 2\n"} {
		contains(s)
	}

	// The page names the command; its --help and the command list do not.
	code, help := runCLI(t, "--help")
	require.Equal(t, 0, code)
	assert.NotRegexp(t, `(?m)^\s+man\b`, help)
	_, help = runCLI(t, "completion", "--help")
	assert.Contains(t, help, "peerd man | gzip")

	groff := lookPath(t, "groff", "groff-base")
	t.Run("groff reports no warnings", func(t *testing.T) {
		cmd := exec.Command(groff, "-man", "-Tutf8", "-ww", "-z")
		cmd.Stdin = strings.NewReader(page)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Empty(t, string(out))
	})
	t.Run("renders", func(t *testing.T) {
		cmd := exec.Command(groff, "-man", "-Tascii", "-P-cbou")
		cmd.Stdin = strings.NewReader(page)
		out, err := cmd.Output()
		require.NoError(t, err)
		text := string(out)
		for _, s := range []string{"peerd agent [options]", "--data-dir DIR", "--retry-join-max-interval DURATION", "EXIT STATUS"} {
			assert.Contains(t, text, s)
		}
	})
}

// TestAgentFlagsInConfigFile: every agent flag has a config file key that
// does what the flag does, and packaging/peerd.hcl documents it.
func TestAgentFlagsInConfigFile(t *testing.T) {
	shipped, err := os.ReadFile("../../packaging/peerd.hcl")
	require.NoError(t, err)
	for _, f := range agentFlags() {
		name := f.Names()[0]
		if name == "config" || name == "config-dir" { // where the files are, not a key in one
			continue
		}
		key := strings.ReplaceAll(name, "-", "_")
		value := `"7s"` // a duration parses as any string too
		switch f.(type) {
		case *cli.BoolFlag:
			value = "true"
		case *cli.StringSliceFlag:
			value = `["7s"]`
		}
		if name == "tag" {
			key, value = "tags", `{ zone = "a" }`
		}
		t.Run(key, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "peerd.hcl")
			require.NoError(t, os.WriteFile(path, []byte(key+" = "+value+"\n"), 0o600))
			cfg := daemon.DefaultConfig()
			require.NoError(t, daemon.LoadFile(path, &cfg), "fileConfig in daemon/configfile.go has no key %q for --%s", key, name)
			unchanged := daemon.DefaultConfig()
			unchanged.ConfigFiles = []string{path}
			assert.NotEqual(t, unchanged, cfg, "daemon.LoadFile ignores %q", key)

			assert.Regexp(t, `(?m)^#?\s*`+key+`\s*=`, string(shipped), "packaging/peerd.hcl documents %q (--%s)", key, name)
		})
	}
}
