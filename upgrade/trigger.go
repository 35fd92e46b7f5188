package upgrade

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strings"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/peerd/peerd/upgrade/versions"
)

// TriggerRequest is what `peerd upgrade` asks the local agent for.
type TriggerRequest struct {
	Version string `json:"version"`
	// ArtifactSHA256 names an artifact already imported into this node's
	// store (ImportArtifact); URL is fetched instead when it is empty.
	ArtifactSHA256 string `json:"artifact_sha256,omitempty"`
	URL            string `json:"url,omitempty"`
	Signature      string `json:"signature,omitempty"`
	// ExpectSHA256, when set, pins the artifact's digest (e.g. from a
	// release's checksums file); any other artifact is refused.
	ExpectSHA256 string       `json:"expect_sha256,omitempty"`
	PatchSHA256  string       `json:"patch_sha256,omitempty"`
	PatchFrom    string       `json:"patch_from,omitempty"`
	Options      plan.Options `json:"options"`
	DryRun       bool         `json:"dry_run,omitempty"`
	Rollback     bool         `json:"rollback,omitempty"`
	// PlanID runs the plan a dry run on this node previewed (its ID, or 8
	// or more of its first hex digits) exactly as it was shown: the other
	// fields are then ignored.
	PlanID string `json:"plan_id,omitempty"`
}

// TriggerResult describes the plan made (or, for a dry run, that would be).
type TriggerResult struct {
	PlanID string      `json:"plan_id"`
	Plan   plan.Plan   `json:"plan"`
	Waves  []plan.Wave `json:"waves"`
	Checks []string    `json:"checks"`
	DryRun bool        `json:"dry_run,omitempty"`
}

