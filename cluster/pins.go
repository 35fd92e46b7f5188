package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"

	"github.com/peerd/peerd/internal/durable"
)

// TagKey carries a node's public identity key (internal/identity). Each
// node pins the key it first saw for a name, and refuses that name with
// any other key: a member cannot come back as another member, and what a
// member signs can be checked against a key nobody else can swap.
const TagKey = "k"

// pins are the identity keys this node has seen, by member name, kept in
// a file beside the Serf snapshot. Pinning is on first sight: a cluster's
// keyring keeps outsiders from being seen at all.
type pins struct {
	path string

	mu   sync.Mutex
	keys map[string]string // member name → its pinned key
	// names is keys reversed, kept with it: the peer API asks memberOf
	// on every request, which a scan of a large fleet's pins would slow.
	// Two names may pin one key (a node renamed on its old data dir);
	// names then holds the first pinned (on load, the least name).
	names map[string]string
	dirty bool
}

func loadPins(path string) (*pins, error) {
	p := &pins{path: path, keys: map[string]string{}, names: map[string]string{}}
	if path == "" {
		return p, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pinned node keys: %w", err)
	}
	if err := json.Unmarshal(b, &p.keys); err != nil {
		return nil, fmt.Errorf("pinned node keys %s are corrupt: %w; restore the file, or remove it to pin every member's key afresh on sight", path, err)
	}
	if p.keys == nil {
		// "null" decodes to no map at all: the first member to join
		// would panic the agent under memberlist's lock.
		p.keys = map[string]string{}
	}
	for _, name := range slices.Sorted(maps.Keys(p.keys)) {
		p.nameKeyLocked(name, p.keys[name])
	}
	return p, nil
}

// nameKeyLocked notes key as name's in names, unless another name has it.
func (p *pins) nameKeyLocked(name, key string) {
	if _, ok := p.names[key]; !ok {
		p.names[key] = name
	}
}

// check pins name's key on first sight and refuses another key later. A
// member that advertises no key (an agent from before node keys) is let
// in; nothing it says is counted where a signature is needed.
func (p *pins) check(name, key string) error {
	if key == "" {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch pinned, ok := p.keys[name]; {
	case !ok:
		p.keys[name] = key
		p.nameKeyLocked(name, key)
		p.dirty = true
	case pinned != key:
		return fmt.Errorf("member %s comes with identity key %.12s…, not the key %.12s… this node pinned for it: "+
			"another node may be using its name; if %s lost its data dir and made a new key, run 'peerd forget %s' on the other nodes", name, key, pinned, name, name)
	}
	return nil
}

// key is the key pinned for name, or "".
func (p *pins) key(name string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.keys[name]
}

// memberOf is the member key was pinned for, or "".
func (p *pins) memberOf(key string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.names[key]
}

// forget unpins name: its next key is pinned on sight. It returns the key
// it unpinned, "" if none was pinned.
func (p *pins) forget(name string) (string, error) {
	p.mu.Lock()
	key, ok := p.keys[name]
	delete(p.keys, name)
	if ok && p.names[key] == name {
		delete(p.names, key)
		// Another name may pin the same key; forgetting is rare, so a
		// scan for it is fine here.
		for _, other := range slices.Sorted(maps.Keys(p.keys)) {
			if p.keys[other] == key {
				p.names[key] = other
				break
			}
		}
	}
	p.dirty = p.dirty || ok
	p.mu.Unlock()
	return key, p.save()
}

// save writes the pins if they changed. It runs outside memberlist's lock
// (the merge delegate only marks them dirty): a node that dies in between
// pins those keys again on sight.
func (p *pins) save() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.dirty || p.path == "" {
		return nil
	}
	b, _ := json.Marshal(p.keys)
	if err := durable.WriteFile(p.path, b, 0o600); err != nil {
		return fmt.Errorf("save pinned node keys: %w", err)
	}
	p.dirty = false
	return nil
}
