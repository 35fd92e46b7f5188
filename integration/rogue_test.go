package integration

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"log"
	"reflect"
	"testing"
	"time"
	"unsafe"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
	"github.com/peerd/peerd/daemon/agenttest"
	"github.com/peerd/peerd/internal/identity"
	"github.com/stretchr/testify/require"
)

// rogue is a compromised member, in this test process: a Serf member
// holding the cluster's gossip key and an identity key of its own (in its
// k tag, pinned by the agents on first sight like any member's). It sees
// the cluster's events and queries on events and may send whatever it
// likes.
type rogue struct {
	t      testing.TB
	name   string
	key    identity.Key
	s      *serf.Serf
	events chan serf.Event
}

// serfWithKey makes a Serf instance on loopback port 0 that holds the
// test agents' gossip key.
func serfWithKey(t testing.TB, name string, tags map[string]string, events chan serf.Event) *serf.Serf {
	t.Helper()
	secret, err := base64.StdEncoding.DecodeString(agenttest.GossipKey)
	require.NoError(t, err)
	conf := serf.DefaultConfig()
	conf.NodeName = name
	conf.Tags = tags
	conf.EventCh = events
	conf.Logger = log.New(io.Discard, "", 0)
	conf.MemberlistConfig = memberlist.DefaultLocalConfig()
	conf.MemberlistConfig.Name = name
	conf.MemberlistConfig.BindAddr = "127.0.0.1"
	conf.MemberlistConfig.BindPort = 0
	conf.MemberlistConfig.SecretKey = secret
	conf.MemberlistConfig.Logger = log.New(io.Discard, "", 0)
	s, err := serf.Create(conf)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Shutdown() })
	return s
}

// newRogue joins a rogue member named name to the cluster at addr. It
// advertises what a 1.0.0 agent does, with a key of its own.
func newRogue(t testing.TB, name, addr string) *rogue {
	t.Helper()
	r := &rogue{t: t, name: name, key: identity.New(), events: make(chan serf.Event, 1024)}
	r.s = serfWithKey(t, name, map[string]string{"v": "1.0.0", "p": "1-1", "k": r.key.Public.String()}, r.events)
	_, err := r.s.Join([]string{addr}, true)
	require.NoError(t, err)
	return r
}

// query asks the cluster (every member) and collects the answers by
// sender until the timeout.
func (r *rogue) query(name string, payload []byte, timeout time.Duration) map[string][]byte {
	r.t.Helper()
	resp, err := r.s.Query(name, payload, &serf.QueryParam{Timeout: timeout, RelayFactor: 2})
	require.NoError(r.t, err)
	out := map[string][]byte{}
	for a := range resp.ResponseCh() {
		out[a.From] = a.Payload
	}
	return out
}

// respondAs answers query q in the name of another member: it sends, from
// forger (a Serf instance that holds the gossip key but never joined, named
// as the member it speaks for), the response q's own Respond would send.
// Serf takes the sender's name from the response itself, so the asker
// sees an answer from that member.
func respondAs(q *serf.Query, forger *serf.Serf, payload []byte) error {
	fq := &serf.Query{LTime: q.LTime, Name: q.Name, Payload: q.Payload}
	src, dst := reflect.ValueOf(q).Elem(), reflect.ValueOf(fq).Elem()
	for _, f := range []string{"id", "addr", "port", "sourceNode", "deadline", "relayFactor"} {
		s, d := src.FieldByName(f), dst.FieldByName(f)
		reflect.NewAt(d.Type(), unsafe.Pointer(d.UnsafeAddr())).Elem().Set(reflect.NewAt(s.Type(), unsafe.Pointer(s.UnsafeAddr())).Elem())
	}
	d := dst.FieldByName("serf")
	reflect.NewAt(d.Type(), unsafe.Pointer(d.UnsafeAddr())).Elem().Set(reflect.ValueOf(forger))
	return fq.Respond(payload)
}

// leaseAnswerDoc is a granter's answer as it travels (upgrade.leaseAnswer).
type leaseAnswerDoc struct {
	Voter   string        `json:"voter"`
	PlanID  string        `json:"plan_id"`
	Wave    int           `json:"wave"`
	Node    string        `json:"node"`
	Nonce   string        `json:"nonce"`
	Granted bool          `json:"granted"`
	For     time.Duration `json:"for,omitempty"`
	Reason  string        `json:"reason,omitempty"`
}

// openAnswer decodes a signed lease answer, checking it against key.
func openAnswer(t testing.TB, b []byte, key identity.PublicKey) leaseAnswerDoc {
	t.Helper()
	var a leaseAnswerDoc
	require.NoError(t, identity.Open("peerd/lease-answer/1", b, &a, func(any) (identity.PublicKey, error) { return key, nil }))
	return a
}

// nodeKey is the identity key in an agent's data dir.
func nodeKey(t testing.TB, a *agent) identity.Key {
	t.Helper()
	k, err := identity.LoadOrCreate(a.dataDir() + "/" + identity.FileName)
	require.NoError(t, err)
	return k
}

// grantsOf reads an agent's persisted lease grants (both generations).
func grantsOf(t testing.TB, a *agent) []grantDoc {
	t.Helper()
	var out []grantDoc
	for _, f := range []string{"grants.json", "grants.json.prev"} {
		b, err := readIfExists(a.dataDir() + "/rollout/" + f)
		require.NoError(t, err)
		if len(b) == 0 {
			continue
		}
		var doc struct {
			Grants []grantDoc `json:"grants"`
		}
		require.NoError(t, json.Unmarshal(b, &doc), "%s %s: %s", a.name, f, b)
		out = append(out, doc.Grants...)
	}
	return out
}

type grantDoc struct {
	PlanID  string    `json:"plan_id"`
	Wave    int       `json:"wave"`
	Since   time.Time `json:"since"`
	Expires time.Time `json:"expires"`
	Holders []string  `json:"holders"`
}
