package cluster

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestProfilesValidate(t *testing.T) {
	for _, p := range Profiles {
		c := TestConfig("n1")
		c.Profile = p
		require.NoError(t, c.Validate(), p)
		assert.NotNil(t, c.serfConfig(0).MemberlistConfig, p)
	}
	c := TestConfig("n1")
	c.Profile = "turbo"
	assert.ErrorContains(t, c.Validate(), "want one of lan, wan, local, fast, local-large")
}

// TestLocalLargeLeavesTimeToRefute checks the profile's claims at 100
// members: a suspect has well over the few seconds an agent takes to
// restart before it is declared failed, and the direct probe waits long
// enough for a process that waits for a core.
func TestLocalLargeLeavesTimeToRefute(t *testing.T) {
	c := TestConfig("n1")
	c.Profile = ProfileLocalLarge
	ml := c.serfConfig(0).MemberlistConfig
	const members = 100
	// memberlist's suspicionTimeout: mult x max(1, log10(n)) x interval.
	minSuspicion := time.Duration(float64(ml.SuspicionMult) * math.Max(1, math.Log10(members)) * float64(ml.ProbeInterval))
	assert.GreaterOrEqual(t, minSuspicion, 15*time.Second)
	assert.LessOrEqual(t, time.Duration(ml.SuspicionMaxTimeoutMult)*minSuspicion, 100*time.Second, "a dead agent is still declared")
	assert.GreaterOrEqual(t, ml.ProbeTimeout, time.Second)
	assert.Less(t, ml.ProbeTimeout, ml.ProbeInterval, "indirect probes need the rest of the interval")
}
