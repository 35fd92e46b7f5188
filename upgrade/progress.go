package upgrade

import (
	"fmt"
	"strconv"
	"strings"
)

// TagRollout is the member tag carrying a node's rollout progress, in the
// form "<plan short ID>:<wave>:<phase>". It must stay short: memberlist caps
// all of a node's tags at 512 bytes.
const TagRollout = "r"

// Progress is one node's rollout progress as its tag tells it.
type Progress struct {
	PlanShort string
	Wave      int
	Phase     Phase
}

// String is the tag value.
func (p Progress) String() string {
	return fmt.Sprintf("%s:%d:%s", p.PlanShort, p.Wave, p.Phase)
}

// ParseProgress decodes a rollout tag; ok is false for an empty or foreign value.
func ParseProgress(tag string) (Progress, bool) {
	parts := strings.Split(tag, ":")
	if len(parts) != 3 || parts[0] == "" {
		return Progress{}, false
	}
	w, err := strconv.Atoi(parts[1])
	if err != nil {
		return Progress{}, false
	}
	return Progress{PlanShort: parts[0], Wave: w, Phase: Phase(parts[2])}, true
}
