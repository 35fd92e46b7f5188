package cluster

import (
	"fmt"
	"log/slog"
	"net"
	"testing"

	"github.com/hashicorp/serf/serf"
)

// BenchmarkNotifyAlive is the merge delegate's cost for one alive message
// about a known member of a 100-member cluster, with the view and the
// lookup Cluster gives it: Serf calls the delegate for every alive message (each
// entry of every push/pull, each rebroadcast of a tag change), under
// memberlist's lock.
func BenchmarkNotifyAlive(b *testing.B) {
	var sm []serf.Member
	for i := range 100 {
		sm = append(sm, serf.Member{Name: fmt.Sprintf("n%02d", i), Addr: net.IPv4(127, 0, 0, 1), Port: uint16(7000 + i),
			Status: serf.StatusAlive, Tags: map[string]string{TagProtocol: "1-2", TagVersion: "2.0.0", "r": "abcdef12:3:done"}})
	}
	d := newMergeDelegate("n00", ProtocolRange{1, 2}, slog.New(slog.DiscardHandler))
	// serf.Members copies the list; so does this.
	var index memberIndex
	index.update(serf.MemberEvent{Type: serf.EventMemberJoin, Members: sm})
	d.setLocal(func() []Member { return mergeView(append([]serf.Member(nil), sm...)) }, index.lookup)
	in := []*serf.Member{&sm[50]}
	b.ReportAllocs()
	for b.Loop() {
		if err := d.NotifyMerge(in); err != nil {
			b.Fatal(err)
		}
	}
}
