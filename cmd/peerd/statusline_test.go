package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/peerd/peerd/upgrade"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestUpgradeProgressPiped: away from a terminal (here a buffer) the
// progress is one plain line per change, with no control characters, then
// the table: what a script or a log has always read.
func TestUpgradeProgressPiped(t *testing.T) {
	agent := rolloutAgent(t, upgrade.StateComplete)
	var stdout, stderr bytes.Buffer
	code := run([]string{"peerd", "upgrade", "--socket", agent.Socket, "--to", "2.0.0", "--artifact", artifactFile(t)}, &stdout, &stderr)
	require.Equal(t, 0, code, stderr.String())
	out := stdout.String()
	assert.NotContains(t, out, "\r")
	assert.NotContains(t, out, "\x1b")
	assert.Contains(t, out, "\n[##########..........] 1/2 done  running  b apply\n"+
		"[####################] 2/2 done  complete  b apply\n"+
		"plan abababab: peerd to 2.0.0 — complete, 2/2 nodes done\n")
	assert.Equal(t, 1, strings.Count(out, "1/2 done"), "an unchanged status is not printed again")
}

func TestStatusLine(t *testing.T) {
	t.Run("plain", func(t *testing.T) {
		var b bytes.Buffer
		s := &statusLine{w: &b}
		s.Update("one")
		s.Update("one")
		s.Note("(note)")
		s.Update("two")
		s.Finish()
		assert.Equal(t, "one\n(note)\ntwo\n", b.String())
	})
	t.Run("terminal", func(t *testing.T) {
		var b bytes.Buffer
		s := &statusLine{w: &b, tty: true}
		s.Update("one")
		s.Update("one")
		s.Update("two")
		s.Note("(note)")
		s.Update("three")
		s.Finish()
		s.Finish()
		assert.Equal(t, "\r\x1b[2Kone"+"\r\x1b[2Ktwo"+"\r\x1b[2K(note)\ntwo"+"\r\x1b[2Kthree"+"\n", b.String(),
			"redrawn in place; a note on a line of its own above the status; the last state ended by one newline")
	})
	t.Run("terminal, nothing shown", func(t *testing.T) {
		var b bytes.Buffer
		s := &statusLine{w: &b, tty: true}
		s.Note("(note)")
		s.Finish()
		assert.Equal(t, "\r\x1b[2K(note)\n", b.String(), "no empty line at the end")
	})
	t.Run("narrow terminal", func(t *testing.T) {
		var b bytes.Buffer
		s := &statusLine{w: &b, tty: true, width: 8}
		s.Update("1234567")
		s.Update("12345678")
		s.Finish()
		assert.Equal(t, "\r\x1b[2K1234567"+"\r\x1b[2K123456…\n", b.String(), "cut to width-1 columns, so it never wraps")
	})
}

// TestNewStatusLineNotATerminal: a buffer, and a file that is no terminal,
// get the plain lines.
func TestNewStatusLineNotATerminal(t *testing.T) {
	assert.False(t, newStatusLine(&bytes.Buffer{}).tty)
	f, err := os.CreateTemp(t.TempDir(), "out")
	require.NoError(t, err)
	defer f.Close()
	assert.False(t, newStatusLine(f).tty)
}