// Trigger makes a plan on this node (its origin), checks the artifact the
// way every node will, and announces the plan. Nothing goes offline here.
// The checks run on the caller's goroutine; the state machine only commits
// the plan, so that it stays responsive however long they take.
func (e *Engine) Trigger(ctx context.Context, req TriggerRequest) (TriggerResult, error) {
	var res TriggerResult
	e.triggerMu.Lock()
	defer e.triggerMu.Unlock()
	if err := e.refuseInSafeMode(); err != nil {
		return res, err
	}
	if id := e.busyWith(); id != "" {
		return res, fmt.Errorf("a rollout is already running: plan %s; watch it with 'peerd upgrade status', or stop it with 'peerd upgrade abort'", id)
	}
	if req.PlanID != "" {
		return e.triggerPreviewed(ctx, req.PlanID)
	}
	if req.Rollback && req.ArtifactSHA256 == "" && req.URL == "" {
		if err := e.previousBinary(ctx, &req); err != nil {
			return res, err
		}
	}
	if req.Version == "" {
		return res, errors.New("no target version: give --to VERSION")
	}
	unchecked := e.hookSet("origin-unchecked")
	if err := e.checkVersion(req.Version, req.Rollback); err != nil && !unchecked {
		return res, err
	}
	sha := req.ArtifactSHA256
	if sha == "" {
		if req.URL == "" {
			return res, errors.New("no artifact: give --artifact PATH or URL")
		}
		var err error
		if sha, _, err = e.importURL(ctx, req.URL); err != nil {
			return res, err
		}
	}
	if !e.store.Has(sha) {
		return res, fmt.Errorf("artifact %s is not in this node's store: upload it first", short(sha))
	}
	if want := strings.ToLower(req.ExpectSHA256); want != "" && want != sha {
		return res, fmt.Errorf("artifact refused before any node went offline: its sha256 is %s, but --sha256 expects %s", sha, want)
	}
	_, size, err := artifact.DigestFile(e.store.Path(sha))
	if err != nil {
		return res, err
	}
	p := plan.Plan{
		Target: e.target.Name(), Version: req.Version, Rollback: req.Rollback,
		Artifact: plan.Artifact{SHA256: sha, Size: size, URL: shareableURL(req.URL), Signature: req.Signature, Pieces: e.pieceList(sha, size, req.Signature)},
		Options:  req.Options,
		Origin:   e.net.LocalMember().Name,
		Created:  e.clock.Now().UTC(),
	}
	if req.PatchSHA256 != "" {
		if !e.store.Has(req.PatchSHA256) {
			return res, fmt.Errorf("patch %s is not in this node's store: upload it first", short(req.PatchSHA256))
		}
		_, psize, err := artifact.DigestFile(e.store.Path(req.PatchSHA256))
		if err != nil {
			return res, err
		}
		p.Patch = &plan.Patch{FromVersion: req.PatchFrom, Artifact: plan.Artifact{SHA256: req.PatchSHA256, Size: psize}}
	}
	// The snapshot is every member that has not left, reachable or not: a
	// lease needs a majority of all of them, so that a partitioned
	// minority can take no wave offline.
	var snapshot, reachable []cluster.Member
	for _, m := range e.net.Members() {
		if m.Status == "left" || !req.Options.Selects(m.Tags) {
			continue
		}
		snapshot = append(snapshot, m)
		if m.Status == "alive" {
			reachable = append(reachable, m)
		}
		// What the member runs of the target: what a rollback of this plan
		// goes back to (rollbackVersion).
		pm := plan.Member{Name: m.Name, Version: e.target.VersionOf(m), Key: m.Tags[cluster.TagKey]}
		if req.Options.ByTag != "" {
			pm.Tag = m.Tags[req.Options.ByTag]
		}
		p.Members = append(p.Members, pm)
	}
	sort.Slice(p.Members, func(i, j int) bool { return p.Members[i].Name < p.Members[j].Name })
	if err := p.Validate(); err != nil {
		return res, err
	}
	c, err := plan.Compile(p)
	if err != nil {
		return res, err
	}
	if err := unreachable(snapshot, reachable); err != nil && !req.DryRun {
		return res, err
	}
	var checks []string
	if unchecked {
		checks = []string{"not checked: the origin-unchecked test hook is set"}
	} else if checks, err = e.originChecks(ctx, c); err != nil {
		return res, fmt.Errorf("artifact refused before any node went offline: %w", err)
	}
	if req.DryRun {
		return e.preview(ctx, p, checks)
	}
	// Number the plan and make it the only one: the plan lock.
	if c, err = e.takeLock(ctx, p); err != nil {
		return res, err
	}
	return e.announcePlan(ctx, c, checks)
}

// checkVersion refuses a version older than the running one unless the
// plan is a rollback, and a rollback that is not to an older version.
func (e *Engine) checkVersion(version string, rollback bool) error {
	running, _ := e.target.Running()
	if rollback && versions.Compare(version, running) >= 0 {
		return fmt.Errorf("rollback to %s: that is not older than the running %s", version, running)
	}
	if c := versions.Compare(version, running); c < 0 && !rollback {
		return fmt.Errorf("version %s is older than the running %s: to go back, use 'peerd upgrade rollback'", version, running)
	}
	return nil
}

// preview numbers a dry run's plan as the plan lock would now and keeps
// it, so that 'peerd upgrade --plan ID' runs this very plan: the waves
// derive from the plan's ID, and a plan made afresh would have another
// (its creation time and sequence differ), and so other waves.
func (e *Engine) preview(ctx context.Context, p plan.Plan, checks []string) (TriggerResult, error) {
	seq, _, err := e.lockSeq(ctx)
	if err != nil {
		// Still a preview, numbered by what this member has seen; the run
		// refuses it if the cluster has seen more by then.
		seq = e.lock.highest()
		checks = append(checks, fmt.Sprintf("plan lock not asked (%v): running this plan may find it out of date", err))
	}
	p.Seq = seq + 1
	c, err := plan.Compile(p)
	if err != nil {
		return TriggerResult{}, err
	}
	if err := e.drafts.save(c); err != nil {
		return TriggerResult{}, fmt.Errorf("keep the previewed plan: %w", err)
	}
	return TriggerResult{PlanID: c.ID, Plan: c.Plan, Waves: c.Waves, Checks: checks, DryRun: true}, nil
}

