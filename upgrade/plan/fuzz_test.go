package plan

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/peerd/peerd/upgrade/piece"
)

// FuzzDecodeCompiled: plan bytes fetched from a peer (their hash matches
// the announced ID, so anything a member encodes gets here) either fail to
// decode or compile into waves that cover each snapshot member once, the
// same on every decode.
func FuzzDecodeCompiled(f *testing.F) {
	p := Plan{
		Target: "peerd", Version: "2.0.0",
		Artifact: Artifact{SHA256: hex.EncodeToString(make([]byte, 32)), Size: 1},
		Options:  Options{Batch: 1, Canary: 1, ByTag: "zone", Deadline: time.Minute},
		Members:  []Member{{Name: "a", Tag: "x"}, {Name: "b", Tag: "y"}, {Name: "c", Tag: "x"}},
		Origin:   "a", Seq: 3,
	}
	b, err := p.Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	p.Options = Options{MaxUnavailable: "50%", Deadline: time.Minute}
	b, _ = p.Encode()
	f.Add(b)
	// A piece list, as a plan made since pieces carries.
	p.Artifact.Pieces = &piece.List{Size: piece.MinSize, SHA256: []string{hex.EncodeToString(make([]byte, 32))}}
	b, _ = p.Encode()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		sum := sha256.Sum256(b)
		id := hex.EncodeToString(sum[:])
		c, err := DecodeCompiled(id, b)
		if err != nil {
			return
		}
		if c.Validate() == nil && c.Artifact.Pieces != nil {
			// A valid plan's list covers exactly the declared size.
			l := c.Artifact.Pieces
			if last := l.Count() - 1; l.Offset(last)+l.Len(last, c.Artifact.Size) != c.Artifact.Size {
				t.Fatalf("pieces of a valid plan cover %d bytes, not %d", l.Offset(last)+l.Len(last, c.Artifact.Size), c.Artifact.Size)
			}
		}
		seen := map[string]int{}
		for i, w := range c.Waves {
			if w.Index != i {
				t.Fatalf("wave %d has index %d", i, w.Index)
			}
			for _, n := range w.Nodes {
				seen[n]++
				if c.WaveOf(n) != i {
					t.Fatalf("%s is in wave %d but WaveOf says %d", n, i, c.WaveOf(n))
				}
			}
		}
		for _, m := range c.Members {
			if seen[m.Name] != 1 {
				t.Fatalf("member %q is in %d waves", m.Name, seen[m.Name])
			}
		}
		again, err := DecodeCompiled(id, b)
		if err != nil || len(again.Waves) != len(c.Waves) {
			t.Fatalf("a second decode disagrees: %v", err)
		}
	})
}
