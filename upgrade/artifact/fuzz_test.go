package artifact

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"aead.dev/minisign"
)

// fuzzSigner is a fixed minisign key, so that the seed corpus's
// signatures are the key's own.
func fuzzSigner(tb testing.TB) (minisign.PublicKey, minisign.PrivateKey) {
	tb.Helper()
	pub, priv, err := minisign.GenerateKey(bytes.NewReader(make([]byte, 256)))
	if err != nil {
		tb.Fatal(err)
	}
	return pub, priv
}

// FuzzParseTrustedComment: a trusted comment parses to a manifest that
// encodes back to a comment naming the same artifact, or fails with
// ErrBadSignature.
func FuzzParseTrustedComment(f *testing.F) {
	m := Manifest{Target: "peerd", Version: "2.0.0", OS: "linux", Arch: "amd64", SHA256: strings.Repeat("ab", 32), Size: 12}
	f.Add(m.TrustedComment())
	m.Rollback = true
	f.Add(m.TrustedComment())
	m.PieceRoot, m.PieceSize = strings.Repeat("cd", 32), 1<<20
	f.Add(m.TrustedComment())
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseTrustedComment(s)
		if err != nil {
			if !errors.Is(err, ErrBadSignature) {
				t.Fatalf("error does not wrap ErrBadSignature: %v", err)
			}
			return
		}
		again, err := ParseTrustedComment(m.TrustedComment())
		if err != nil {
			t.Fatalf("the manifest parsed from %q does not round-trip: %v", s, err)
		}
		if again != m {
			t.Fatalf("round trip changed the manifest: %+v, then %+v", m, again)
		}
	})
}

// FuzzVerifySignature: a signature file that arrives with a plan either
// verifies (then the data is what the fixed key signed) or is refused
// with ErrBadSignature.
func FuzzVerifySignature(f *testing.F) {
	pub, priv := fuzzSigner(f)
	data := []byte("the artifact")
	sha, size, err := Digest(bytes.NewReader(data))
	if err != nil {
		f.Fatal(err)
	}
	sig, err := Sign(priv, data, Manifest{Target: "peerd", Version: "2.0.0", OS: "linux", Arch: "amd64", SHA256: sha, Size: size})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sig)
	f.Add(minisign.SignWithComments(priv, data, "not a manifest", "u"))
	f.Fuzz(func(t *testing.T, sig []byte) {
		m, err := VerifySignature([]minisign.PublicKey{pub}, data, sig)
		if err != nil {
			if !errors.Is(err, ErrBadSignature) {
				t.Fatalf("error does not wrap ErrBadSignature: %v", err)
			}
			return
		}
		if m.SHA256 != sha || m.Size != size {
			t.Fatalf("verified a manifest of other bytes: %+v", m)
		}
		if _, err := VerifySignature([]minisign.PublicKey{pub}, append(data, '!'), sig); err == nil {
			t.Fatal("the signature verified other bytes too")
		}
	})
}

// FuzzParsePublicKey: a trusted key file either parses to a key or fails.
func FuzzParsePublicKey(f *testing.F) {
	pub, _ := fuzzSigner(f)
	text, _ := pub.MarshalText()
	f.Add("untrusted comment: minisign public key\n" + string(text) + "\n")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := parsePublicKey(s)
		if err != nil {
			return
		}
		if _, err := k.MarshalText(); err != nil {
			t.Fatalf("a parsed key does not print: %v", err)
		}
	})
}
