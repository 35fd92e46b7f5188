// Package identity is a node's ed25519 identity key: made on first start in
// the data dir, never sent anywhere, its public half advertised in the
// node's (encrypted) gossip tags and pinned by every other node. Whatever a
// node says that others act on - its lease votes, its release of a lease,
// the plans it made, its operator actions, its finished state - it signs
// with this key, so that no other member can speak for it.
package identity

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/peerd/peerd/internal/durable"
)

// Key is a node's identity: the private key signs, the public one checks.
type Key struct {
	private ed25519.PrivateKey
	Public  PublicKey
}

// PublicKey is a node's public key.
type PublicKey ed25519.PublicKey

// FileName is the identity key's file in the data dir.
const FileName = "node.key"

// LoadOrCreate reads the key at path, or makes one there (mode 0600) when
// there is none. A file that is not a key is an error, never replaced: the
// other nodes pinned its public half, and a new one would lock the node out.
func LoadOrCreate(path string) (Key, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return Key{}, fmt.Errorf("make the node's identity key: %w", err)
		}
		seed := base64.StdEncoding.EncodeToString(priv.Seed())
		if err := durable.WriteFile(path, []byte(seed+"\n"), 0o600); err != nil {
			return Key{}, fmt.Errorf("save the node's identity key: %w", err)
		}
		return fromPrivate(priv), nil
	}
	if err != nil {
		return Key{}, fmt.Errorf("read the node's identity key: %w", err)
	}
	seed, err := base64.StdEncoding.DecodeString(string(trimSpace(b)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return Key{}, fmt.Errorf("identity key %s is not a key (want %d base64 bytes): restore it from a backup; "+
			"only if it is lost for good, remove it and have the other nodes forget this one ('peerd forget NODE')", path, ed25519.SeedSize)
	}
	return fromPrivate(ed25519.NewKeyFromSeed(seed)), nil
}

// New makes a key that is not saved anywhere (tests).
func New() Key {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	return fromPrivate(priv)
}

func fromPrivate(priv ed25519.PrivateKey) Key {
	return Key{private: priv, Public: PublicKey(priv.Public().(ed25519.PublicKey))}
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// Sign signs msg in a domain (what the message is), so that a signature
// made for one purpose cannot pass for another.
func (k Key) Sign(domain string, msg []byte) []byte {
	return ed25519.Sign(k.private, tagged(domain, msg))
}

// Verify reports whether sig is pub's signature of msg in domain.
func (pub PublicKey) Verify(domain string, msg, sig []byte) bool {
	if len(pub) != ed25519.PublicKeySize || len(sig) != ed25519.SignatureSize {
		return false
	}
	return verified.check(pub, tagged(domain, msg), sig)
}

func tagged(domain string, msg []byte) []byte {
	out := make([]byte, 0, len(domain)+1+len(msg))
	out = append(out, domain...)
	out = append(out, 0)
	return append(out, msg...)
}

// String is the key as tags and files carry it: unpadded base64url, 43
// characters.
func (pub PublicKey) String() string { return base64.RawURLEncoding.EncodeToString(pub) }

// Parse reads a key written by String.
func Parse(s string) (PublicKey, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("node key %.50q: want %d bytes in unpadded base64url", s, ed25519.PublicKeySize)
	}
	return PublicKey(b), nil
}

// Equal reports whether two keys are the same.
func (pub PublicKey) Equal(other PublicKey) bool {
	return ed25519.PublicKey(pub).Equal(ed25519.PublicKey(other))
}

// Signed is a message and its signer's signature, as it travels in a Serf
// query, answer or event: the body is kept as the signer encoded it, so
// that what is checked is what was signed.
type Signed struct {
	Body json.RawMessage `json:"b"`
	Sig  []byte          `json:"s"`
}

// Seal encodes v and signs it in domain.
func (k Key) Seal(domain string, v any) ([]byte, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return json.Marshal(Signed{Body: body, Sig: k.Sign(domain, body)})
}

// Open decodes a sealed message into v without checking it yet: the signer
// is named inside (keyOf finds its key), so the body is decoded first and
// checked right after. It fails unless the signature verifies.
func Open(domain string, b []byte, v any, keyOf func(v any) (PublicKey, error)) error {
	var s Signed
	if err := json.Unmarshal(b, &s); err != nil || len(s.Body) == 0 {
		return errors.New("not a signed message")
	}
	if err := json.Unmarshal(s.Body, v); err != nil {
		return fmt.Errorf("signed message: %w", err)
	}
	pub, err := keyOf(v)
	if err != nil {
		return err
	}
	if !pub.Verify(domain, s.Body, s.Sig) {
		return errors.New("the signature does not verify against the sender's pinned key")
	}
	return nil
}

// verified caches signatures that checked out: a node checks each peer's
// finished state once per change, but a process hosting a thousand nodes
// (the fleet harness) would check each a thousand times. A signature's
// validity never changes, so remembering it is exact.
var verified = &sigCache{ok: map[[32]byte]bool{}}

type sigCache struct {
	mu sync.Mutex
	ok map[[32]byte]bool
}

// maxCached bounds the cache; past it, it starts afresh.
const maxCached = 1 << 16

func (c *sigCache) check(pub PublicKey, msg, sig []byte) bool {
	h := sha256.New()
	h.Write(pub)
	h.Write(sig)
	h.Write(msg)
	var k [32]byte
	h.Sum(k[:0])
	c.mu.Lock()
	ok, hit := c.ok[k]
	c.mu.Unlock()
	if hit {
		return ok
	}
	ok = ed25519.Verify(ed25519.PublicKey(pub), msg, sig)
	c.mu.Lock()
	if len(c.ok) >= maxCached {
		clear(c.ok)
	}
	c.ok[k] = ok
	c.mu.Unlock()
	return ok
}
