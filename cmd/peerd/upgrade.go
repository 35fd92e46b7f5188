package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/peerd/peerd/daemon/api"
	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/urfave/cli/v2"
)

func upgradeCommand() *cli.Command {
	return &cli.Command{
		Name:      "upgrade",
		Usage:     "upgrade the whole cluster to a new peerd version, one wave at a time",
		UsageText: "peerd upgrade [APP] --to VERSION --artifact FILE|URL [options]\n   peerd upgrade [APP] --plan ID\n   peerd upgrade [APP] status|pause|resume|abort|rollback",
		Description: "Every node computes the same waves from the plan; a wave goes offline only while it holds\n" +
			"a lease granted by a majority of the cluster, so at most one wave is offline at a time.\n" +
			"Each node fetches the artifact (from a peer that has it, or this node), verifies its sha256,\n" +
			"signature and the new binary's version, platform and protocol before going offline, swaps\n" +
			"the binary (the old one is kept), restarts, and must stay healthy for --min-healthy before\n" +
			"the next wave starts. A failure rolls back only the failing node and halts the rollout.\n\n" +
			"Example:\n" +
			"  peerd upgrade --to 2.0.0 --artifact ./peerd-2.0.0 --signature ./peerd-2.0.0.minisig --batch 3",
		Flags:       upgradeFlags(),
		Action:      runUpgrade,
		Subcommands: upgradeSubcommands(),
	}
}

func upgradeFlags() []cli.Flag {
	return append(clientFlags(), appFlag(),
		&cli.StringFlag{Name: "to", Usage: "target `VERSION` (the new binary must report it)"},
		&cli.StringFlag{Name: "artifact", Usage: "the new release, `FILE|URL`: peerd's binary, or an application's executable or .tar.gz bundle; a local file or an http(s) URL"},
		&cli.StringFlag{Name: "signature", Usage: "the artifact's minisign signature, `FILE|URL`: a local file or an http(s) URL (see 'peerd sign')"},
		&cli.StringFlag{Name: "sha256", Usage: "refuse the artifact unless its sha256 is this `HEX` digest (e.g. from the release's checksums)"},
		&cli.StringFlag{Name: "patch", Usage: "bsdiff patch `FILE` (from 'peerd mkpatch') for nodes at --patch-from"},
		&cli.StringFlag{Name: "patch-from", Usage: "the `VERSION` the patch applies to; other nodes fetch the full artifact"},
		&cli.IntFlag{Name: "batch", Usage: "nodes per wave", DefaultText: "1"},
		&cli.StringFlag{Name: "max-unavailable", Usage: "nodes per wave as a count `N`, or a share N% of the cluster"},
		&cli.IntFlag{Name: "canary", Usage: "a first wave of `N` nodes"},
		&cli.StringFlag{Name: "by-tag", Usage: "a wave never mixes values of this tag `KEY` (e.g. zone: one zone at a time)"},
		&cli.StringSliceFlag{Name: "where", Usage: "only the nodes with this tag `KEY=VALUE` (repeatable: all must match)"},
		&cli.DurationFlag{Name: "min-healthy", Value: 10 * time.Second, Usage: "how long an upgraded node must stay healthy before the next wave"},
		&cli.DurationFlag{Name: "deadline", Value: 5 * time.Minute, Usage: "per wave: a node not healthy by then rolls back"},
		&cli.BoolFlag{Name: "allow-outage", Usage: "allow a wave that takes every node offline (e.g. a one-node cluster)"},
		&cli.BoolFlag{Name: "dry-run", Usage: "print the plan (its ID, waves and checks) and change nothing; --plan ID then runs it as shown"},
		&cli.StringFlag{Name: "plan", Usage: "run the plan a --dry-run on this node printed, `ID`, exactly as it showed it (refused if another plan ran since)"},
		&cli.BoolFlag{Name: "detach", Usage: "start the rollout and return; follow it with 'peerd upgrade status'"},
	)
}

