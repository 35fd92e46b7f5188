package main

import (
	"io"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/urfave/cli/v2"
)

// placeholderRE is what a flag's value is called in help and the man page:
// upper case, as FILE, ADDR, KEY=VALUE, FILE|URL, N or DURATION.
var placeholderRE = regexp.MustCompile(`^[A-Z][A-Z0-9_]*([=|:][A-Z][A-Z0-9_]*)*%?$`)

// TestFlagPlaceholders: every flag that takes a value names it in upper
// case (a `quoted` word in its usage, urfave/cli's rule), so that help
// never shows urfave/cli's default "value" beside FILE and PATH.
func TestFlagPlaceholders(t *testing.T) {
	walkCommands(newApp(io.Discard, io.Discard).Commands, "", func(path string, c *cli.Command) {
		for _, f := range visibleFlags(c.Flags) {
			df, ok := f.(cli.DocGenerationFlag)
			if !ok || !df.TakesValue() {
				continue
			}
			name, _ := unquoteUsage(df.GetUsage())
			switch f.(type) {
			case *cli.DurationFlag:
				if name == "" {
					name = "DURATION"
				}
			case *cli.IntFlag:
				if name == "" {
					name = "N"
				}
			}
			assert.Regexp(t, placeholderRE, name, "peerd %s --%s: name its value in its usage, e.g. `FILE`", path, f.Names()[0])
		}
	})
}

// walkCommands calls fn on every command, hidden ones included, with its
// path ("upgrade status").
func walkCommands(cmds []*cli.Command, prefix string, fn func(path string, c *cli.Command)) {
	for _, c := range cmds {
		fn(prefix+c.Name, c)
		walkCommands(c.Subcommands, prefix+c.Name+" ", fn)
	}
}

// TestRootConventions: what users of consul, nomad and serf type first.
func TestRootConventions(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-v"}} {
		code, out := runCLI(t, args...)
		assert.Equal(t, 0, code, "%v", args)
		assert.Regexp(t, `^peerd \S+ \(commit .*\), protocol \d+-\d+\n$`, out, "%v prints what 'peerd version' does", args)
	}
	code, out := runCLI(t, "help")
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "COMMANDS:")
	code, out = runCLI(t, "help", "upgrade")
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "peerd upgrade [APP] --to VERSION")

	var stdout, stderr strings.Builder
	assert.Equal(t, 2, run([]string{"peerd"}, &stdout, &stderr), "no command is a usage error")
	assert.Empty(t, stdout.String())
	assert.Contains(t, stderr.String(), "COMMANDS:", "the usage goes to stderr")

	stderr.Reset()
	assert.Equal(t, 2, run([]string{"peerd", "bogus"}, &stdout, &stderr))
	assert.Equal(t, "peerd: unknown command \"bogus\"; run 'peerd help' to list the commands\n", stderr.String())
}
