package upgrade

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"

	"github.com/peerd/peerd/internal/identity"
)

// TagRollout is the member tag carrying a node's rollout progress, in the
// form "<plan short ID>:<wave>:<phase>[:<signature>]". It must stay short:
// memberlist caps all of a node's tags at 512 bytes.
const TagRollout = "r"

// Progress is one node's rollout progress as its tag tells it.
//
// A node signs the phases others act on as final - done, and aborted -
// with its identity key: a granter lets a finished holder leave its grant
// and the next wave go, so that state must be the node's own word, not a
// tag another member gossiped in its name. Other phases only ever make
// others wait, and travel unsigned (a signature is 86 of the tags' 512
// bytes).
type Progress struct {
	PlanShort string
	Wave      int
	Phase     Phase
	Sig       []byte
}

// signedPhase reports whether a phase's tag carries a signature.
func signedPhase(p Phase) bool { return p == PhaseDone || p == PhaseAborted }

// String is the tag value.
func (p Progress) String() string {
	s := fmt.Sprintf("%s:%d:%s", p.PlanShort, p.Wave, p.Phase)
	if len(p.Sig) > 0 {
		s += ":" + base64.RawURLEncoding.EncodeToString(p.Sig)
	}
	return s
}

// ParseProgress decodes a rollout tag; ok is false for an empty or foreign value.
func ParseProgress(tag string) (Progress, bool) {
	parts := strings.Split(tag, ":")
	if (len(parts) != 3 && len(parts) != 4) || parts[0] == "" {
		return Progress{}, false
	}
	w, err := strconv.Atoi(parts[1])
	if err != nil || w < 0 {
		return Progress{}, false
	}
	p := Progress{PlanShort: parts[0], Wave: w, Phase: Phase(parts[2])}
	if len(parts) == 4 {
		if p.Sig, err = base64.RawURLEncoding.DecodeString(parts[3]); err != nil {
			return Progress{}, false
		}
	}
	return p, true
}

// stateMessage is what a node signs of its progress: its name, the tag
// (so a state for one target cannot pass for another's), and the state.
func stateMessage(node, tagKey string, p Progress) []byte {
	return fmt.Appendf(nil, "%s\x00%s\x00%s\x00%d\x00%s", node, tagKey, p.PlanShort, p.Wave, p.Phase)
}

// verifiedBy reports whether the progress carries key's signature (a
// progress whose phase needs none is taken as it is).
func (p Progress) verifiedBy(key string, node, tagKey string) bool {
	if !signedPhase(p.Phase) {
		return true
	}
	pub, err := identity.Parse(key)
	return err == nil && pub.Verify(domainState, stateMessage(node, tagKey, p), p.Sig)
}