func upgradeSubcommands() []*cli.Command {
	return []*cli.Command{
		{
			Name:  "status",
			Usage: "show the rollout's progress per wave, and what to do if it halted",
			Description: "One row per node: its wave (from 1), phase, version and Serf status, and for a\n" +
				"failed node the reason. --json prints the same as one document (docs/json.md).\n\n" + phaseLegend,
			Flags:  append(clientFlags(), appFlag(), &cli.BoolFlag{Name: "watch", Usage: "follow the rollout until it ends"}),
			Action: runUpgradeStatus,
		},
		{
			Name:  "rollback",
			Usage: "roll the cluster back to the version the last plan upgraded it from, progressively, as a new plan",
			Description: "The version is the one the last plan upgraded the cluster's nodes from, whichever node this\n" +
				"runs on. The artifact is this node's kept binary of that version (DATA_DIR/versions/previous,\n" +
				"or the launcher itself). Agents that trust release keys (--trust-key) go back only with a\n" +
				"rollback statement signed by one: sign that release with\n" +
				"  peerd sign --rollback --key KEY --version VERSION FILE\n" +
				"and pass --signature FILE.minisig (a plain release signature never allows going back).\n" +
				"Give --to, --artifact and --signature to roll back to another build.",
			Flags:  upgradeFlags(),
			Action: func(c *cli.Context) error { return startUpgrade(c, true) },
		},
		controlCommand(upgrade.ActionPause, "finish the waves in flight, then start no new wave"),
		controlCommand(upgrade.ActionResume, "continue a paused rollout, or retry a failed node after fixing the cause (not an aborted rollout)"),
		controlCommand(upgrade.ActionAbort, "end the rollout for good, halted or not: no further wave starts, and it cannot be resumed"),
	}
}

func controlCommand(action, usage string) *cli.Command {
	return &cli.Command{
		Name:  action,
		Usage: usage,
		Flags: append(clientFlags(), appFlag()),
		Action: func(c *cli.Context) error {
			id, err := newClient(c).Control(c.Context, action)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c, map[string]string{"action": action, "plan_id": id})
			}
			fmt.Fprintf(c.App.Writer, "%s: sent to every node for plan %s\n", action, id[:min(8, len(id))])
			return nil
		},
	}
}

func runUpgrade(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("unknown upgrade subcommand %q: want status, pause, resume, abort or rollback", c.Args().First())
	}
	return startUpgrade(c, false)
}

// planFlags make a plan; --plan runs one made before, and takes none.
var planFlags = []string{"to", "version", "artifact", "signature", "sha256", "patch", "patch-from", "batch", "max-unavailable",
	"canary", "by-tag", "where", "min-healthy", "deadline", "allow-outage", "dry-run"}

