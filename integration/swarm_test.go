package integration

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// originBytes sums, over the agents' logs, what each fetch says it took
// from origin: a fetch by pieces logs its origin_bytes, a whole fetch from
// the origin counts the artifact's size. Logs, not the origin's counter,
// since the origin restarts in its own wave.
func originBytes(t *testing.T, agents []*agent, origin string, size int64) (total int64, byPieces, whole int) {
	for _, line := range strings.Split(allLogs(t, agents), "\n") {
		if !strings.Contains(line, `msg="fetched artifact"`) {
			continue
		}
		if m := originBytesRe.FindStringSubmatch(line); m != nil && strings.Contains(line, " from=pieces ") {
			n, err := strconv.ParseInt(m[1], 10, 64)
			require.NoError(t, err)
			total += n
			byPieces++
			continue
		}
		whole++
		if strings.Contains(line, " from="+origin+" ") {
			total += size
		}
	}
	return total, byPieces, whole
}

// TestSwarmOriginEgress: 20 real agents in waves of 10. The first wave's
// ten nodes prepare at once and take the artifact by pieces from each
// other, so the origin serves at most 1.5 copies of it in all (the whole
// fetch each of them made before pieces would be 9 copies).
func TestSwarmOriginEgress(t *testing.T) {
	const nodes = 20
	agents := startFleet(t, nodes, "--allow-unsigned")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, agents[0].bin, "upgrade", "--to", "2.0.0", "--artifact", bins["v2"], "--batch", "10",
		"--min-healthy", "1s", "--deadline", "2m")
	cmd.Env = append(os.Environ(), "PEERD_SOCKET="+agents[0].socket())
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "peerd upgrade:\n%s", out)
	for _, a := range agents {
		info, err := a.info()
		require.NoError(t, err)
		assert.Equal(t, "2.0.0", info.Build.Version, a.name)
	}
	size := fileSize(t, bins["v2"])
	total, byPieces, whole := originBytes(t, agents, agents[0].name, size)
	copies := float64(total) / float64(size)
	t.Logf("%d agents, artifact %d bytes: the origin served %.2f copies; %d fetches by pieces, %d whole", nodes, size, copies, byPieces, whole)
	assert.Equal(t, nodes-1, byPieces, "every node but the origin fetched by pieces")
	assert.Zero(t, whole, "no fetch fell back to the whole artifact")
	assert.LessOrEqual(t, copies, 1.5, "origin egress")
}
