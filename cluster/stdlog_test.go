package cluster

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestStdLoggerLevels(t *testing.T) {
	var buf bytes.Buffer
	l := newStdLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	l.Print("[INFO] serf: EventMemberJoin: n2 127.0.0.1")
	l.Print("[INFO] serf: EventMemberUpdate: n2")
	l.Print("[WARN] serf: reply for non-running query (LTime: 9, ID: 1) From: n3")
	l.Print("[WARN] memberlist: Refuting a suspect message (from: n3)")
	out := buf.String()
	assert.Contains(t, out, "level=INFO msg=\"serf: EventMemberJoin: n2 127.0.0.1\"")
	assert.Contains(t, out, "level=WARN msg=\"memberlist: Refuting a suspect message (from: n3)\"")
	assert.NotContains(t, out, "EventMemberUpdate", "tag changes are routine: debug")
	assert.NotContains(t, out, "non-running query", "late answers to a finished query are routine: debug")
}
