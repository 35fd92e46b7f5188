package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// logHub passes every log record to the agent's own handler and to the
// monitors ('peerd monitor') subscribed, each at its own level: a monitor
// at debug sees debug lines while the agent itself logs at info, as
// 'consul monitor' does. Publishing never blocks the logger: a monitor
// that reads too slowly loses lines, and is told how many.
type logHub struct {
	n atomic.Int32 // subscribers, for a fast Enabled without them

	mu   sync.Mutex
	subs map[*logSub]struct{}
}

type logSub struct {
	level   slog.Level
	records chan slog.Record
	dropped atomic.Int64
}

func newLogHub() *logHub { return &logHub{subs: map[*logSub]struct{}{}} }

func (h *logHub) subscribe(level slog.Level) *logSub {
	s := &logSub{level: level, records: make(chan slog.Record, 1024)}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	h.n.Add(1)
	return s
}

func (h *logHub) unsubscribe(s *logSub) {
	h.mu.Lock()
	delete(h.subs, s)
	h.mu.Unlock()
	h.n.Add(-1)
}

func (h *logHub) wants(level slog.Level) bool {
	if h.n.Load() == 0 {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if level >= s.level {
			return true
		}
	}
	return false
}

func (h *logHub) publish(r slog.Record) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if r.Level < s.level {
			continue
		}
		select {
		case s.records <- r:
		default:
			s.dropped.Add(1)
		}
	}
}

// handler wraps next so that its records reach the hub too.
func (h *logHub) handler(next slog.Handler) slog.Handler {
	return &hubHandler{hub: h, next: next}
}

type hubHandler struct {
	hub   *logHub
	next  slog.Handler
	attrs []slog.Attr // from WithAttrs, keys prefixed with their groups
	group string      // "a.b." from WithGroup
}

func (h *hubHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l) || h.hub.wants(l)
}

func (h *hubHandler) Handle(ctx context.Context, r slog.Record) error {
	var err error
	if h.next.Enabled(ctx, r.Level) {
		err = h.next.Handle(ctx, r)
	}
	if h.hub.wants(r.Level) {
		c := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
		c.AddAttrs(h.attrs...)
		r.Attrs(func(a slog.Attr) bool {
			c.AddAttrs(h.prefixed(a))
			return true
		})
		h.hub.publish(c)
	}
	return err
}

func (h *hubHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(as)
	c.attrs = append([]slog.Attr(nil), h.attrs...)
	for _, a := range as {
		c.attrs = append(c.attrs, h.prefixed(a))
	}
	return &c
}

func (h *hubHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.next = h.next.WithGroup(name)
	c.group = h.group + name + "."
	return &c
}

func (h *hubHandler) prefixed(a slog.Attr) slog.Attr {
	if h.group == "" {
		return a
	}
	return slog.Attr{Key: h.group + a.Key, Value: a.Value}
}

// handleMonitor streams the agent's log from now on, at ?level= (default
// info), as text lines or with ?format=json as JSON lines, until the
// client goes away or the agent stops.
func (a *Agent) handleMonitor(w http.ResponseWriter, r *http.Request) {
	level := slog.LevelInfo
	if l := r.URL.Query().Get("level"); l != "" {
		if err := level.UnmarshalText([]byte(l)); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("log level %q: want debug, info, warn or error", l))
			return
		}
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, errors.New("this connection cannot stream"))
		return
	}
	sub := a.logs.subscribe(level)
	defer a.logs.unsubscribe(sub)
	// The hub filters by level; the monitor's own lines always pass.
	all := &slog.HandlerOptions{Level: slog.Level(math.MinInt)}
	var out slog.Handler
	if r.URL.Query().Get("format") == "json" {
		w.Header().Set("Content-Type", "application/x-ndjson")
		out = slog.NewJSONHandler(w, all)
	} else {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		out = slog.NewTextHandler(w, all)
	}
	ctx := r.Context()
	// The first line says the stream is up (and a client can wait for it).
	start := slog.NewRecord(time.Now(), slog.LevelInfo, "monitor: streaming this agent's log", 0)
	start.AddAttrs(slog.String("component", "monitor"), slog.String("node", a.cfg.Node), slog.String("level_from", level.String()))
	_ = out.Handle(ctx, start)
	flusher.Flush()
	for {
		select {
		case <-ctx.Done():
			return
		case rec := <-sub.records:
			if n := sub.dropped.Swap(0); n > 0 {
				d := slog.NewRecord(time.Now(), slog.LevelWarn, "monitor: lines dropped, this monitor read too slowly", 0)
				d.AddAttrs(slog.String("component", "monitor"), slog.Int64("dropped", n))
				_ = out.Handle(ctx, d)
			}
			if err := out.Handle(ctx, rec); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}
