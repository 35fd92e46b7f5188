package upgrade

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/internal/clock"
	"github.com/peerd/peerd/internal/identity"
	"github.com/peerd/peerd/upgrade/lease"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/peerd/peerd/upgrade/versions"
)

// The fuzz targets of what reaches an engine from outside: its own files
// (state, plan lock), and what members send (lease and lock queries and
// answers, control events, plan announcements, tags, plans). Node a runs
// the engine; b is the member that sends. Their keys are fixed so that the
// seed corpus's signed messages verify.

// fixedKey is a node key from a fixed seed.
func fixedKey(tb testing.TB, seed byte) identity.Key {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "node.key")
	s := make([]byte, 32)
	for i := range s {
		s[i] = seed
	}
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(s)), 0o600); err != nil {
		tb.Fatal(err)
	}
	k, err := identity.LoadOrCreate(path)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// fuzzNet is node a's network: a and b, both alive; a query gets answer
// from b (nil: no answer).
type fuzzNet struct {
	a, b   identity.Key
	answer []byte
}

func (n *fuzzNet) member(name string, k identity.Key) cluster.Member {
	return cluster.Member{Name: name, Status: "alive", Version: "1.0.0", Protocol: cluster.ProtocolRange{Min: 1, Max: 1},
		Tags: map[string]string{cluster.TagKey: k.Public.String()}}
}
func (n *fuzzNet) LocalMember() cluster.Member { return n.member("a", n.a) }
func (n *fuzzNet) Members() []cluster.Member {
	return []cluster.Member{n.member("a", n.a), n.member("b", n.b)}
}
func (*fuzzNet) ProtocolRange() cluster.ProtocolRange { return cluster.ProtocolRange{Min: 1, Max: 1} }
func (*fuzzNet) SetTag(string, string) error          { return nil }
func (*fuzzNet) Broadcast(string, []byte) error       { return nil }
func (n *fuzzNet) Query(_ context.Context, _ string, _ []byte, nodes []string, _ time.Duration, enough func(string, []byte) bool) (map[string][]byte, error) {
	got := map[string][]byte{}
	for _, name := range nodes {
		if name == "b" && n.answer != nil {
			got[name] = n.answer
			enough(name, n.answer)
		}
	}
	return got, nil
}

// fuzzPeers serves one plan (bytes and signature) from every peer.
type fuzzPeers struct{ plan, sig []byte }

func (p *fuzzPeers) Plan(context.Context, cluster.Member, string) ([]byte, []byte, error) {
	return p.plan, p.sig, nil
}
func (*fuzzPeers) Artifact(context.Context, cluster.Member, string) (io.ReadCloser, error) {
	return nil, errors.New("no artifacts here")
}
func (*fuzzPeers) Pieces(context.Context, cluster.Member, string, int64) ([]byte, error) {
	return nil, errors.New("no pieces here")
}
func (*fuzzPeers) Piece(context.Context, cluster.Member, string, int64, int) (io.ReadCloser, error) {
	return nil, errors.New("no pieces here")
}
func (*fuzzPeers) Node(context.Context, cluster.Member) (NodeState, error) {
	return NodeState{}, errors.New("no state here")
}

type fuzzRig struct {
	e     *Engine
	net   *fuzzNet
	peers *fuzzPeers
	p     *plan.Compiled // a's and b's plan, made by b, stored at a
}

func newFuzzRig(tb testing.TB) *fuzzRig {
	tb.Helper()
	dir := tb.TempDir()
	net := &fuzzNet{a: fixedKey(tb, 1), b: fixedKey(tb, 2)}
	peers := &fuzzPeers{}
	e, err := New(Config{DataDir: dir, Identity: net.a, Logger: slog.New(slog.DiscardHandler), AllowUnsigned: true, Peers: peers,
		Clock: clock.NewFake(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)),
		Target: &Self{Executable: filepath.Join(dir, "peerd"), Build: buildinfo.Info{Version: "1.0.0"},
			Store: versions.New(filepath.Join(dir, "versions"), "peerd", filepath.Join(dir, "peerd"))}}, net)
	if err != nil {
		tb.Fatal(err)
	}
	e.MembersChanged(net.Members())
	p, err := plan.Compile(plan.Plan{
		Target: TargetPeerd, Version: "2.0.0",
		Artifact: plan.Artifact{SHA256: hexSHA([]byte("v2")), Size: 2},
		Options:  plan.Options{Batch: 1, Deadline: time.Minute},
		Members:  []plan.Member{{Name: "a", Key: net.a.Public.String()}, {Name: "b", Key: net.b.Public.String()}},
		Origin:   "b", Seq: 1,
	})
	if err != nil {
		tb.Fatal(err)
	}
	p.Sig = net.b.Sign(domainPlan, []byte(p.ID))
	if err := e.plans.save(p); err != nil {
		tb.Fatal(err)
	}
	return &fuzzRig{e: e, net: net, peers: peers, p: p}
}

