package upgrade

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/internal/durable"
	"github.com/peerd/peerd/upgrade/plan"
)

// HandleEvent receives the cluster's user events.
func (e *Engine) HandleEvent(name string, ltime uint64, payload []byte) {
	switch name {
	case e.name(eventPlan):
		id := strings.TrimSpace(string(payload))
		if !isHexID(id) {
			return
		}
		e.announce(id)
	case e.name(eventControl):
		var c controlMsg
		if err := decodeJSON(payload, &c); err == nil {
			c.ltime = ltime
			e.control(c)
		}
	}
}

// HandleQuery answers the cluster's queries.
func (e *Engine) HandleQuery(name string, payload []byte) ([]byte, error) {
	if name == e.name(queryLease) {
		return e.answerLease(payload), nil
	}
	return nil, fmt.Errorf("unknown query %q", name)
}

// announce queues a plan for adoption and makes it the one status shows.
func (e *Engine) announce(id string) {
	e.mu.Lock()
	e.announced = append(e.announced, id)
	e.latest = id
	e.mu.Unlock()
	e.wake()
}

func isHexID(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// adopt looks for a plan this node has not run: announced by an event, or
// seen in another member's tag (a node that joined late or missed the
// event learns of the rollout that way).
func (e *Engine) adopt(ctx context.Context, st NodeState) {
	e.mu.Lock()
	candidates := e.announced
	e.announced = nil
	e.mu.Unlock()
	seen := map[string]bool{}
	for _, m := range e.net.Members() {
		pr, ok := ParseProgress(m.Tags[e.tagKey()])
		if !ok || m.Status != "alive" || strings.HasPrefix(st.PlanID, pr.PlanShort) || seen[pr.PlanShort] {
			continue
		}
		seen[pr.PlanShort] = true
		if id, err := e.currentPlanOf(ctx, m); err == nil && !strings.HasPrefix(st.PlanID, id) {
			candidates = append(candidates, id)
		}
	}
	var current plan.Plan
	if st.PlanID != "" {
		current, _ = e.planByID(ctx, st.PlanID)
	}
	var best plan.Plan
	for _, id := range candidates {
		if id == st.PlanID {
			continue
		}
		p, err := e.planByID(ctx, id)
		if err != nil {
			e.log.Warn("cannot fetch announced plan", "plan", short(id), "err", err)
			continue
		}
		// Only a plan newer than the last one this node ran: finished plans
		// linger in tags and must not run twice.
		if st.PlanID != "" && !p.Created.After(current.Created) {
			continue
		}
		if best.Version == "" || p.Created.After(best.Created) {
			best = p
		}
	}
	if best.Version == "" {
		return
	}
	e.start(best, st)
}

// start makes p this node's plan.
func (e *Engine) start(p plan.Plan, prev NodeState) {
	waves, err := p.Waves()
	if err != nil {
		e.log.Error("plan has no valid waves", "plan", p.ShortID(), "err", err)
		return
	}
	local := e.net.LocalMember()
	w := plan.WaveOf(waves, local.Name)
	if w < 0 && !p.Options.Selects(local.Tags) {
		return // not selected (--where): this plan is not for this node
	}
	if w < 0 {
		w = len(waves) // joined after the plan was made: the final wave
	}
	e.mu.Lock()
	if e.triggered == p.ID() {
		e.triggered = ""
	}
	e.mu.Unlock()
	st := NodeState{
		PlanID: p.ID(), Wave: w, Phase: PhaseWait,
		FromVersion: e.running(), ToVersion: p.Version,
		RolledBackFrom: prev.RolledBackFrom,
	}
	if e.running() == p.Version {
		st.Phase = PhaseDone // already there: nothing to do, nothing to hold up
	}
	e.transition(st, e.log.With("plan", p.ShortID(), "wave", w))
}

// planByID returns a plan from memory, the data dir, or any peer, checking
// that its content hashes to its ID.
func (e *Engine) planByID(ctx context.Context, id string) (plan.Plan, error) {
	e.mu.Lock()
	p, ok := e.plans[id]
	e.mu.Unlock()
	if ok {
		return p, nil
	}
	path := filepath.Join(e.dir, "plans", id+".json")
	if b, err := os.ReadFile(path); err == nil {
		if p, err := decodePlan(id, b); err == nil {
			e.remember(p)
			return p, nil
		}
	}
	var errs []error
	for _, m := range e.peers() {
		b, err := e.get(ctx, m, "/v1/rollout/plans/"+id, 1<<20)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p, err := decodePlan(id, b)
		if err != nil {
			errs = append(errs, fmt.Errorf("plan from %s: %w", m.Name, err))
			continue
		}
		if err := e.savePlan(p); err != nil {
			return plan.Plan{}, err
		}
		return p, nil
	}
	return plan.Plan{}, fmt.Errorf("no peer served plan %s: %w", short(id), errors.Join(errs...))
}

func decodePlan(id string, b []byte) (plan.Plan, error) {
	sum := sha256.Sum256(b)
	if hex.EncodeToString(sum[:]) != id {
		return plan.Plan{}, fmt.Errorf("plan content does not hash to its ID %s", short(id))
	}
	return plan.Decode(b)
}

func (e *Engine) savePlan(p plan.Plan) error {
	b, err := p.Encode()
	if err != nil {
		return err
	}
	if err := durable.WriteFile(filepath.Join(e.dir, "plans", p.ID()+".json"), b, 0o600); err != nil {
		return err
	}
	e.remember(p)
	return nil
}

func (e *Engine) remember(p plan.Plan) {
	e.mu.Lock()
	e.plans[p.ID()] = p
	e.mu.Unlock()
}

// PlanBytes serves a stored plan to peers.
func (e *Engine) PlanBytes(id string) ([]byte, error) {
	if !isHexID(id) {
		return nil, os.ErrNotExist
	}
	return os.ReadFile(filepath.Join(e.dir, "plans", id+".json"))
}

// currentPlanOf asks a member which plan its tag refers to.
func (e *Engine) currentPlanOf(ctx context.Context, m cluster.Member) (string, error) {
	b, err := e.get(ctx, m, "/v1/rollout/node", 64<<10)
	if err != nil {
		return "", err
	}
	var st NodeState
	if err := decodeJSON(b, &st); err != nil || !isHexID(st.PlanID) {
		return "", fmt.Errorf("node %s has no plan", m.Name)
	}
	return st.PlanID, nil
}

// peers lists the other alive members.
func (e *Engine) peers() []cluster.Member {
	self := e.net.LocalMember().Name
	var out []cluster.Member
	for _, m := range e.net.Members() {
		if m.Name != self && m.Status == "alive" {
			out = append(out, m)
		}
	}
	return out
}

// get fetches a path from a member's peer HTTP API, reading at most limit bytes.
func (e *Engine) get(ctx context.Context, m cluster.Member, path string, limit int64) ([]byte, error) {
	resp, err := e.open(ctx, m, path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, limit))
}

func (e *Engine) open(ctx context.Context, m cluster.Member, path string) (*http.Response, error) {
	addr := e.cfg.PeerHTTPAddr(m)
	if addr == "" {
		return nil, fmt.Errorf("node %s advertises no peer HTTP address", m.Name)
	}
	if e.cfg.Target != TargetPeerd {
		path += "?target=" + e.cfg.Target
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := e.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s from %s: %w", path, m.Name, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s from %s: %s", path, m.Name, resp.Status)
	}
	return resp, nil
}
