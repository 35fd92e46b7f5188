package upgrade

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/peerd/peerd/upgrade/plan"
)

// checkPatch is the origin's check of a plan's patch before it announces
// the plan: the patch must fit the sizes the plan declares, and where this
// node holds the patch's base version (it runs it, or keeps it in its
// version store) the patch is applied to it and must build the artifact
// byte for byte. A patch that fails here would fail on every node of that
// version; refusing it now tells the operator at once, rather than leaving
// every node to fall back to the full artifact. It returns the line that
// the trigger's checks report.
func (e *Engine) checkPatch(p *plan.Compiled) (string, error) {
	pp := patchOf(p)
	f, err := e.store.Open(p.Patch.SHA256)
	if err != nil {
		return "", fmt.Errorf("patch %s: %w", pp.Name, err)
	}
	defer f.Close()
	base, where := e.patchBase(p.Patch.FromVersion)
	if base == "" {
		head := make([]byte, 32)
		n, err := io.ReadFull(f, head)
		if err != nil && n == 0 {
			return "", fmt.Errorf("patch %s: read: %w", pp.Name, err)
		}
		if err := artifact.CheckPatchHeader(head[:n], pp); err != nil {
			return "", err
		}
		running, _ := e.target.Running()
		return fmt.Sprintf("patch from %s: %d bytes, its header fits the plan; not applied here (this node runs %s and keeps no %s binary): nodes at %s check what it builds and fall back to the full artifact",
			p.Patch.FromVersion, p.Patch.Size, running, p.Patch.FromVersion, p.Patch.FromVersion), nil
	}
	var out bytes.Buffer
	if err := artifact.ApplyPatch(base, f, &out, pp); err != nil {
		return "", fmt.Errorf("%w: make the patch again from the %s release to the artifact ('peerd mkpatch OLD NEW PATCH')", err, p.Patch.FromVersion)
	}
	sum := sha256.Sum256(out.Bytes())
	if got := hex.EncodeToString(sum[:]); got != p.Artifact.SHA256 {
		return "", fmt.Errorf("patch %s applied to %s (%s, %s) builds sha256 %s, not the artifact's %s: make the patch from the %s release binary to this artifact ('peerd mkpatch OLD NEW PATCH'), or check --patch-from",
			pp.Name, where, p.Patch.FromVersion, base, short(got), short(p.Artifact.SHA256), p.Patch.FromVersion)
	}
	return fmt.Sprintf("patch from %s: %d bytes, applied to %s it builds the artifact (sha256 %s); nodes at another version fetch the full artifact",
		p.Patch.FromVersion, p.Patch.Size, where, short(p.Artifact.SHA256)), nil
}

// patchBase is a binary of version on this node: the running one, or one
// the version store keeps; where says which, for messages.
func (e *Engine) patchBase(version string) (path, where string) {
	running, runningPath := e.target.Running()
	if running == version && runningPath != "" {
		return runningPath, "this node's running binary"
	}
	if b, ok := e.target.Versions().Stored(version); ok {
		return b.Path, "this node's stored binary"
	}
	return "", ""
}