// FuzzStateFile: state.json either decodes into a state the machine can
// act on, or is refused (the engine then starts in safe mode); a decoded
// state writes and reads back the same.
func FuzzStateFile(f *testing.F) {
	good, _ := json.Marshal(NodeState{PlanID: hexSHA([]byte("p")), Phase: PhaseReady, Wave: 1, FromVersion: "1.0.0", ToVersion: "2.0.0", Highest: "2.0.0"})
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeState(b)
		if err != nil {
			return
		}
		path := filepath.Join(t.TempDir(), "state.json")
		if err := SaveState(path, st); err != nil {
			t.Fatal(err)
		}
		again, err := LoadState(path)
		if err != nil {
			t.Fatalf("a state that decoded does not read back: %v", err)
		}
		a, _ := json.Marshal(st)
		b2, _ := json.Marshal(again)
		if string(a) != string(b2) {
			t.Fatalf("state changed on the way through its file:\n%s\n%s", a, b2)
		}
	})
}

// FuzzLockFile: lock.json either decodes into a lock whose plan sequence
// is at most the highest seen, or is refused.
func FuzzLockFile(f *testing.F) {
	good, _ := json.Marshal(lockState{Seq: 4, PlanID: hexSHA([]byte("p")), PlanSeq: 4, At: time.Unix(1, 0).UTC()})
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		l := &planLock{}
		if err := l.decode(b); err != nil {
			return
		}
		if l.st.PlanSeq > l.st.Seq {
			t.Fatalf("lock holds sequence %d above the highest seen, %d", l.st.PlanSeq, l.st.Seq)
		}
	})
}

// FuzzLeaseRequest: a lease query from any member gets a signed answer
// from a, and a grant only for a request b really signed, for a wave of the
// plan b is in.
func FuzzLeaseRequest(f *testing.F) {
	r := newFuzzRig(f)
	for _, req := range []lease.Request{
		{PlanID: r.p.ID, Wave: r.p.WaveOf("b"), Node: "b", Nonce: "n"},
		{PlanID: r.p.ID, Wave: 999, Node: "b", Nonce: "n", TTL: 1 << 62},
		{PlanID: r.p.ID, Wave: r.p.WaveOf("b"), Node: "b", Nonce: "n", Release: true},
	} {
		b, _ := r.net.b.Seal(domainLeaseRequest, req)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		b, err := r.e.HandleQuery(queryLease, payload)
		if err != nil {
			t.Fatal(err)
		}
		var a leaseAnswer
		if err := identity.Open(domainLeaseAnswer, b, &a, func(any) (identity.PublicKey, error) { return r.net.a.Public, nil }); err != nil {
			t.Fatalf("a's answer does not verify: %v", err)
		}
		if !a.Granted {
			return
		}
		var req lease.Request
		if identity.Open(domainLeaseRequest, payload, &req, func(any) (identity.PublicKey, error) { return r.net.b.Public, nil }) != nil {
			t.Fatalf("granted a request b did not sign: %q", payload)
		}
		if !req.Release && (req.PlanID != r.p.ID || req.Wave != r.p.WaveOf("b") || a.For > maxLeaseTTL) {
			t.Fatalf("granted %+v for %s", req, a.For)
		}
	})
}

// FuzzLeaseAnswer: whatever b answers a's lease request, it never counts
// as b's grant unless b signed it for this very request, and a majority
// of a and b's plan (both) can never come from b's answer alone.
func FuzzLeaseAnswer(f *testing.F) {
	r := newFuzzRig(f)
	ok, _ := r.net.b.Seal(domainLeaseAnswer, leaseAnswer{Voter: "b", PlanID: r.p.ID, Wave: r.p.WaveOf("a"), Node: "a", Granted: true, For: time.Minute})
	f.Add(ok)
	f.Fuzz(func(t *testing.T, answer []byte) {
		r.net.answer = answer
		lasts, _ := quorumLeases{r.e}.Request(t.Context(), r.p, r.p.WaveOf("a"), false)
		if lasts != 0 {
			t.Fatalf("a lease from b's answer alone: %q", answer)
		}
	})
}