func startUpgrade(c *cli.Context, rollback bool) error {
	if id := c.String("plan"); id != "" {
		for _, f := range planFlags {
			if c.IsSet(f) {
				return usagef("--plan runs the previewed plan as it was shown: leave out --%s", f)
			}
		}
		return runTrigger(c, upgrade.TriggerRequest{PlanID: id})
	}
	if !rollback && c.String("to") == "" {
		return usagef("--to VERSION is required")
	}
	if !rollback && c.String("artifact") == "" {
		return usagef("--artifact FILE|URL is required")
	}
	if c.IsSet("batch") && c.IsSet("max-unavailable") {
		return usagef("give --batch or --max-unavailable, not both")
	}
	// In a plan a batch of 0 means the default, 1; said on the command
	// line it is a mistake, not a request for the default.
	if c.IsSet("batch") && c.Int("batch") < 1 {
		return usagef("--batch %d: a wave needs at least one node; give --batch 1 or more, or leave it out (1)", c.Int("batch"))
	}
	if (c.String("patch") == "") != (c.String("patch-from") == "") {
		return usagef("--patch and --patch-from go together")
	}
	where := map[string]string{}
	for _, kv := range c.StringSlice("where") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return usagef("--where %q: want KEY=VALUE", kv)
		}
		where[k] = v
	}
	if len(where) == 0 {
		where = nil
	}
	opts := plan.Options{
		Batch: c.Int("batch"), MaxUnavailable: c.String("max-unavailable"), Canary: c.Int("canary"),
		ByTag: c.String("by-tag"), MinHealthy: c.Duration("min-healthy"), Deadline: c.Duration("deadline"),
		AllowOutage: c.Bool("allow-outage"), Where: where,
	}
	// The agent checks them again; here they are a mistake in the command
	// line, found before anything is uploaded.
	if err := opts.Validate(); err != nil {
		return usageError{err}
	}
	cl := newClient(c)
	req := upgrade.TriggerRequest{
		Version:      c.String("to"),
		Options:      opts,
		DryRun:       c.Bool("dry-run"),
		ExpectSHA256: c.String("sha256"),
		Rollback:     rollback,
	}
	switch art := c.String("artifact"); {
	case art == "":
		// a rollback to this node's kept binary
	case strings.HasPrefix(art, "http://") || strings.HasPrefix(art, "https://"):
		req.URL = art
	default:
		up, err := cl.UploadArtifact(c.Context, art)
		if err != nil {
			return err
		}
		req.ArtifactSHA256 = up.SHA256
	}
	if sig := c.String("signature"); sig != "" {
		b, err := readSignature(c.Context, sig)
		if err != nil {
			return err
		}
		req.Signature = string(b)
	}
	if p := c.String("patch"); p != "" {
		up, err := cl.UploadArtifact(c.Context, p)
		if err != nil {
			return err
		}
		req.PatchSHA256, req.PatchFrom = up.SHA256, c.String("patch-from")
	}
	return runTrigger(c, req)
}

// runTrigger asks the agent for the plan, prints it and, unless told
// otherwise, follows the rollout.
func runTrigger(c *cli.Context, req upgrade.TriggerRequest) error {
	cl := newClient(c)
	res, err := cl.Trigger(c.Context, req)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return printTriggerJSON(c, cl, res, req.DryRun || c.Bool("detach"))
	}
	w := c.App.Writer
	if req.DryRun {
		fmt.Fprintf(w, "dry run: plan %s would upgrade %d nodes to %s in %d waves\n", res.PlanID[:8], len(res.Plan.Members), res.Plan.Version, len(res.Waves))
	} else {
		fmt.Fprintf(w, "plan %s: upgrading %d nodes to %s in %d waves\n", res.PlanID[:8], len(res.Plan.Members), res.Plan.Version, len(res.Waves))
	}
	fmt.Fprint(w, upgrade.WavesText(res.Waves))
	fmt.Fprintln(w, "checked:")
	for _, ch := range res.Checks {
		fmt.Fprintf(w, "  - %s\n", ch)
	}
	if req.DryRun {
		fmt.Fprintln(w, "nothing changed (dry run); run this plan as shown with:")
		app := ""
		if a := c.String("app"); a != "" {
			app = " " + a
		}
		fmt.Fprintf(w, "  peerd upgrade%s --plan %s\n", app, res.PlanID)
		return nil
	}
	if c.Bool("detach") {
		fmt.Fprintln(w, "follow it with: peerd upgrade status --watch")
		return nil
	}
	return watch(c, cl, res.PlanID)
}

// printTriggerJSON prints the plan made, and unless the command returns at
// once, the rollout's final status, as one JSON document: a script reads
// stdout with one json.Unmarshal (or jq) whatever happened in between.
func printTriggerJSON(c *cli.Context, cl *api.Client, res upgrade.TriggerResult, now bool) error {
	doc := newPlanDoc(res)
	if now {
		return printJSON(c, doc)
	}
	st, err := follow(c, cl, res.PlanID, nil)
	if st.State == "" {
		// The rollout could not be followed to its end (the agent stayed
		// away): the document says what was started, the error why it ends.
		st.State = upgrade.StateNone
	}
	rs := newRolloutState(st)
	doc.Status = &rs
	if perr := printJSON(c, doc); err == nil {
		err = perr
	}
	return err
}

