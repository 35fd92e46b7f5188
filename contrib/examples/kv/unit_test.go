package main

import (
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNewer(t *testing.T) {
	jsonCT := &Meta{ContentType: "application/json"}
	text := &Meta{ContentType: "text/plain"}
	base := Entry{Key: "k", Value: "v", TS: 10, Origin: "b"}
	with := func(f func(*Entry)) Entry { e := base; f(&e); return e }
	tests := []struct {
		name string
		a, b Entry
		want bool
	}{
		{"later ts wins", with(func(e *Entry) { e.TS = 11 }), base, true},
		{"earlier ts loses", with(func(e *Entry) { e.TS = 9; e.Origin = "z" }), base, false},
		{"same ts: higher origin wins", with(func(e *Entry) { e.Origin = "c" }), base, true},
		{"same ts: lower origin loses", with(func(e *Entry) { e.Origin = "a" }), base, false},
		{"same ts and origin: value breaks the tie", with(func(e *Entry) { e.Value = "w" }), base, true},
		{"identical: no replace", base, base, false},
		{"same write: the copy with meta wins", with(func(e *Entry) { e.Meta = jsonCT }), base, true},
		{"same write: meta is never dropped", base, with(func(e *Entry) { e.Meta = jsonCT }), false},
		{"same write, both with meta: total order", with(func(e *Entry) { e.Meta = text }), with(func(e *Entry) { e.Meta = jsonCT }), true},
		{"meta does not beat a later write", with(func(e *Entry) { e.Meta = jsonCT }), with(func(e *Entry) { e.TS = 11 }), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, newer(tt.a, tt.b))
			if tt.want {
				assert.False(t, newer(tt.b, tt.a), "the order must be antisymmetric")
			}
		})
	}
}

// TestApplyConverges merges the same writes in many orders, as different
// instances receive them, and expects one outcome.
func TestApplyConverges(t *testing.T) {
	writes := []Entry{
		{Key: "a", Value: "1", TS: 5, Origin: "n1"},
		{Key: "a", Value: "2", TS: 5, Origin: "n2"},
		{Key: "a", Value: "0", TS: 4, Origin: "n3"},
		{Key: "b", Value: "x", TS: 7, Origin: "n1"},
		{Key: "b", Value: "x", TS: 7, Origin: "n1", Meta: &Meta{ContentType: "text/x"}},
		{Key: "b", Value: "y", TS: 6, Origin: "n2"},
	}
	var want []Entry
	for i := range 20 {
		st, err := openStore(t.TempDir())
		require.NoError(t, err)
		perm := shuffled(writes, uint64(i))
		// Half the runs merge in one batch (a dump), half one by one (pushes).
		if i%2 == 0 {
			_, err = st.Apply(perm)
			require.NoError(t, err)
		} else {
			for _, e := range perm {
				_, err = st.Apply([]Entry{e})
				require.NoError(t, err)
			}
		}
		got := st.All()
		require.NoError(t, st.Close())
		if want == nil {
			want = got
			assert.Equal(t, "2", got[0].Value)
			assert.Equal(t, &Meta{ContentType: "text/x"}, got[1].Meta)
		}
		assert.Equal(t, want, got, "order %d", i)
	}
}