// FuzzLockRequest: a plan lock query gets a signed answer, and commits a
// sequence only at or below what a could ever have been asked for.
func FuzzLockRequest(f *testing.F) {
	r := newFuzzRig(f)
	f.Add([]byte(`{"origin":"b","nonce":"n"}`))
	f.Add([]byte(`{"origin":"b","commit":true,"plan_id":"` + r.p.ID + `","seq":2,"nonce":"n"}`))
	f.Add([]byte(`{"origin":"b","commit":true,"plan_id":"` + r.p.ID + `","seq":18446744073709551615}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		b, err := r.e.HandleQuery(queryLock, payload)
		if err != nil {
			t.Fatal(err)
		}
		var a lockAnswer
		if err := identity.Open(domainLockAnswer, b, &a, func(any) (identity.PublicKey, error) { return r.net.a.Public, nil }); err != nil {
			t.Fatalf("a's answer does not verify: %v", err)
		}
		r.e.lock.mu.Lock()
		st := r.e.lock.st
		r.e.lock.mu.Unlock()
		if st.PlanSeq > st.Seq {
			t.Fatalf("lock at sequence %d above the highest seen %d", st.PlanSeq, st.Seq)
		}
	})
}

// FuzzEvent: a control event counts only when b signed it as its own, and
// moves a's control sequence by a bounded step; a plan announcement queues
// at most an ID.
func FuzzEvent(f *testing.F) {
	r := newFuzzRig(f)
	c, _ := r.net.b.Seal(domainControl, controlMsg{PlanID: r.p.ID, Action: ActionPause, Sender: "b", Seq: 3})
	f.Add(false, uint64(5), c)
	f.Add(true, uint64(7), []byte(r.p.ID))
	f.Add(false, ^uint64(0), c)
	f.Fuzz(func(t *testing.T, announce bool, ltime uint64, payload []byte) {
		name := eventControl
		if announce {
			name = eventPlan
		}
		r.e.HandleEvent(name, ltime, payload)
		st := NodeState{PlanID: r.p.ID, ControlSeq: 10}
		for _, m := range r.e.m.mail.take() {
			switch m := m.(type) {
			case controlMsg:
				var got controlMsg
				if identity.Open(domainControl, payload, &got, func(any) (identity.PublicKey, error) { return r.net.b.Public, nil }) != nil {
					t.Fatalf("took a control event b did not sign: %q", payload)
				}
				before := st.ControlSeq
				if st.takeControl(m, r.e.seenLTime.Load()) && st.ControlSeq > max(before, r.e.seenLTime.Load())+maxControlJump {
					t.Fatalf("control sequence jumped from %d to %d", before, st.ControlSeq)
				}
			case announceMsg:
				if !isHexID(m.id) {
					t.Fatalf("announced %q, not a plan ID", m.id)
				}
			}
		}
	})
}

// FuzzRolloutTags: b's rollout tag r and key tag k, as gossip delivers
// them, never make a see b finished with the plan unless b signed that.
func FuzzRolloutTags(f *testing.F) {
	r := newFuzzRig(f)
	done := Progress{PlanShort: r.p.Short, Wave: r.p.WaveOf("b"), Phase: PhaseDone}
	done.Sig = r.net.b.Sign(domainState, stateMessage("b", TagKey(TargetPeerd), done))
	f.Add(done.String(), r.net.b.Public.String())
	f.Add(r.p.Short+":0:done:AAAA", r.net.a.Public.String())
	f.Fuzz(func(t *testing.T, tag, key string) {
		m := r.net.member("b", r.net.b)
		m.Tags[TagKey(TargetPeerd)], m.Tags[cluster.TagKey] = tag, key
		r.e.MembersChanged([]cluster.Member{m})
		_, _ = r.e.pinnedKey("b")
		r.e.view.running(r.p)
		for w := range r.p.Waves {
			r.e.view.earlierWavesDone(r.p, w)
		}
		if r.e.view.finished(r.p, "b") {
			pr, ok := ParseProgress(tag)
			if !ok || !pr.verifiedBy(r.net.b.Public.String(), "b", TagKey(TargetPeerd)) {
				t.Fatalf("a sees b finished from a tag b did not sign: %q", tag)
			}
		}
	})
}

// FuzzPlanFromPeer: a plan a fetches from a peer by its announced ID is
// taken only when its origin signed it.
func FuzzPlanFromPeer(f *testing.F) {
	r := newFuzzRig(f)
	f.Add(r.p.Encoded, r.p.Sig)
	f.Add(r.p.Encoded, []byte(nil))
	f.Fuzz(func(t *testing.T, b, sig []byte) {
		sum := sha256.Sum256(b)
		id := hex.EncodeToString(sum[:])
		if _, ok := r.e.plans.local(id); ok {
			return // the plan the rig stored
		}
		r.peers.plan, r.peers.sig = b, sig
		p, err := r.e.planByID(t.Context(), id)
		if err != nil {
			return
		}
		if origin, kerr := r.e.pinnedKey(p.Origin); kerr != nil || !origin.Verify(domainPlan, []byte(id), sig) {
			t.Fatalf("took plan %s its origin %q did not sign", p.Short, p.Origin)
		}
		_ = os.Remove(r.e.plans.path(id))
		_ = os.Remove(r.e.plans.path(id) + ".sig")
		r.e.plans.mu.Lock()
		delete(r.e.plans.byID, id)
		r.e.plans.mu.Unlock()
	})
}
