package cluster

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/serf/serf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func serfMember(name, protocol string) *serf.Member {
	return &serf.Member{Name: name, Tags: map[string]string{TagProtocol: protocol}}
}

func delegateWithView(self string, p ProtocolRange, view ...Member) *mergeDelegate {
	d := newMergeDelegate(self, p, slog.New(slog.DiscardHandler))
	setView(d, view...)
	return d
}

func setView(d *mergeDelegate, view ...Member) {
	d.setLocal(func() []Member { return view }, func(name string) (Member, bool) {
		for _, m := range view {
			if m.Name == name {
				return m, true
			}
		}
		return Member{}, false
	})
}

func TestMergeDelegate(t *testing.T) {
	v1, v2, v3 := ProtocolRange{1, 1}, ProtocolRange{1, 2}, ProtocolRange{3, 3}
	alive := func(name string, r ProtocolRange) Member { return Member{Name: name, Status: "alive", Protocol: r} }

	t.Run("joiner alone is refused with both ranges", func(t *testing.T) {
		d := delegateWithView("new", v3, alive("new", v3))
		err := d.NotifyMerge([]*serf.Member{serfMember("a", "1-1"), serfMember("b", "1-2")})
		require.ErrorIs(t, err, ErrIncompatibleProtocol)
		assert.ErrorIs(t, d.refusal(), ErrIncompatibleProtocol, "the joiner remembers why, for its Join error")
	})

	t.Run("a failed member that announced its leave has left", func(t *testing.T) {
		// The last of the 1-1 members left (Serf saw it fail: see
		// TagLeaving); the 3-3 joiner need only match the rest.
		gone := serfMember("old", "1-1")
		gone.Status, gone.Tags[TagLeaving] = serf.StatusFailed, "1"
		d := delegateWithView("new", v3, alive("new", v3))
		assert.NoError(t, d.NotifyMerge([]*serf.Member{gone, serfMember("a", "3-3")}))

		gone.Tags[TagLeaving] = ""
		assert.ErrorIs(t, d.NotifyMerge([]*serf.Member{gone, serfMember("a", "3-3")}), ErrIncompatibleProtocol,
			"a failed member may come back at the version it had")
	})

	t.Run("a member rolled back to a build without the active protocol gets back in", func(t *testing.T) {
		// Everyone ran 1-2 (active protocol 2) when the last wave's node
		// failed its health gate and went back to 1-1.
		d := delegateWithView("a", v2, alive("a", v2), alive("b", v2), Member{Name: "last", Status: "failed", Protocol: v2})
		assert.NoError(t, d.NotifyMerge([]*serf.Member{serfMember("last", "1-1")}), "the cluster side")

		self := serfMember("last", "1-2")
		self.Status = serf.StatusFailed
		joiner := delegateWithView("last", v1, alive("last", v1))
		assert.NoError(t, joiner.NotifyMerge([]*serf.Member{serfMember("a", "1-2"), serfMember("b", "1-2"), self}),
			"the returning node's side: the cluster still lists it")

		// A newcomer at 1-1 is still refused, on both sides.
		assert.ErrorIs(t, d.NotifyMerge([]*serf.Member{serfMember("new", "1-1")}), ErrIncompatibleProtocol)
		stranger := delegateWithView("new", v1, alive("new", v1))
		assert.ErrorIs(t, stranger.NotifyMerge([]*serf.Member{serfMember("a", "1-2"), serfMember("b", "1-2")}), ErrIncompatibleProtocol)
		// And a returning member may not split the cluster.
		assert.ErrorIs(t, d.NotifyMerge([]*serf.Member{serfMember("last", "3-3")}), ErrIncompatibleProtocol)
		joiner3 := delegateWithView("last", v3, alive("last", v3))
		assert.ErrorIs(t, joiner3.NotifyMerge([]*serf.Member{serfMember("a", "1-2"), serfMember("b", "1-2"), self}), ErrIncompatibleProtocol)
		assert.ErrorIs(t, joiner3.refusal(), ErrIncompatibleProtocol, "the returning node remembers why")
	})

	t.Run("cluster refuses an incompatible newcomer", func(t *testing.T) {
		d := delegateWithView("a", v1, alive("a", v1), alive("b", v2))
		assert.ErrorIs(t, d.NotifyMerge([]*serf.Member{serfMember("new", "3-3")}), ErrIncompatibleProtocol)
		assert.NoError(t, d.NotifyMerge([]*serf.Member{serfMember("new", "1-2")}))
	})

	t.Run("half-merged view does not refuse old members", func(t *testing.T) {
		// A v2 node restarted after its upgrade has rejoined only its v2
		// peers from its snapshot; the rest of the cluster, still at v1,
		// arrives through --join and must be accepted.
		d := delegateWithView("n3", v2, alive("n3", v2), alive("n5", v2), alive("n10", v2))
		err := d.NotifyMerge([]*serf.Member{
			serfMember("n1", "1-1"), serfMember("n2", "1-1"), serfMember("n5", "1-2"), serfMember("n10", "1-2"),
		})
		assert.NoError(t, err)
	})

	t.Run("members of an accepted merge pass their alive messages", func(t *testing.T) {
		d := delegateWithView("j", v2, alive("j", v2))
		require.NoError(t, d.NotifyMerge([]*serf.Member{serfMember("a", "1-1"), serfMember("b", "1-2"), serfMember("c", "1-2")}))
		// memberlist now announces them one by one; b is in first.
		setView(d, alive("j", v2), alive("b", v2), alive("c", v2))
		assert.NoError(t, d.NotifyMerge([]*serf.Member{serfMember("a", "1-1")}))
	})

	t.Run("half-merged view takes in the whole cluster", func(t *testing.T) {
		// Later in the rollout: only one node is still at v1, and the
		// restarted node's partial view holds none of the v1 nodes.
		d := delegateWithView("n7", v2, alive("n7", v2), alive("n1", v2))
		err := d.NotifyMerge([]*serf.Member{serfMember("n1", "1-2"), serfMember("n3", "1-2"), serfMember("n10", "1-1")})
		assert.NoError(t, err)
	})

	t.Run("a member known before a restart is no newcomer", func(t *testing.T) {
		// A restarted v2 node has so far rejoined only another v2 node; the
		// v1 members it knew before arrive one by one through gossip.
		d := delegateWithView("n5", v2, alive("n5", v2), alive("n4", v2))
		d.setPrevious(map[string]bool{"n1": true, "n4": true})
		assert.NoError(t, d.NotifyMerge([]*serf.Member{serfMember("n1", "1-1")}))
		assert.ErrorIs(t, d.NotifyMerge([]*serf.Member{serfMember("new", "1-1")}), ErrIncompatibleProtocol,
			"a true newcomer still has to speak the active protocol")
		assert.ErrorIs(t, d.NotifyMerge([]*serf.Member{serfMember("n1", "3-3")}), ErrIncompatibleProtocol,
			"a known member must still not split the cluster")
	})

	t.Run("an alive message of a member as it was passes; a left one is a newcomer again", func(t *testing.T) {
		// The view is already split (it cannot be, after the checks; here
		// it shows that the message about an unchanged member skipped them).
		d := delegateWithView("a", v2, alive("a", v2), alive("b", v2), alive("c", v3))
		assert.NoError(t, d.NotifyMerge([]*serf.Member{serfMember("b", "1-2")}))
		assert.ErrorIs(t, d.NotifyMerge([]*serf.Member{serfMember("b", "1-1")}), ErrIncompatibleProtocol, "at another range it is checked")

		d = delegateWithView("a", v2, alive("a", v2), alive("b", v2), Member{Name: "old", Status: "left", Protocol: v1})
		assert.ErrorIs(t, d.NotifyMerge([]*serf.Member{serfMember("old", "1-1")}), ErrIncompatibleProtocol,
			"a member that left comes back as a newcomer, held to the active protocol")
	})

	t.Run("groups that share no protocol are refused", func(t *testing.T) {
		d := delegateWithView("a", v1, alive("a", v1), alive("b", v1))
		err := d.NotifyMerge([]*serf.Member{serfMember("x", "3-3"), serfMember("y", "3-4")})
		assert.ErrorIs(t, err, ErrIncompatibleProtocol)
	})

	t.Run("a member without a protocol tag is refused", func(t *testing.T) {
		d := delegateWithView("a", v1, alive("a", v1), alive("b", v1))
		err := d.NotifyMerge([]*serf.Member{{Name: "x", Tags: map[string]string{}}})
		assert.ErrorContains(t, err, "is it a peerd agent?")
	})
}

