package main

import (
	"time"

	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/plan"
)

// The rollout documents 'peerd upgrade --json' and 'upgrade status --json'
// print (docs/json.md): durations as Go duration strings ("10s"), waves
// numbered from 1 as the text shows them, phases named as the text and
// the logs name them (phaseLegend). They are the CLI's own: the plan's canonical encoding, whose hash
// is its ID, and the agent's API keep their wire forms.

type planDoc struct {
	PlanID string        `json:"plan_id"`
	DryRun bool          `json:"dry_run"`
	Plan   planBody      `json:"plan"`
	Waves  []waveDoc     `json:"waves"`
	Checks []string      `json:"checks"`
	Status *rolloutState `json:"status,omitempty"`
}

type planBody struct {
	Target   string        `json:"target"`
	Version  string        `json:"version"`
	Rollback bool          `json:"rollback"`
	Artifact plan.Artifact `json:"artifact"`
	Patch    *plan.Patch   `json:"patch,omitempty"`
	Options  optionsDoc    `json:"options"`
	Members  []plan.Member `json:"members"`
	Origin   string        `json:"origin"`
	Created  time.Time     `json:"created"`
}

type optionsDoc struct {
	Batch          int               `json:"batch"`
	MaxUnavailable string            `json:"max_unavailable,omitempty"`
	Canary         int               `json:"canary"`
	ByTag          string            `json:"by_tag,omitempty"`
	MinHealthy     string            `json:"min_healthy"`
	Deadline       string            `json:"deadline"`
	AllowOutage    bool              `json:"allow_outage"`
	Where          map[string]string `json:"where,omitempty"`
}

type waveDoc struct {
	Wave   int      `json:"wave"`
	Canary bool     `json:"canary"`
	Tag    string   `json:"tag,omitempty"`
	Nodes  []string `json:"nodes"`
}

type rolloutState struct {
	PlanID   string          `json:"plan_id,omitempty"`
	Target   string          `json:"target,omitempty"`
	Version  string          `json:"version,omitempty"`
	Rollback bool            `json:"rollback"`
	State    string          `json:"state"`
	Done     int             `json:"done"`
	Total    int             `json:"total"`
	Waves    []waveStateDoc  `json:"waves"`
	Failed   []nodeStatusDoc `json:"failed"`
	Hint     string          `json:"hint,omitempty"`
	// SafeMode says why the node asked is in safe mode (corrupt state).
	SafeMode string `json:"safe_mode,omitempty"`
}

type waveStateDoc struct {
	Wave   int             `json:"wave"`
	Canary bool            `json:"canary"`
	Late   bool            `json:"late"`
	Tag    string          `json:"tag,omitempty"`
	Nodes  []nodeStatusDoc `json:"nodes"`
}

type nodeStatusDoc struct {
	Name    string `json:"name"`
	Phase   string `json:"phase"`
	Version string `json:"version"`
	Member  string `json:"member"`
	Reason  string `json:"reason,omitempty"`
}

func newPlanDoc(res upgrade.TriggerResult) planDoc {
	p := res.Plan
	o := p.Options
	batch := o.Batch
	if batch == 0 && o.MaxUnavailable == "" {
		batch = 1 // what a plan's 0 means
	}
	d := planDoc{
		PlanID: res.PlanID, DryRun: res.DryRun, Checks: res.Checks, Waves: []waveDoc{},
		Plan: planBody{Target: p.Target, Version: p.Version, Rollback: p.Rollback, Artifact: p.Artifact, Patch: p.Patch,
			Members: p.Members, Origin: p.Origin, Created: p.Created,
			Options: optionsDoc{Batch: batch, MaxUnavailable: o.MaxUnavailable, Canary: o.Canary, ByTag: o.ByTag,
				MinHealthy: o.MinHealthy.String(), Deadline: o.Deadline.String(), AllowOutage: o.AllowOutage, Where: o.Where}},
	}
	if d.Checks == nil {
		d.Checks = []string{}
	}
	for _, w := range res.Waves {
		d.Waves = append(d.Waves, waveDoc{Wave: w.Index + 1, Canary: w.Canary, Tag: w.Tag, Nodes: w.Nodes})
	}
	return d
}

func newRolloutState(st upgrade.Status) rolloutState {
	d := rolloutState{PlanID: st.PlanID, Target: st.Target, Version: st.Version, Rollback: st.Rollback, State: st.State,
		Done: st.Done, Total: st.Total, Hint: st.Hint, SafeMode: st.SafeMode, Waves: []waveStateDoc{}, Failed: nodeDocs(st.Failed)}
	for _, w := range st.Waves {
		d.Waves = append(d.Waves, waveStateDoc{Wave: w.Index + 1, Canary: w.Canary, Late: w.Late, Tag: w.Tag, Nodes: nodeDocs(w.Nodes)})
	}
	return d
}

func nodeDocs(ns []upgrade.NodeStatus) []nodeStatusDoc {
	out := []nodeStatusDoc{}
	for _, n := range ns {
		out = append(out, nodeStatusDoc{Name: n.Name, Phase: string(n.Phase), Version: n.Version, Member: n.Member, Reason: n.Reason})
	}
	return out
}