func runUpgradeStatus(c *cli.Context) error {
	cl := newClient(c)
	if c.Bool("watch") {
		return watch(c, cl, "")
	}
	st, err := cl.RolloutStatus(c.Context)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c, newRolloutState(st))
	}
	printStatus(c.App.Writer, st)
	return nil
}

// watch follows a rollout until it ends: one line per change (on a
// terminal, one line redrawn in place), then the table (or, with --json,
// only the final status). It exits 0 only when every node runs the target.
func watch(c *cli.Context, cl *api.Client, planID string) error {
	if c.Bool("json") {
		st, err := follow(c, cl, planID, nil)
		if st.State != "" {
			if perr := printJSON(c, newRolloutState(st)); err == nil {
				err = perr
			}
		}
		return err
	}
	w := c.App.Writer
	progress := newStatusLine(w)
	st, err := follow(c, cl, planID, func(st upgrade.Status, agentDown bool) {
		if agentDown {
			progress.Note("(the local agent is restarting; waiting for it)")
			return
		}
		progress.Update(progressLine(st))
	})
	progress.Finish()
	if st.State != "" {
		printStatus(w, st)
	}
	return err
}

// follow polls the rollout's status until it ends and returns the last
// status, with an error unless the rollout completed. onChange, when not
// nil, sees every status polled, and is told when the agent stops
// answering.
func follow(c *cli.Context, cl *api.Client, planID string, onChange func(st upgrade.Status, agentDown bool)) (upgrade.Status, error) {
	// The local agent is one of the nodes: when its wave comes it restarts,
	// and the watch waits for it rather than giving up.
	var downSince time.Time
	const maxDown = 2 * time.Minute
	for {
		st, err := cl.RolloutStatus(c.Context)
		if err != nil {
			if downSince.IsZero() {
				downSince = time.Now()
				if onChange != nil {
					onChange(upgrade.Status{}, true)
				}
			}
			if time.Since(downSince) > maxDown {
				return upgrade.Status{}, fmt.Errorf("the local agent has not answered for %s: %w", maxDown, err)
			}
			if err := sleepCtx(c, 250*time.Millisecond); err != nil {
				return upgrade.Status{}, err
			}
			continue
		}
		downSince = time.Time{}
		if planID != "" && st.PlanID != "" && st.PlanID != planID {
			return upgrade.Status{}, fmt.Errorf("another plan (%s) replaced %s", st.PlanID[:8], planID[:8])
		}
		if onChange != nil {
			onChange(st, false)
		}
		switch st.State {
		case upgrade.StateComplete:
			return st, nil
		case upgrade.StateHalted, upgrade.StateAborted, upgrade.StateNone:
			return st, fmt.Errorf("rollout %s", st.State)
		}
		if err := sleepCtx(c, 250*time.Millisecond); err != nil {
			return st, err
		}
	}
}

func sleepCtx(c *cli.Context, d time.Duration) error {
	select {
	case <-c.Context.Done():
		return c.Context.Err()
	case <-time.After(d):
		return nil
	}
}

func progressLine(st upgrade.Status) string {
	const width = 20
	filled := 0
	if st.Total > 0 {
		filled = st.Done * width / st.Total
	}
	bar := strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
	var busy []string
	for _, wv := range st.Waves {
		for _, n := range wv.Nodes {
			if n.Phase != upgrade.PhaseDone && n.Phase != upgrade.PhaseWait {
				busy = append(busy, fmt.Sprintf("%s %s", n.Name, n.Phase))
			}
		}
	}
	sort.Strings(busy)
	line := fmt.Sprintf("[%s] %d/%d done  %s", bar, st.Done, st.Total, st.State)
	if len(busy) > 0 {
		line += "  " + strings.Join(busy, ", ")
	}
	return line
}

