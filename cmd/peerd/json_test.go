package main

import (
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/urfave/cli/v2"
)

// TestEveryClientCommandHasJSON: scripts can read every command that talks
// to the agent (or prints a result) as JSON. Left out: the agent itself,
// and commands whose output is a file or a script.
func TestEveryClientCommandHasJSON(t *testing.T) {
	notJSON := map[string]bool{"agent": true, "man": true, "completion": true, "mkpatch": true, "sign": true}
	var walk func(prefix string, cmds []*cli.Command)
	walk = func(prefix string, cmds []*cli.Command) {
		for _, c := range cmds {
			name := prefix + c.Name
			if notJSON[c.Name] {
				continue
			}
			if len(c.Subcommands) > 0 {
				walk(name+" ", c.Subcommands)
			}
			has := false
			for _, f := range c.Flags {
				for _, n := range f.Names() {
					has = has || n == "json"
				}
			}
			assert.True(t, has, "peerd %s has no --json", name)
		}
	}
	walk("", newApp(io.Discard, io.Discard).Commands)
}
