package plan

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// Compiled is a plan as the engine uses it: encoded, hashed and split into
// waves once, when it is made or decoded. Everything a step or a vote asks
// of a plan (its ID, a node's wave) is a lookup here; nothing re-encodes or
// re-hashes it. A Compiled is immutable and safe to share.
type Compiled struct {
	Plan
	// ID is the sha256 of Encoded; Short its first 8 hex digits.
	ID, Short string
	// Encoded is the canonical encoding, as served to peers.
	Encoded []byte
	Waves   []Wave
	// Sig is the origin's signature of the ID with its identity key. It
	// is not part of the plan's content (which the ID hashes).
	Sig  []byte
	wave map[string]int
	keys map[string]string
}

// Compile encodes p once and derives its ID and waves. A plan whose waves
// cannot be computed (Validate says why) does not compile.
func Compile(p Plan) (*Compiled, error) {
	b, err := p.Encode()
	if err != nil {
		return nil, err
	}
	return compile(p, b)
}

// DecodeCompiled decodes a plan fetched by its ID: b must hash to id. The
// plan is what those bytes say (they need not be canonical: every node
// that holds the ID holds the same bytes, and the waves derive from the
// ID), so decoding never encodes.
func DecodeCompiled(id string, b []byte) (*Compiled, error) {
	sum := sha256.Sum256(b)
	if hex.EncodeToString(sum[:]) != id {
		return nil, fmt.Errorf("plan content does not hash to its ID %.8s", id)
	}
	p, err := Decode(b)
	if err != nil {
		return nil, err
	}
	return compile(p, b)
}

func compile(p Plan, encoded []byte) (*Compiled, error) {
	sum := sha256.Sum256(encoded)
	id := hex.EncodeToString(sum[:])
	waves, err := p.wavesFor(id)
	if err != nil {
		return nil, err
	}
	c := &Compiled{Plan: p, ID: id, Short: id[:8], Encoded: encoded, Waves: waves, wave: map[string]int{}, keys: map[string]string{}}
	for _, w := range waves {
		for _, n := range w.Nodes {
			c.wave[n] = w.Index
		}
	}
	for _, m := range p.Members {
		c.keys[m.Name] = m.Key
	}
	return c, nil
}

// KeyOf is the identity key the snapshot records for node ("" for none,
// or a node not in it).
func (c *Compiled) KeyOf(node string) string { return c.keys[node] }

// WaveOf is node's wave index, or -1 when the node is not in the snapshot.
func (c *Compiled) WaveOf(node string) int {
	if w, ok := c.wave[node]; ok {
		return w
	}
	return -1
}

// InSnapshot reports whether node is a member of the plan's snapshot.
func (c *Compiled) InSnapshot(node string) bool {
	_, ok := c.wave[node]
	return ok
}
