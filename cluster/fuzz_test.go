package cluster

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/serf/serf"
)

// FuzzPeersFile: peers.json from a crash or a hand edit yields a list of
// peers (maybe none) to rejoin, never a panic.
func FuzzPeersFile(f *testing.F) {
	good, _ := json.Marshal([]peer{{Name: "a", Addr: "127.0.0.1:7946"}, {Name: "b", Addr: "[::1]:7946"}})
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		var ps []peer
		if json.Unmarshal(b, &ps) != nil {
			return // loadPeers logs it and starts from the snapshot
		}
		book := newPeerBook("self", time.Hour)
		book.load(ps, time.Now())
		for _, p := range book.list(time.Now(), map[string]bool{}) {
			_ = p.Name + p.Addr
		}
	})
}

// FuzzPinsFile: pins.json either loads into pins that refuse a name
// coming back with another key, or is refused with an error saying what
// to do; never a panic.
func FuzzPinsFile(f *testing.F) {
	good, _ := json.Marshal(map[string]string{"a": strings.Repeat("A", 43), "b": strings.Repeat("B", 43)})
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "pins.json")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := loadPins(path)
		if err != nil {
			if !strings.Contains(err.Error(), "pinned node keys") {
				t.Fatalf("the error does not say which file: %v", err)
			}
			return
		}
		for name, key := range p.keys {
			if key != "" && p.check(name, key+"x") == nil {
				t.Fatalf("%q came back with another key and got in", name)
			}
		}
		if err := p.check("new-member", "K"); err != nil {
			t.Fatalf("a new member's key is pinned on sight: %v", err)
		}
		if err := p.save(); err != nil {
			t.Fatal(err)
		}
		if _, err := loadPins(path); err != nil {
			t.Fatalf("pins do not read back what they wrote: %v", err)
		}
	})
}

// FuzzMemberTags: the tags a joiner or a gossiped member carries (p, v, k
// and the user's), one "key=value" a line, are judged by the merge
// delegate without a panic; a protocol range that does not parse is
// refused.
func FuzzMemberTags(f *testing.F) {
	f.Add("p=1-2\nv=2.0.0\nk="+strings.Repeat("A", 43)+"\nzone=a", "1-1")
	f.Add("p=99999999999999999999-1", "1-2")
	f.Add("p=2-1\nk=", "")
	f.Fuzz(func(t *testing.T, tags, other string) {
		m := &serf.Member{Name: "j", Tags: map[string]string{}, Status: serf.StatusAlive}
		for _, line := range strings.Split(tags, "\n") {
			k, v, _ := strings.Cut(line, "=")
			m.Tags[k] = v
		}
		d := newMergeDelegate("self", ProtocolRange{1, 2}, slog.New(slog.DiscardHandler))
		pins, _ := loadPins("")
		d.pins = pins
		r, perr := ParseProtocolRange(other)
		view := []Member{{Name: "self", Status: "alive", Protocol: ProtocolRange{1, 2}}}
		if perr == nil {
			view = append(view, Member{Name: "o", Status: "alive", Protocol: r})
		}
		setView(d, view...)
		err := d.NotifyMerge([]*serf.Member{m})
		if _, perr := ParseProtocolRange(m.Tags[TagProtocol]); perr != nil && err == nil {
			t.Fatalf("let in a member with protocol tag %q", m.Tags[TagProtocol])
		}
		_ = toMember(*m)
		_ = d.NotifyMerge([]*serf.Member{m, serfMember("o2", other)})
	})
}
