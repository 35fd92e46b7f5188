package identity

import (
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type vote struct {
	Voter   string `json:"voter"`
	Granted bool   `json:"granted"`
}

func TestSealOpen(t *testing.T) {
	alice, bob := New(), New()
	keyOf := func(k Key) func(any) (PublicKey, error) { return func(any) (PublicKey, error) { return k.Public, nil } }
	b, err := alice.Seal("vote", vote{"alice", true})
	require.NoError(t, err)

	var v vote
	require.NoError(t, Open("vote", b, &v, keyOf(alice)))
	assert.Equal(t, vote{"alice", true}, v)

	assert.ErrorContains(t, Open("vote", b, &v, keyOf(bob)), "does not verify", "another member's key")
	assert.ErrorContains(t, Open("event", b, &v, keyOf(alice)), "does not verify", "a signature is bound to its domain")

	var s Signed
	require.NoError(t, json.Unmarshal(b, &s))
	s.Body = []byte(`{"voter":"alice","granted":false}`)
	tampered, _ := json.Marshal(s)
	assert.ErrorContains(t, Open("vote", tampered, &v, keyOf(alice)), "does not verify", "a changed body")
	s.Sig = s.Sig[:63]
	short, _ := json.Marshal(s)
	assert.ErrorContains(t, Open("vote", short, &v, keyOf(alice)), "does not verify", "a truncated signature")

	for _, junk := range []string{"", "null", "{}", `{"b":1}`, `[]`, "\xff"} {
		assert.Error(t, Open("vote", []byte(junk), &v, keyOf(alice)), "%q", junk)
	}
}

func TestLoadOrCreateKeepsTheKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	k1, err := LoadOrCreate(path)
	require.NoError(t, err)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	k2, err := LoadOrCreate(path)
	require.NoError(t, err)
	assert.True(t, k1.Public.Equal(k2.Public), "the same key on every start")

	require.NoError(t, os.WriteFile(path, []byte("not a key\n"), 0o600))
	_, err = LoadOrCreate(path)
	assert.ErrorContains(t, err, "is not a key")
	b, _ := os.ReadFile(path)
	assert.Equal(t, "not a key\n", string(b), "a bad key file is never replaced")
}

func TestCertificateCarriesTheKey(t *testing.T) {
	k := New()
	cert, err := k.Certificate("node1")
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	require.NoError(t, err)
	got, err := KeyOfCertificate([]*x509.Certificate{leaf})
	require.NoError(t, err)
	assert.True(t, got.Equal(k.Public))
	_, err = KeyOfCertificate(nil)
	assert.Error(t, err)
}
