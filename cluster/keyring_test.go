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
	kr, err := LoadKeyring("", "")
	require.NoError(t, err)
	assert.Nil(t, kr, "no key, no encryption")

	k1, _ := GenerateKey()
	k2, _ := GenerateKey()
	path := filepath.Join(t.TempDir(), "keyring.json")

	kr, err = LoadKeyring(k1, path)
	require.NoError(t, err)
	require.Len(t, kr.GetKeys(), 1)
	require.FileExists(t, path, "keyring file is created from --encrypt")

	require.NoError(t, os.WriteFile(path, []byte(`["`+k2+`","`+k1+`"]`), 0o600))
	kr, err = LoadKeyring("", path)
	require.NoError(t, err)
	primary, _ := ParseKey(k2)
	assert.Equal(t, primary, kr.GetPrimaryKey())
	assert.Len(t, kr.GetKeys(), 2)

	require.NoError(t, os.WriteFile(path, []byte(`{"x":1}`), 0o600))
	_, err = LoadKeyring("", path)
	assert.ErrorContains(t, err, "JSON array")

	_, err = LoadKeyring("", filepath.Join(t.TempDir(), "missing"))
	assert.ErrorContains(t, err, "read keyring file")
}
