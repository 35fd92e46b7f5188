package daemon

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestRestartNeeded(t *testing.T) {
	running := DefaultConfig()
	running.DataDir, running.Tags = "/d", map[string]string{"zone": "a"}
	reloaded := running
	reloaded.Tags, reloaded.LogLevel = map[string]string{"zone": "b"}, "debug"
	assert.Empty(t, restartNeeded(running, reloaded), "tags and log level are reloaded")

	reloaded.Bind, reloaded.TrustKeys = "127.0.0.1:9000", []string{"/etc/peerd/release.pub"}
	assert.Equal(t, []string{"bind", "trust_key"}, restartNeeded(running, reloaded))
}