// triggerPreviewed runs a plan a dry run on this node made, unchanged,
// after checking its artifact again: only if no plan took its sequence
// meanwhile (takeLockFor).
func (e *Engine) triggerPreviewed(ctx context.Context, id string) (TriggerResult, error) {
	c, ok, err := e.drafts.find(id)
	if err != nil {
		return TriggerResult{}, err
	}
	if !ok {
		return TriggerResult{}, fmt.Errorf("no plan %s was previewed on this node: run the same 'peerd upgrade ... --dry-run' on this node, then --plan with the ID it prints", short(id))
	}
	if err := e.checkVersion(c.Version, c.Rollback); err != nil {
		return TriggerResult{}, err
	}
	for _, sha := range []string{c.Artifact.SHA256, patchSHA(c)} {
		if sha != "" && !e.store.Has(sha) {
			return TriggerResult{}, fmt.Errorf("artifact %s of plan %s is no longer in this node's store: run the dry run again", short(sha), c.Short)
		}
	}
	checks, err := e.originChecks(ctx, c)
	if err != nil {
		return TriggerResult{}, fmt.Errorf("artifact refused before any node went offline: %w", err)
	}
	if err := e.takeLockFor(ctx, c); err != nil {
		return TriggerResult{}, err
	}
	res, err := e.announcePlan(ctx, c, checks)
	if err == nil {
		_ = e.drafts.remove(c.ID)
	}
	return res, err
}

func patchSHA(c *plan.Compiled) string {
	if c.Patch == nil {
		return ""
	}
	return c.Patch.SHA256
}

// announcePlan makes c, which holds the plan lock, this node's next plan
// and tells the cluster.
func (e *Engine) announcePlan(ctx context.Context, c *plan.Compiled, checks []string) (TriggerResult, error) {
	c.Sig = e.id.Sign(domainPlan, []byte(c.ID))
	res := TriggerResult{PlanID: c.ID, Plan: c.Plan, Waves: c.Waves, Checks: checks}
	reply := make(chan error, 1)
	e.m.mail.post(triggerMsg{p: c, reply: reply})
	select {
	case err := <-reply:
		if err != nil {
			return res, err
		}
	case <-ctx.Done():
		return res, ctx.Err()
	}
	if err := e.net.Broadcast(e.name(eventPlan), []byte(c.ID)); err != nil {
		return res, err
	}
	e.log.Info("rollout planned", "plan", c.Short, "version", c.Version, "waves", len(c.Waves), "members", len(c.Members))
	return res, nil
}

// previousBinary fills a rollback request that names no artifact. Its
// version, unless given, is the one the cluster's last plan upgraded its
// nodes from, which is the same whichever node the rollback is run on;
// its artifact is this node's kept binary, which must be that version.
func (e *Engine) previousBinary(ctx context.Context, req *TriggerRequest) error {
	if req.Version == "" {
		v, err := e.rollbackVersion(ctx)
		if err != nil {
			return err
		}
		req.Version = v
	}
	kept := e.keptPath()
	_, running := e.target.Running()
	if ki, err := os.Stat(kept); err == nil {
		if ri, err := os.Stat(running); err == nil && os.SameFile(ki, ri) {
			return fmt.Errorf("this node runs the binary a rollback would bring back (%s), so it has no binary of %s: run 'peerd upgrade rollback' on a node that was upgraded, or give --artifact FILE of %s (and --signature)", kept, req.Version, req.Version)
		}
	}
	f, err := os.Open(kept)
	if err != nil {
		return fmt.Errorf("this node has no previous binary (%s): run 'peerd upgrade rollback' on a node that was upgraded, or give --artifact FILE of %s (and --signature)", kept, req.Version)
	}
	defer f.Close()
	keptVersion, err := e.target.PreviousVersion(ctx, kept)
	if err != nil {
		return err
	}
	if keptVersion != req.Version {
		return fmt.Errorf("this node kept %s, not %s, the version to roll back to: run 'peerd upgrade rollback' on a node that was upgraded from %s, or give --artifact FILE of %s (and --signature)",
			keptVersion, req.Version, req.Version, req.Version)
	}
	sha, _, err := e.store.Put(f, "")
	if err != nil {
		return err
	}
	req.ArtifactSHA256 = sha
	return nil
}