func shuffled(es []Entry, seed uint64) []Entry {
	out := append([]Entry(nil), es...)
	r := rand.New(rand.NewPCG(seed, seed))
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func TestStoreReopen(t *testing.T) {
	dir := t.TempDir()
	st, err := openStore(dir)
	require.NoError(t, err)
	first, err := st.Put("k", "v1", "me", nil)
	require.NoError(t, err)
	_, err = st.Put("k", "v2", "me", &Meta{ContentType: "text/x"})
	require.NoError(t, err)
	_, err = st.Put("other", "o", "me", nil)
	require.NoError(t, err)
	require.NoError(t, st.Close())

	// A crash in the middle of an append leaves a line without its newline.
	f, err := os.OpenFile(filepath.Join(dir, "kv.log"), os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = io.WriteString(f, `{"key":"torn","val`)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	st, err = openStore(dir)
	require.NoError(t, err)
	defer st.Close()
	e, ok := st.Get("k")
	require.True(t, ok)
	assert.Equal(t, "v2", e.Value)
	assert.Equal(t, &Meta{ContentType: "text/x"}, e.Meta)
	_, ok = st.Get("torn")
	assert.False(t, ok)
	assert.Equal(t, 2, st.Len())

	// The reopened log was compacted to one line per key, torn line gone, and
	// the clock carries on above what the log held.
	b, err := os.ReadFile(filepath.Join(dir, "kv.log"))
	require.NoError(t, err)
	assert.Equal(t, 2, strings.Count(string(b), "\n"))
	assert.True(t, strings.HasSuffix(string(b), "\n"))
	next, err := st.Put("k", "v3", "me", nil)
	require.NoError(t, err)
	assert.Greater(t, next.TS, first.TS)
}

func TestStoreCorruptLog(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "kv.log"), []byte("{\"key\":\"a\"}\nnot json\n"), 0o600))
	_, err := openStore(dir)
	require.ErrorContains(t, err, "line 2 is corrupt")
}

func TestPutTimestampsAboveSeen(t *testing.T) {
	st, err := openStore(t.TempDir())
	require.NoError(t, err)
	defer st.Close()
	// A peer with a clock far ahead: our next write must still win over it.
	future := Entry{Key: "k", Value: "theirs", TS: 1 << 62, Origin: "zzz"}
	_, err = st.Apply([]Entry{future})
	require.NoError(t, err)
	e, err := st.Put("k", "ours", "a", nil)
	require.NoError(t, err)
	assert.Greater(t, e.TS, future.TS)
	got, _ := st.Get("k")
	assert.Equal(t, "ours", got.Value)
}

