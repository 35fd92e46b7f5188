package cluster

import (
	"bytes"
	"context"
	"log"
	"log/slog"
)

// newStdLogger adapts Serf's and memberlist's *log.Logger, whose lines start
// with a "[LEVEL]" marker, to slog at the matching level.
func newStdLogger(l *slog.Logger) *log.Logger {
	return log.New(&slogWriter{log: l.With("component", "serf")}, "", 0)
}

type slogWriter struct{ log *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	line := bytes.TrimSpace(p)
	level := slog.LevelInfo
	for _, m := range []struct {
		prefix string
		level  slog.Level
	}{
		{"[DEBUG]", slog.LevelDebug}, {"[TRACE]", slog.LevelDebug}, {"[INFO]", slog.LevelInfo},
		{"[WARN]", slog.LevelWarn}, {"[ERR]", slog.LevelError}, {"[ERROR]", slog.LevelError},
	} {
		if bytes.HasPrefix(line, []byte(m.prefix)) {
			level = m.level
			line = bytes.TrimSpace(line[len(m.prefix):])
			break
		}
	}
	w.log.Log(context.Background(), level, string(line))
	return len(p), nil
}
