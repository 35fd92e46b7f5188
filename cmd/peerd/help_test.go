package main

import (
	"io"
	"regexp"
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
