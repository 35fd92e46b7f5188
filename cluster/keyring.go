package cluster

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
)

// GenerateKey returns a new random 32-byte gossip key, base64-encoded, in the
// form --encrypt and keyring files take.
func GenerateKey() (string, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return "", fmt.Errorf("read random bytes: %w", err)
	}
	return base64.StdEncoding.EncodeToString(key), nil
}

// ParseKey decodes a base64 gossip key and checks its length.
func ParseKey(s string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("gossip key is not valid base64: %w (make one with 'peerd keygen')", err)
	}
	switch len(key) {
	case 16, 24, 32:
		return key, nil
	}
	return nil, fmt.Errorf("gossip key is %d bytes, want 16, 24 or 32 (make one with 'peerd keygen')", len(key))
}

// LoadKeyring builds the gossip keyring from a keyring file (a JSON array
// of base64 keys, the primary first, as Serf's agent writes it) and an
// encryption key. The file wins once it exists: the key only seeds it at the
// first start, so keys installed, used and removed at runtime survive a
// restart (Consul's agent does the same). seedIgnored reports a key that is
// not in an existing file, for the caller to warn about. With neither it
// returns nil: gossip is not encrypted.
func LoadKeyring(encryptKey, keyringFile string) (kr *memberlist.Keyring, seedIgnored bool, err error) {
	var seed []byte
	if encryptKey != "" {
		if seed, err = ParseKey(encryptKey); err != nil {
			return nil, false, err
		}
	}
	if keyringFile == "" {
		if seed == nil {
			return nil, false, nil
		}
		kr, err = memberlist.NewKeyring(nil, seed)
		return kr, false, err
	}

	data, err := os.ReadFile(keyringFile)
	if errors.Is(err, os.ErrNotExist) && seed != nil {
		if err := writeKeyringFile(keyringFile, encryptKey); err != nil {
			return nil, false, err
		}
		kr, err = memberlist.NewKeyring(nil, seed)
		return kr, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("read keyring file: %w", err)
	}
	keys, err := ParseKeyring(data)
	if err != nil {
		return nil, false, fmt.Errorf("keyring file %s: %w", keyringFile, err)
	}
	kr, err = memberlist.NewKeyring(keys, keys[0])
	if err != nil {
		return nil, false, fmt.Errorf("keyring file %s: %w", keyringFile, err)
	}
	return kr, seed != nil && !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, seed) }), nil
}

// ParseKeyring decodes a keyring file's contents: a JSON array of base64
// gossip keys, at least one.
func ParseKeyring(data []byte) ([][]byte, error) {
	var encoded []string
	if err := json.Unmarshal(data, &encoded); err != nil {
		return nil, fmt.Errorf("want a JSON array of base64 keys: %w", err)
	}
	if len(encoded) == 0 {
		return nil, errors.New("holds no key")
	}
	keys := make([][]byte, 0, len(encoded))
	for i, s := range encoded {
		k, err := ParseKey(s)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i+1, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func writeKeyringFile(path, key string) error {
	data, _ := json.Marshal([]string{key})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("create keyring file: %w", err)
	}
	return nil
}

// KeyringResult is what the members answered to a keyring operation.
type KeyringResult struct {
	// Nodes is how many members memberlist knows; Responses how many
	// answered and Errors how many of those failed.
	Nodes, Responses, Errors int
	// Messages holds each failed member's reason.
	Messages map[string]string
	// Keys counts, per base64 key, the members that have it installed;
	// PrimaryKeys those that use it as primary (list only).
	Keys, PrimaryKeys map[string]int
}

// Keyring operations, run on every member through Serf's key manager (an
// internal query each member answers): what `peerd keyring` does.
const (
	KeyringList    = "list"
	KeyringInstall = "install"
	KeyringUse     = "use"
	KeyringRemove  = "remove"
)

// Keyring runs a keyring operation cluster-wide. key is ignored by list.
// The error reports members that failed; the result is filled either way.
// Each member persists the change in its keyring file, so it survives a
// restart.
func (c *Cluster) Keyring(op, key string) (KeyringResult, error) {
	if c.cfg.Keyring == nil {
		return KeyringResult{}, errors.New("gossip is not encrypted on this node (--insecure-gossip): there is no keyring to change")
	}
	if op != KeyringList {
		if _, err := ParseKey(key); err != nil {
			return KeyringResult{}, err
		}
	}
	km := c.serf.KeyManager()
	var resp *serf.KeyResponse
	var err error
	switch op {
	case KeyringList:
		resp, err = km.ListKeys()
	case KeyringInstall:
		resp, err = km.InstallKey(key)
	case KeyringUse:
		resp, err = km.UseKey(key)
	case KeyringRemove:
		resp, err = km.RemoveKey(key)
	default:
		return KeyringResult{}, fmt.Errorf("keyring operation %q: want list, install, use or remove", op)
	}
	if resp == nil {
		return KeyringResult{}, err
	}
	res := KeyringResult{Nodes: resp.NumNodes, Responses: resp.NumResp, Errors: resp.NumErr,
		Messages: resp.Messages, Keys: resp.Keys, PrimaryKeys: resp.PrimaryKeys}
	if err != nil || res.Errors > 0 || res.Responses < res.Nodes {
		return res, fmt.Errorf("keyring %s: %d of %d members answered, %d failed%s", op, res.Responses, res.Nodes, res.Errors, failures(res.Messages))
	}
	return res, nil
}

// failures lists the members that failed and why, sorted by name.
func failures(msgs map[string]string) string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(msgs)) {
		if msgs[name] != "" {
			fmt.Fprintf(&b, "; %s: %s", name, msgs[name])
		}
	}
	return b.String()
}
