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
	running, _ := e.target.Running()
	if req.Rollback && req.ArtifactSHA256 == "" && req.URL == "" {
		if err := e.previousBinary(ctx, &req); err != nil {
			return res, err
		}
	}
	if req.Version == "" {
		return res, errors.New("no target version: give --to VERSION")
	}
	if req.Rollback && versions.Compare(req.Version, running) >= 0 {
		return res, fmt.Errorf("rollback to %s: that is not older than the running %s", req.Version, running)
	}
	if c := versions.Compare(req.Version, running); c < 0 && !req.Rollback {
		return res, fmt.Errorf("version %s is older than the running %s: to go back, use 'peerd upgrade rollback'", req.Version, running)
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
		Artifact: plan.Artifact{SHA256: sha, Size: size, URL: shareableURL(req.URL), Signature: req.Signature},
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
		pm := plan.Member{Name: m.Name, Version: m.Version, Key: m.Tags[cluster.TagKey]}
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
	checks, err := e.originChecks(ctx, c)
	if err != nil {
		return res, fmt.Errorf("artifact refused before any node went offline: %w", err)
	}
	res = TriggerResult{PlanID: c.ID, Plan: c.Plan, Waves: c.Waves, Checks: checks, DryRun: req.DryRun}
	if req.DryRun {
		return res, nil
	}
	// Number the plan and make it the only one: the plan lock.
	if c, err = e.takeLock(ctx, p); err != nil {
		return res, err
	}
	c.Sig = e.id.Sign(domainPlan, []byte(c.ID))
	res = TriggerResult{PlanID: c.ID, Plan: c.Plan, Waves: c.Waves, Checks: checks}
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

// previousBinary fills a rollback request from the binary this node kept
// when it was last upgraded.
func (e *Engine) previousBinary(ctx context.Context, req *TriggerRequest) error {
	kept := e.keptPath()
	_, running := e.target.Running()
	if ki, err := os.Stat(kept); err == nil {
		if ri, err := os.Stat(running); err == nil && os.SameFile(ki, ri) {
			return fmt.Errorf("this node runs the binary a rollback would bring back (%s), so it has nothing to roll back to: run 'peerd upgrade rollback' on a node that was upgraded, or give --to and --artifact", kept)
		}
	}
	f, err := os.Open(kept)
	if err != nil {
		return fmt.Errorf("this node has no previous binary (%s): run 'peerd upgrade rollback' on a node that was upgraded, or give --to and --artifact", kept)
	}
	defer f.Close()
	sha, _, err := e.store.Put(f, "")
	if err != nil {
		return err
	}
	req.ArtifactSHA256 = sha
	if req.Version != "" {
		return nil
	}
	req.Version, err = e.target.PreviousVersion(ctx, kept)
	return err
}

// originChecks verifies on the origin what every node verifies again: the
// signature and the target's own account of the artifact.
func (e *Engine) originChecks(ctx context.Context, p *plan.Compiled) ([]string, error) {
	active := e.net.ProtocolRange().Max
	target, err := e.verify(ctx, p, active)
	if err != nil {
		return nil, err
	}
	checks := []string{fmt.Sprintf("sha256 %s (%d bytes)", p.Artifact.SHA256, p.Artifact.Size)}
	if p.Artifact.Signature != "" && len(e.cfg.TrustedKeys) > 0 {
		checks = append(checks, "minisign signature over version, platform and digest")
	} else {
		checks = append(checks, "unsigned (the agents allow unsigned artifacts)")
	}
	checks = append(checks, target...)
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
