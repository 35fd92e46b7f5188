package upgrade

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strings"

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

// ImportArtifact stores an uploaded artifact and returns its digest.
func (e *Engine) ImportArtifact(r io.Reader) (string, int64, error) {
	return e.store.Put(r, "")
}

// RunningPlan returns the ID (or short ID, when only a tag tells of it) of a
// rollout still in progress anywhere in the cluster, or "".
func (e *Engine) RunningPlan() string {
	st := e.State()
	if st.Active() {
		return st.PlanID
	}
	e.mu.Lock()
	pending := e.triggered
	e.mu.Unlock()
	if pending != "" {
		return pending // triggered here, not adopted yet
	}
	own := e.State().PlanID
	for _, m := range e.net.Members() {
		pr, ok := ParseProgress(m.Tags[e.tagKey()])
		if ok && m.Status == "alive" && !pr.Phase.Terminal() {
			if strings.HasPrefix(own, pr.PlanShort) {
				return own
			}
			return pr.PlanShort
		}
	}
	return ""
}

// Trigger makes a plan on this node (its origin), checks the artifact the
// way every node will, and announces the plan. Nothing goes offline here.
func (e *Engine) Trigger(ctx context.Context, req TriggerRequest) (TriggerResult, error) {
	var res TriggerResult
	// One trigger at a time on this node, so two cannot both see none running.
	e.triggerMu.Lock()
	defer e.triggerMu.Unlock()
	if id := e.RunningPlan(); id != "" {
		return res, fmt.Errorf("a rollout is already running: plan %s; watch it with 'peerd upgrade status', or stop it with 'peerd upgrade abort'", id)
	}
	running := e.running()
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
		if sha, err = e.importURL(ctx, req.URL); err != nil {
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
		Target: e.cfg.Target, Version: req.Version, Rollback: req.Rollback,
		Artifact: plan.Artifact{SHA256: sha, Size: size, URL: req.URL, Signature: req.Signature},
		Options:  req.Options,
		Origin:   e.net.LocalMember().Name,
		Created:  e.cfg.Clock.Now().UTC(),
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
	for _, m := range e.net.Members() {
		if m.Status != "alive" || !req.Options.Selects(m.Tags) {
			continue
		}
		pm := plan.Member{Name: m.Name, Version: m.Version}
		if req.Options.ByTag != "" {
			pm.Tag = m.Tags[req.Options.ByTag]
		}
		p.Members = append(p.Members, pm)
	}
	sort.Slice(p.Members, func(i, j int) bool { return p.Members[i].Name < p.Members[j].Name })
	if err := p.Validate(); err != nil {
		return res, err
	}
	waves, err := p.Waves()
	if err != nil {
		return res, err
	}
	checks, err := e.originChecks(ctx, p)
	if err != nil {
		return res, fmt.Errorf("artifact refused before any node went offline: %w", err)
	}
	res = TriggerResult{PlanID: p.ID(), Plan: p, Waves: waves, Checks: checks, DryRun: req.DryRun}
	if req.DryRun {
		return res, nil
	}
	if err := e.savePlan(p); err != nil {
		return res, err
	}
	e.mu.Lock()
	e.triggered = p.ID()
	e.mu.Unlock()
	e.announce(p.ID())
	if err := e.net.Broadcast(e.name(eventPlan), []byte(p.ID())); err != nil {
		return res, err
	}
	e.log.Info("rollout planned", "plan", p.ShortID(), "version", p.Version, "waves", len(waves), "members", len(p.Members))
	return res, nil
}

// previousBinary fills a rollback request from the binary this node kept
// when it was last upgraded.
func (e *Engine) previousBinary(ctx context.Context, req *TriggerRequest) error {
	kept := e.keptPath()
	if ki, err := os.Stat(kept); err == nil {
		if ri, err := os.Stat(e.runningPath()); err == nil && os.SameFile(ki, ri) {
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
	if e.cfg.App != nil {
		prev, err := e.cfg.Versions.Previous()
		if err != nil {
			return err
		}
		req.Version = prev.Version
		if prev.Base {
			req.Version = e.cfg.App.BaseVersion
		}
		if req.Version == "" {
			return fmt.Errorf("the version of the previous %s binary is unknown: give --to VERSION (or version in the app block)", e.cfg.Target)
		}
		return nil
	}
	info, err := artifact.Preflight(ctx, kept)
	if err != nil {
		return fmt.Errorf("previous binary: %w", err)
	}
	req.Version = info.Version
	return nil
}

// originChecks verifies on the origin what every node verifies again: the
// signature and the new binary's own account of version, platform and
// protocol.
func (e *Engine) originChecks(ctx context.Context, p plan.Plan) ([]string, error) {
	info, err := e.verify(ctx, p)
	if err != nil {
		return nil, err
	}
	checks := []string{fmt.Sprintf("sha256 %s (%d bytes)", p.Artifact.SHA256, p.Artifact.Size)}
	if p.Artifact.Signature != "" && len(e.cfg.TrustedKeys) > 0 {
		checks = append(checks, "minisign signature over version, platform and digest")
	} else {
		checks = append(checks, "unsigned (the agents allow unsigned artifacts)")
	}
	if e.cfg.App != nil {
		checks = append(checks, fmt.Sprintf("%s %s passes its preflight here", e.cfg.Target, p.Version))
		if p.Patch != nil {
			checks = append(checks, fmt.Sprintf("patch from %s: %d bytes; nodes at another version fetch the full artifact", p.Patch.FromVersion, p.Patch.Size))
		}
		return checks, nil
	}
	active := e.net.ProtocolRange().Max
	if err := artifact.CheckBuild(info, p.Version, runtime.GOOS, runtime.GOARCH, active); err != nil {
		if p.Rollback && !(info.ProtocolMin <= active && active <= info.ProtocolMax) {
			return nil, fmt.Errorf("cannot roll back to %s: every member now speaks protocol %d and %s does not (it speaks %d-%d); a cluster does not go back to an older protocol once all members switched, so roll forward with a fixed release",
				p.Version, active, p.Version, info.ProtocolMin, info.ProtocolMax)
		}
		return nil, err
	}
	checks = append(checks,
		fmt.Sprintf("binary reports version %s for %s/%s", info.Version, info.OS, info.Arch),
		fmt.Sprintf("binary speaks protocol %d-%d, which includes the cluster's active protocol %d", info.ProtocolMin, info.ProtocolMax, active))
	if p.Patch != nil {
		checks = append(checks, fmt.Sprintf("patch from %s: %d bytes; nodes at another version fetch the full artifact", p.Patch.FromVersion, p.Patch.Size))
	}
	return checks, nil
}

func (e *Engine) importURL(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("artifact URL %q: %w", url, err)
	}
	resp, err := e.cfg.HTTPClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("fetch artifact: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("fetch artifact %s: %s", url, resp.Status)
	}
	sha, _, err := e.store.Put(resp.Body, "")
	return sha, err
}
