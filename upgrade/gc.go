package upgrade

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/peerd/peerd/upgrade/plan"
)

// unplannedGrace is how long an artifact no plan names is kept: an
// operator uploads one (or a Put runs) before the trigger that names it.
const unplannedGrace = 24 * time.Hour

// collect removes what superseded plans left: their plan files, their
// artifacts and patches, and staged copies of anything but the current
// plan's artifact; and artifacts no plan names once unplannedGrace has
// passed. It keeps everything the node's current plan needs (to resume,
// retry after 'resume', roll back, and serve peers that still fetch it),
// every plan not older than it (announced, not taken up yet), and the
// plan that holds this node's plan lock. The version store keeps the
// running and previous versions itself (versions.Store.prune).
//
// It runs on the machine's goroutine, which alone saves plans, when the
// node takes up or finishes a plan, and at start.
func (e *Engine) collect(st NodeState) {
	cur, haveCur := e.plans.local(st.PlanID)
	if st.PlanID != "" && !haveCur {
		return // the current plan is not here: keep everything until it is
	}
	keepPlan := map[string]bool{st.PlanID: true}
	e.mu.Lock()
	keepPlan[e.triggered], keepPlan[e.latest] = true, true
	e.mu.Unlock()
	e.lock.mu.Lock()
	keepPlan[e.lock.st.PlanID] = true
	e.lock.mu.Unlock()

	named := map[string]bool{} // artifacts some plan names
	keepBlob := map[string]bool{}
	keepStaged := map[string]bool{}
	var removed []string
	entries, _ := os.ReadDir(e.plans.dir)
	for _, de := range entries {
		id, ok := strings.CutSuffix(de.Name(), ".json")
		if !ok || !isHexID(id) {
			continue
		}
		p, ok := e.plans.local(id)
		if !ok {
			continue
		}
		blobs := planBlobs(p)
		for _, b := range blobs {
			named[b] = true
		}
		if keepPlan[id] || !haveCur || !cur.Newer(p.Plan) {
			for _, b := range blobs {
				keepBlob[b] = true
			}
			keepStaged[filepath.Base(e.stagedPath(p))] = true
			continue
		}
		if err := e.plans.remove(id); err != nil {
			e.log.Warn("collect a superseded plan", "plan", p.Short, "err", err)
			continue
		}
		removed = append(removed, "plan "+p.Short)
	}
	now := time.Now() // against file times, which are the wall clock's
	blobs, err := e.store.List()
	if err != nil {
		e.log.Warn("collect superseded artifacts", "err", err)
	}
	for _, b := range blobs {
		switch {
		case b.Temp && now.Sub(b.ModTime) < time.Hour: // a Put may still be writing it
			continue
		case keepBlob[b.SHA256]:
			continue
		case !b.Temp && !named[b.SHA256] && now.Sub(b.ModTime) < unplannedGrace:
			continue
		}
		if err := e.store.Remove(b); err != nil {
			e.log.Warn("collect a superseded artifact", "file", b.Name, "err", err)
			continue
		}
		removed = append(removed, "artifact "+short(b.Name))
	}
	prefix := e.target.Name() + "-"
	staged, _ := os.ReadDir(filepath.Join(e.dir, "staged"))
	for _, de := range staged {
		if !strings.HasPrefix(de.Name(), prefix) || keepStaged[de.Name()] {
			continue
		}
		if err := os.RemoveAll(filepath.Join(e.dir, "staged", de.Name())); err != nil {
			e.log.Warn("collect a staged copy", "file", de.Name(), "err", err)
			continue
		}
		removed = append(removed, "staged "+de.Name())
	}
	if len(removed) > 0 {
		e.log.Info("collected what superseded plans left", "plan", short(st.PlanID), "removed", removed)
	}
}

// planBlobs are the artifacts a plan names.
func planBlobs(p *plan.Compiled) []string {
	out := []string{p.Artifact.SHA256}
	if p.Patch != nil {
		out = append(out, p.Patch.SHA256)
	}
	return out
}

// remove deletes a plan's files and forgets it.
func (s *planStore) remove(id string) error {
	var errs []error
	for _, path := range []string{s.path(id), s.path(id) + ".sig"} {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	s.mu.Lock()
	delete(s.byID, id)
	s.mu.Unlock()
	return errors.Join(errs...)
}