func TestSnapshotMembers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serf.snapshot")
	require.NoError(t, os.WriteFile(path, []byte("alive: a 127.0.0.1:1\nalive: b 127.0.0.1:2\nclock: 4\nnot-alive: a\nalive: c 127.0.0.1:3\n"), 0o600))
	assert.Equal(t, map[string]bool{"b": true, "c": true}, snapshotMembers(path))
	assert.Empty(t, snapshotMembers(filepath.Join(t.TempDir(), "none")))
}

func TestMemberIndexFollowsEvents(t *testing.T) {
	var x memberIndex
	a := *serfMember("a", "1-2")
	a.Status = serf.StatusAlive
	x.update(serf.MemberEvent{Type: serf.EventMemberJoin, Members: []serf.Member{a}})
	m, ok := x.lookup("a")
	require.True(t, ok)
	assert.Equal(t, Member{Name: "a", Status: "alive", Protocol: ProtocolRange{1, 2}}, m)

	a.Status = serf.StatusLeft
	x.update(serf.MemberEvent{Type: serf.EventMemberLeave, Members: []serf.Member{a}})
	m, _ = x.lookup("a")
	assert.False(t, inCluster(m), "a member that left no longer counts")

	x.update(serf.MemberEvent{Type: serf.EventMemberReap, Members: []serf.Member{a}})
	_, ok = x.lookup("a")
	assert.False(t, ok, "a reaped member is gone")
}