// rollbackVersion is what 'peerd upgrade rollback' goes back to: the
// version the last plan upgraded the cluster's nodes from. Nodes agree on
// the last plan (plans are ordered by their sequence), so every node gives
// the same answer; the version each happens to keep does not matter.
func (e *Engine) rollbackVersion(ctx context.Context) (string, error) {
	p, err := e.lastPlan(ctx)
	if err != nil {
		return "", err
	}
	if p == nil {
		return "", errors.New("no plan has run here for a rollback to undo: give --to VERSION and --artifact FILE (and --signature)")
	}
	if p.Rollback {
		return "", fmt.Errorf("the last plan, %s, was a rollback to %s already: to go further back, give --to VERSION and --artifact FILE (and --signature)", p.Short, p.Version)
	}
	from := map[string][]string{}
	for _, m := range p.Members {
		if m.Version != p.Version && m.Version != "" {
			from[m.Version] = append(from[m.Version], m.Name)
		}
	}
	switch len(from) {
	case 0:
		return "", fmt.Errorf("the last plan, %s, upgraded no node from an earlier version of %s: nothing to roll back to; give --to VERSION and --artifact FILE", p.Short, p.Target)
	case 1:
		for v := range from {
			return v, nil
		}
	}
	var list []string
	for v, names := range from {
		list = append(list, fmt.Sprintf("%s (%s)", v, strings.Join(names, ", ")))
	}
	sort.Strings(list)
	return "", fmt.Errorf("the last plan, %s, upgraded nodes from several versions: %s; choose one with --to VERSION and --artifact FILE (and --signature)", p.Short, strings.Join(list, ", "))
}

// lastPlan is the newest plan this node knows: its own, or one announced
// since (Status shows the same one), or nil.
func (e *Engine) lastPlan(ctx context.Context) (*plan.Compiled, error) {
	id := e.State().PlanID
	e.mu.Lock()
	latest := e.latest
	e.mu.Unlock()
	if latest != "" && latest != id && e.newerPlan(ctx, latest, id) {
		id = latest
	}
	if id == "" {
		return nil, nil
	}
	return e.planByID(ctx, id)
}

// originChecks verifies on the origin what every node verifies again: the
// signature and the target's own account of the artifact.
func (e *Engine) originChecks(ctx context.Context, p *plan.Compiled) ([]string, error) {
	active := e.net.ProtocolRange().Max
	target, err := e.verify(ctx, p, active)
	if err != nil {
		return nil, err
	}
	checks := append([]string{fmt.Sprintf("sha256 %s (%d bytes)", p.Artifact.SHA256, p.Artifact.Size)}, target...)
	if p.Patch != nil {
		line, err := e.checkPatch(p)
		if err != nil {
			return nil, err
		}
		checks = append(checks, line)
	}
	return checks, nil
}

// importURL stores the artifact at url and returns its digest.
func (e *Engine) importURL(ctx context.Context, url string) (string, int64, error) {
	sha, size, err := e.fetchURL(ctx, url, "")
	if err != nil {
		return "", 0, fmt.Errorf("fetch artifact: %w", err)
	}
	return sha, size, nil
}

// shareableURL is the artifact URL as the plan may carry it: every member
// fetches the plan, and any peer serves it, so a URL with credentials (a
// user and password, or a query such as a signed URL's token) stays on the
// origin. The origin imported the artifact from it already; without a URL
// in the plan, nodes fetch it from the origin and from each other.
func shareableURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return ""
	}
	return raw
}
