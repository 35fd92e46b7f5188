package identity

import (
	"crypto/ed25519"
	"testing"
)

// fuzzKey is a fixed key, so that the seed corpus's signed envelopes verify.
var fuzzKey = fromPrivate(ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)))

type fuzzBody struct {
	Node string `json:"node"`
	N    int    `json:"n"`
}

// FuzzOpen: whatever arrives as a signed envelope, Open fails with an
// error or yields a body the key really signed in that domain.
func FuzzOpen(f *testing.F) {
	good, err := fuzzKey.Seal("peerd/test/1", fuzzBody{Node: "a", N: 1})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"b":null,"s":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var v fuzzBody
		err := Open("peerd/test/1", b, &v, func(any) (PublicKey, error) { return fuzzKey.Public, nil })
		if err != nil {
			return
		}
		// Only what the key signed opens: the same bytes under another
		// domain, or another key, must not.
		if Open("peerd/other/1", b, &v, func(any) (PublicKey, error) { return fuzzKey.Public, nil }) == nil {
			t.Fatal("an envelope opened in a domain it was not signed in")
		}
		if Open("peerd/test/1", b, &v, func(any) (PublicKey, error) { return New().Public, nil }) == nil {
			t.Fatal("an envelope opened under a key that did not sign it")
		}
	})
}

// FuzzParse: a key tag (cluster tag k) either parses to a key of the
// right size that prints back the same, or fails.
func FuzzParse(f *testing.F) {
	f.Add(fuzzKey.Public.String())
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		pub, err := Parse(s)
		if err != nil {
			return
		}
		if len(pub) != ed25519.PublicKeySize {
			t.Fatalf("parsed a %d-byte key", len(pub))
		}
		if pub.Verify("d", []byte("m"), make([]byte, ed25519.SignatureSize)) {
			t.Fatal("a zero signature verified")
		}
	})
}
