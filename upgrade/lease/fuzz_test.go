package lease

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/peerd/peerd/internal/clock"
	"github.com/peerd/peerd/internal/durable"
)

// FuzzGrantsFile: whatever grants.json holds (a torn write, an old format,
// a hand edit), the granter either loads it or reports it corrupt (the
// engine then holds it in safe mode); a granter that loaded it decides and
// persists without panicking, and what it writes it reads back.
func FuzzGrantsFile(f *testing.F) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	good, _ := json.Marshal(file{Epoch: 3, Grants: []Grant{{PlanID: "p1", Wave: 0, Epoch: 3, Expires: now.Add(time.Minute), Holders: []string{"a"}}}})
	f.Add(good)
	old, _ := json.Marshal([]Grant{{PlanID: "p1", Wave: 1, Expires: now.Add(time.Minute)}})
	f.Add(old)
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "grants.json")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		clk := clock.NewFake(now)
		g, err := NewGranter(path, clk)
		if err != nil {
			if g == nil && errors.Is(err, durable.ErrCorrupt) {
				t.Fatalf("a corrupt file must come with a granter to hold: %v", err)
			}
			return
		}
		WithoutFsync(g)
		gr, err := g.Decide(Request{PlanID: "p2", Wave: 0, Node: "a"}, Terms{TTL: time.Minute, MaxHold: 2 * time.Minute,
			Holders: func() []string { return []string{"a"} }, EarlierDone: func() bool { return true }})
		if err == nil && !gr.Expires.After(now) {
			t.Fatalf("granted a grant that expired already: %+v", gr)
		}
		_ = g.Release("p2", 0, "a")
		if _, err := NewGranter(path, clk); err != nil {
			t.Fatalf("the granter cannot read back what it wrote: %v", err)
		}
	})
}