// phaseLegend says what each phase name in status, JSON and logs means.
const phaseLegend = "Phases (the same names in the table, --json and the agents' logs):\n" +
	"  wait     the plan is known; earlier waves are not done yet\n" +
	"  prep     fetching and verifying the artifact (the node is online)\n" +
	"  ready    prepared; asking a majority for the wave's lease\n" +
	"  apply    lease held; installing the new binary (offline)\n" +
	"  restart  restarting into the new binary (offline)\n" +
	"  health   the new version is up; its health gate is running\n" +
	"  done     upgraded and healthy, or already at the target\n" +
	"  fail     failed (and rolled back if it had gone offline)\n" +
	"  abort    the rollout was aborted before this node started"

func printStatus(w io.Writer, st upgrade.Status) {
	if st.SafeMode != "" {
		fmt.Fprintf(w, "this node is in %s\n", st.SafeMode)
	}
	if st.State == upgrade.StateNone {
		fmt.Fprintln(w, "no rollout")
		return
	}
	if len(st.Waves) == 0 { // announced, not fetched by this node
		fmt.Fprintf(w, "plan %s: %s\n%s\n", st.PlanID[:8], st.State, st.Hint)
		return
	}
	fmt.Fprintf(w, "plan %s: %s to %s — %s, %d/%d nodes done\n", st.PlanID[:8], st.Target, st.Version, st.State, st.Done, st.Total)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WAVE\tNODE\tPHASE\tVERSION\tMEMBER\tREASON")
	for _, wv := range st.Waves {
		label := fmt.Sprint(wv.Index + 1)
		if wv.Canary {
			label += " (canary)"
		}
		if wv.Late {
			label += " (joined late)"
		}
		for _, n := range wv.Nodes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", label, n.Name, n.Phase, n.Version, n.Member, n.Reason)
		}
	}
	tw.Flush()
	if st.Hint != "" {
		fmt.Fprintln(w, st.Hint)
	}
}

func installCommand() *cli.Command {
	var flags []cli.Flag
	for _, f := range upgradeFlags() {
		switch f.Names()[0] {
		case "to":
			f = &cli.StringFlag{Name: "version", Aliases: []string{"to"}, Usage: "the `VERSION` the artifact is"}
		case "artifact":
			f = &cli.StringFlag{Name: "artifact", Usage: "the application's release, `FILE|URL`: its executable or a .tar.gz bundle; a local file or an http(s) URL"}
		case "app":
			// Named first: peerd install APP.
			f = &cli.StringFlag{Name: "app", Usage: "the managed application `NAME` to install (also: peerd install NAME ...)"}
		}
		flags = append(flags, f)
	}
	return &cli.Command{
		Name:      "install",
		Usage:     "install a managed application on the nodes that declare it, one wave at a time",
		UsageText: "peerd install APP --artifact FILE|URL --version VERSION [options]",
		Description: "The nodes that declare app \"APP\" { ... } in their config and do not run VERSION yet\n" +
			"install it wave by wave, as 'peerd upgrade APP' does: fetch, verify, install into the app's\n" +
			"version store, start it, and pass its health check before the next wave starts.\n\n" +
			"Example:\n" +
			"  peerd install kv --artifact ./kv-1.0.0 --version 1.0.0 --batch 2",
		Flags: flags,
		Action: func(c *cli.Context) error {
			if c.String("app") == "" {
				return usagef("name the application: peerd install APP --artifact FILE|URL --version VERSION")
			}
			if c.String("to") == "" {
				return usagef("--version VERSION is required")
			}
			return startUpgrade(c, false)
		},
	}
}