func TestWire(t *testing.T) {
	meta := &Meta{ContentType: "application/json"}
	e := Entry{Key: "k", Value: "v", TS: 42, Origin: "a", Meta: meta}
	tests := []struct {
		name     string
		entry    Entry
		sendAs   int // protocol the sender encodes with
		recvMax  int // highest protocol of the receiver
		wantJSON string
		want     Entry
		wantErr  string
	}{
		{"v1 to v1", e, 1, 1, `{"proto":1,"key":"k","value":"v","ts":42,"origin":"a"}`,
			Entry{Key: "k", Value: "v", TS: 42, Origin: "a"}, ""},
		{"v1 to v2", e, 1, 2, `{"proto":1,"key":"k","value":"v","ts":42,"origin":"a"}`,
			Entry{Key: "k", Value: "v", TS: 42, Origin: "a"}, ""},
		{"v2 to v2 keeps meta", e, 2, 2, `{"proto":2,"key":"k","value":"v","ts":42,"origin":"a","meta":{"content_type":"application/json"}}`,
			e, ""},
		{"v2 without meta", Entry{Key: "k", Value: "v", TS: 42, Origin: "a"}, 2, 2, `{"proto":2,"key":"k","value":"v","ts":42,"origin":"a"}`,
			Entry{Key: "k", Value: "v", TS: 42, Origin: "a"}, ""},
		{"v2 to v1 is refused", e, 2, 1, "", Entry{}, "unsupported wire protocol 2"},
		{"unknown future protocol", e, 3, 2, "", Entry{}, "unsupported wire protocol 3"},
		{"missing origin", Entry{Key: "k", TS: 1}, 1, 2, "", Entry{}, "needs key, origin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(encode(tt.entry, tt.sendAs))
			require.NoError(t, err)
			if tt.wantJSON != "" {
				assert.JSONEq(t, tt.wantJSON, string(b))
			}
			var m message
			require.NoError(t, json.Unmarshal(b, &m))
			got, err := decode(m, tt.recvMax)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestDecodeIgnoresMetaInV1(t *testing.T) {
	// A v1 message never has meta; if a sloppy sender adds some, a v2
	// receiver must not keep what the v1 protocol cannot carry.
	var m message
	require.NoError(t, json.Unmarshal([]byte(`{"proto":1,"key":"k","value":"v","ts":1,"origin":"a","meta":{"content_type":"x"},"future":true}`), &m))
	e, err := decode(m, 2)
	require.NoError(t, err)
	assert.Nil(t, e.Meta)
}

func TestNegotiate(t *testing.T) {
	tests := []struct {
		ours    int
		peer    versionInfo
		want    int
		wantErr bool
	}{
		{1, versionInfo{Protocol: 1, ProtocolMin: 1}, 1, false},
		{1, versionInfo{Protocol: 2, ProtocolMin: 1}, 1, false},
		{2, versionInfo{Protocol: 1, ProtocolMin: 1}, 1, false},
		{2, versionInfo{Protocol: 2, ProtocolMin: 1}, 2, false},
		{2, versionInfo{Protocol: 2}, 2, false}, // no protocol_min: assume 1
		{2, versionInfo{Protocol: 5, ProtocolMin: 3}, 0, true},
	}
	for _, tt := range tests {
		got, err := negotiate(tt.ours, tt.peer)
		if tt.wantErr {
			assert.ErrorContains(t, err, "no common wire protocol")
			continue
		}
		require.NoError(t, err)
		assert.Equal(t, tt.want, got, "ours %d peer %+v", tt.ours, tt.peer)
	}
}

func TestBuildProtocol(t *testing.T) {
	tests := []struct {
		version, protocol string
		want              int
		wantErr           bool
	}{
		{"1.0.0", "", 1, false},
		{"v1.4.2", "", 1, false},
		{"2.0.0", "", 2, false},
		{"7.0.0", "", 2, false}, // capped at what this source implements
		{"2.0.0", "1", 1, false},
		{"1.0.0", "2", 2, false},
		{"dev", "", 0, true},
		{"1.0.0", "3", 0, true},
		{"1.0.0", "x", 0, true},
	}
	for _, tt := range tests {
		got, err := buildProtocol(tt.version, tt.protocol)
		if tt.wantErr {
			assert.Error(t, err, "%s/%s", tt.version, tt.protocol)
			continue
		}
		require.NoError(t, err)
		assert.Equal(t, tt.want, got, "%s/%s", tt.version, tt.protocol)
	}
}

func TestLoadPeers(t *testing.T) {
	file := filepath.Join(t.TempDir(), "peers.json")
	require.NoError(t, os.WriteFile(file, []byte(`[
		{"name":"a","addr":"127.0.0.1:1","version":"1.0.0"},
		{"name":"b","addr":"127.0.0.1:2","version":"2.0.0","zone":"ignored"},
		{"name":"c","addr":"127.0.0.1:3"}]`), 0o600))
	cfg := config{name: "a", listen: "0.0.0.0:1", peersFile: file,
		peersEnv: `[{"name":"c","addr":"127.0.0.1:3"},{"name":"me-by-addr","addr":"0.0.0.0:1"}]`}
	peers, err := cfg.loadPeers()
	require.NoError(t, err)
	assert.Equal(t, []Peer{{Name: "b", Addr: "127.0.0.1:2", Version: "2.0.0"}, {Name: "c", Addr: "127.0.0.1:3"}}, peers)

	for _, bad := range []string{`{"name":"a"}`, `[{"name":"a"}]`, `[{"addr":"nohost"}]`, `[`} {
		_, err := parsePeers([]byte(bad))
		assert.Error(t, err, bad)
	}
	peers, err = parsePeers([]byte(" \n"))
	require.NoError(t, err)
	assert.Empty(t, peers)
}

func TestParseConfig(t *testing.T) {
	env := map[string]string{"KV_LISTEN": "127.0.0.1:9", "KV_DATA_DIR": "/d", "KV_PEERS": "[]"}
	cfg, err := parseConfig([]string{"--name", "n"}, func(k string) string { return env[k] }, io.Discard, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:9", cfg.listen)
	assert.Equal(t, "/d", cfg.dataDir)
	assert.Equal(t, "n", cfg.name)
	assert.Equal(t, "[]", cfg.peersEnv)

	// Every problem is reported at once.
	_, err = parseConfig([]string{"--listen", "nope", "--anti-entropy-interval", "0s"}, func(string) string { return "" }, io.Discard, io.Discard)
	require.Error(t, err)
	for _, want := range []string{"--data-dir", "--listen", "must be positive"} {
		assert.ErrorContains(t, err, want)
	}
}
