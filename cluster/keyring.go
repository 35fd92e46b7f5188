package cluster

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/hashicorp/memberlist"
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

// LoadKeyring builds the gossip keyring from an encryption key and/or a
// keyring file (a JSON array of base64 keys, the first one primary, as Serf's
// agent uses). When both are given and the file does not exist yet, the file
// is created holding the key, so later key rotations have somewhere to live.
// It returns nil, nil when gossip is not encrypted.
func LoadKeyring(encryptKey, keyringFile string) (*memberlist.Keyring, error) {
	var primary []byte
	if encryptKey != "" {
		k, err := ParseKey(encryptKey)
		if err != nil {
			return nil, err
		}
		primary = k
	}
	if keyringFile == "" {
		if primary == nil {
			return nil, nil
		}
		return memberlist.NewKeyring(nil, primary)
	}

	data, err := os.ReadFile(keyringFile)
	if errors.Is(err, os.ErrNotExist) && primary != nil {
		if err := writeKeyringFile(keyringFile, encryptKey); err != nil {
			return nil, err
		}
		return memberlist.NewKeyring(nil, primary)
	}
	if err != nil {
		return nil, fmt.Errorf("read keyring file: %w", err)
	}
	var encoded []string
	if err := json.Unmarshal(data, &encoded); err != nil {
		return nil, fmt.Errorf("keyring file %s: want a JSON array of base64 keys: %w", keyringFile, err)
	}
	if len(encoded) == 0 {
		return nil, fmt.Errorf("keyring file %s holds no key", keyringFile)
	}
	keys := make([][]byte, 0, len(encoded))
	for i, s := range encoded {
		k, err := ParseKey(s)
		if err != nil {
			return nil, fmt.Errorf("keyring file %s, key %d: %w", keyringFile, i+1, err)
		}
		keys = append(keys, k)
	}
	if primary == nil {
		primary = keys[0]
	}
	return memberlist.NewKeyring(keys, primary)
}

func writeKeyringFile(path, key string) error {
	data, _ := json.Marshal([]string{key})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("create keyring file: %w", err)
	}
	return nil
}
