package cluster

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseKey(t *testing.T) {
	k, err := GenerateKey()
	require.NoError(t, err)
	b, err := ParseKey(k)
	require.NoError(t, err)
	assert.Len(t, b, 32)

	_, err = ParseKey("not base64!!")
	assert.ErrorContains(t, err, "not valid base64")
	_, err = ParseKey("c2hvcnQ=") // "short"
	assert.ErrorContains(t, err, "is 5 bytes, want 16, 24 or 32")
}

func TestLoadKeyring(t *testing.T) {
	kr, _, err := LoadKeyring("", "")
	require.NoError(t, err)
	assert.Nil(t, kr, "no key, no encryption")

	k1, _ := GenerateKey()
	k2, _ := GenerateKey()
	k3, _ := GenerateKey()
	path := filepath.Join(t.TempDir(), "keyring.json")

	kr, ignored, err := LoadKeyring(k1, path)
	require.NoError(t, err)
	assert.False(t, ignored)
	require.Len(t, kr.GetKeys(), 1)
	require.FileExists(t, path, "keyring file is created from --encrypt")
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the keyring file is secret")

	// A rotation rewrote the file: k2 primary, k1 still installed.
	require.NoError(t, os.WriteFile(path, []byte(`["`+k2+`","`+k1+`"]`), 0o600))
	kr, _, err = LoadKeyring("", path)
	require.NoError(t, err)
	primary, _ := ParseKey(k2)
	assert.Equal(t, primary, kr.GetPrimaryKey())
	assert.Len(t, kr.GetKeys(), 2)

	// The file wins over the seed key once it exists: a key removed at
	// runtime must not come back with the restart's --encrypt.
	kr, ignored, err = LoadKeyring(k1, path)
	require.NoError(t, err)
	assert.False(t, ignored, "k1 is in the file")
	assert.Equal(t, primary, kr.GetPrimaryKey(), "the file's primary, not --encrypt's key")
	kr, ignored, err = LoadKeyring(k3, path)
	require.NoError(t, err)
	assert.True(t, ignored, "k3 is not in the file: the caller warns")
	assert.Len(t, kr.GetKeys(), 2)

	require.NoError(t, os.WriteFile(path, []byte(`{"x":1}`), 0o600))
	_, _, err = LoadKeyring("", path)
	assert.ErrorContains(t, err, "JSON array")
	require.NoError(t, os.WriteFile(path, []byte(`[]`), 0o600))
	_, _, err = LoadKeyring("", path)
	assert.ErrorContains(t, err, "holds no key")

	_, _, err = LoadKeyring("", filepath.Join(t.TempDir(), "missing"))
	assert.ErrorContains(t, err, "read keyring file")
}
