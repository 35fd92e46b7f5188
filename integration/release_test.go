package integration

import (
	"bytes"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReleaseBuildReadsNoTestVariables: test hooks are compiled in only
// with -tags testhooks; a build without it must not even name a
// PEERD_TEST_* variable, so no environment can switch one on.
func TestReleaseBuildReadsNoTestVariables(t *testing.T) {
	release, err := os.ReadFile(bins["v2"])
	require.NoError(t, err)
	assert.False(t, bytes.Contains(release, []byte("PEERD_TEST_")), "a release build names a PEERD_TEST_ variable")
	test, err := os.ReadFile(bins["v1"])
	require.NoError(t, err)
	assert.True(t, bytes.Contains(test, []byte("PEERD_TEST_HOOK_DIR")), "the test build reads the hook dir (so the check above can fail)")
}
