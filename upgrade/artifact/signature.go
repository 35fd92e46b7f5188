package artifact

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"os"
	"strings"

	"aead.dev/minisign"
)

// untrustedComment is the signature's first line. Nothing reads it back: it
// is not covered by the signature.
const untrustedComment = "signature from peerd sign"

// Sign signs data with a minisign private key, putting m's TrustedComment in
// the signature's trusted comment, and returns the signature file text as
// `minisign -S -t` would write it (legacy, non-prehashed Ed25519, which every
// minisign version verifies). It refuses a manifest that is incomplete or
// does not describe data, since such a signature would vouch for nothing.
func Sign(key minisign.PrivateKey, data []byte, m Manifest) ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	sha, size, err := Digest(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if m.SHA256 != sha || m.Size != size {
		return nil, fmt.Errorf("sign: manifest names sha256 %s size %d, but the data has sha256 %s size %d", m.SHA256, m.Size, sha, size)
	}
	return minisign.SignWithComments(key, data, m.TrustedComment(), untrustedComment), nil
}

// LoadTrustedKeys reads minisign public key files, as written by `minisign -G`
// (an "untrusted comment:" line, then the base64 key) or holding only the
// bare base64 key line. Each file holds one key.
func LoadTrustedKeys(paths ...string) ([]minisign.PublicKey, error) {
	keys := make([]minisign.PublicKey, 0, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read trusted key: %w", err)
		}
		k, err := parsePublicKey(string(b))
		if err != nil {
			return nil, fmt.Errorf("trusted key %s: %w (want a minisign public key file, as 'minisign -G' writes)", p, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func parsePublicKey(text string) (minisign.PublicKey, error) {
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "untrusted comment:") {
			continue
		}
		lines = append(lines, l)
	}
	var k minisign.PublicKey
	if len(lines) != 1 {
		return k, fmt.Errorf("found %d key lines, want 1", len(lines))
	}
	if err := k.UnmarshalText([]byte(lines[0])); err != nil {
		return k, err
	}
	return k, nil
}

// keyID formats a key ID as minisign prints it.
func keyID(id uint64) string { return fmt.Sprintf("%X", id) }

// VerifySignature checks sig (minisign signature text) over data against any
// of keys, and returns the Manifest its trusted comment carries. Every error
// wraps ErrBadSignature. The manifest's sha256 and size must describe data:
// a trusted signer who signed a manifest for other bytes made a mistake that
// must not be installed.
func VerifySignature(keys []minisign.PublicKey, data []byte, sig []byte) (Manifest, error) {
	if len(keys) == 0 {
		return Manifest{}, fmt.Errorf("%w: no trusted keys to verify against: give the agent the signer's public key (--trust-key)", ErrBadSignature)
	}
	sig = bytes.TrimSpace(sig)
	var s minisign.Signature
	if err := s.UnmarshalText(sig); err != nil {
		return Manifest{}, fmt.Errorf("%w: not minisign signature text: %w", ErrBadSignature, err)
	}
	var candidates []minisign.PublicKey
	for _, k := range keys {
		if k.ID() == s.KeyID {
			candidates = append(candidates, k)
		}
	}
	if len(candidates) == 0 {
		trusted := make([]string, len(keys))
		for i, k := range keys {
			trusted[i] = keyID(k.ID())
		}
		return Manifest{}, fmt.Errorf("%w: signed by key %s, which this agent does not trust (it trusts %s): sign with a trusted key or add its public key (--trust-key)",
			ErrBadSignature, keyID(s.KeyID), strings.Join(trusted, ", "))
	}
	verified := false
	for _, k := range candidates {
		if minisign.Verify(k, data, sig) {
			verified = true
			break
		}
	}
	if !verified {
		// Say which half failed: the operator fixes a wrong file differently
		// from an edited signature.
		for _, k := range candidates {
			if commentSigned(k, s) {
				return Manifest{}, fmt.Errorf("%w: the signature by key %s does not match the artifact's bytes: the artifact or its signature is not the one that was signed",
					ErrBadSignature, keyID(s.KeyID))
			}
		}
		return Manifest{}, fmt.Errorf("%w: the trusted comment of the signature by key %s was altered or the signature is corrupt",
			ErrBadSignature, keyID(s.KeyID))
	}
	m, err := ParseTrustedComment(s.TrustedComment)
	if err != nil {
		return Manifest{}, err
	}
	sha, size, err := Digest(bytes.NewReader(data))
	if err != nil {
		return Manifest{}, err
	}
	if m.SHA256 != sha || m.Size != size {
		return Manifest{}, fmt.Errorf("%w: the signed manifest names sha256 %s size %d, but the signed bytes have sha256 %s size %d: re-sign with a correct manifest ('peerd sign')",
			ErrBadSignature, m.SHA256, m.Size, sha, size)
	}
	return m, nil
}

// commentSigned reports whether s's trusted comment signature is valid under
// k, independently of the message.
func commentSigned(k minisign.PublicKey, s minisign.Signature) bool {
	raw, err := base64.StdEncoding.DecodeString(k.String())
	if err != nil || len(raw) != 10+ed25519.PublicKeySize {
		return false
	}
	msg := append(s.Signature[:], s.TrustedComment...)
	return ed25519.Verify(ed25519.PublicKey(raw[10:]), msg, s.CommentSignature[:])
}

// SignedManifest returns the manifest of sig when a key of keys signed its
// trusted comment, without the artifact's bytes: what a node can know of a
// release before it has fetched it (its piece list's root, say). Only
// VerifySignature says the bytes are the release's. Errors wrap
// ErrBadSignature.
func SignedManifest(keys []minisign.PublicKey, sig []byte) (Manifest, error) {
	var s minisign.Signature
	if err := s.UnmarshalText(bytes.TrimSpace(sig)); err != nil {
		return Manifest{}, fmt.Errorf("%w: not minisign signature text: %w", ErrBadSignature, err)
	}
	for _, k := range keys {
		if k.ID() == s.KeyID && commentSigned(k, s) {
			return ParseTrustedComment(s.TrustedComment)
		}
	}
	return Manifest{}, fmt.Errorf("%w: no trusted key signed the trusted comment of key %s", ErrBadSignature, keyID(s.KeyID))
}
