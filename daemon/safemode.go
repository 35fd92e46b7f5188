package daemon

import (
	"fmt"
	"strings"
)

// safeMode says which rollout engines of this agent are in safe mode and
// why (one line, for systemd's STATUS and /v1/health), or "".
func (a *Agent) safeMode() string {
	var lines []string
	for _, e := range a.engines() {
		if why, _ := e.SafeMode(); why != "" {
			lines = append(lines, fmt.Sprintf("%s rollouts in %s", e.Target(), why))
		}
	}
	return strings.Join(lines, "; ")
}
