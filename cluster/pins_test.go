package cluster

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPinsMemberOf: the reverse lookup follows pinning, forgetting and
// loading, and a key two names pinned still names a member while either
// is pinned.
func TestPinsMemberOf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pins.json")
	p, err := loadPins(path)
	require.NoError(t, err)
	assert.Empty(t, p.memberOf("KA"))

	require.NoError(t, p.check("a", "KA"))
	require.NoError(t, p.check("b", "KB"))
	require.Error(t, p.check("a", "KX"), "another key for a is refused")
	assert.Empty(t, p.memberOf("KX"), "and not pinned")
	assert.Equal(t, "a", p.memberOf("KA"))
	assert.Equal(t, "b", p.memberOf("KB"))

	// c comes with a's key (a renamed node): the key keeps naming a member.
	require.NoError(t, p.check("c", "KA"))
	assert.Equal(t, "a", p.memberOf("KA"), "the first pinned")
	_, err = p.forget("a")
	require.NoError(t, err)
	assert.Equal(t, "c", p.memberOf("KA"), "the other name that pins it")
	_, err = p.forget("c")
	require.NoError(t, err)
	assert.Empty(t, p.memberOf("KA"))

	// Loaded from the file: the least of the names that share a key.
	b, err := json.Marshal(map[string]string{"z": "KZ", "y": "KZ", "b": "KB"})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, b, 0o600))
	p, err = loadPins(path)
	require.NoError(t, err)
	assert.Equal(t, "y", p.memberOf("KZ"))
	assert.Equal(t, "b", p.memberOf("KB"))
	_, err = p.forget("b")
	require.NoError(t, err)
	assert.Empty(t, p.memberOf("KB"))
}
