package handoff

import (
	"net"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A listener handed over by descriptor is the same socket: a connection
// queued in its backlog while nobody accepts is accepted on the other side.
func TestHandOverAListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var s Set
	require.NoError(t, s.Add(HTTP, ln))
	ln.Close() // the duplicate keeps it listening
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err, "queued in the backlog, not refused")
	defer c.Close()

	env, err := s.Env()
	require.NoError(t, err)
	_, v, _ := strings.Cut(env, "=")
	in, err := parse(v)
	require.NoError(t, err)
	got, err := in.Listener(HTTP)
	require.NoError(t, err)
	defer got.Close()
	s.Close()
	assert.NoError(t, Match(got.Addr(), "127.0.0.1:0"))
	conn, err := got.Accept()
	require.NoError(t, err)
	conn.Close()
	l, err := in.Listener(GossipTCP)
	assert.NoError(t, err)
	assert.Nil(t, l, "nothing was handed over under that name")
}

func TestParseRefusesMalformedNames(t *testing.T) {
	for _, bad := range []string{"http", "http=x", "=5", "http=1"} {
		_, err := parse(bad)
		assert.Error(t, err, bad)
	}
	in, err := parse("http=987") // not open: skipped
	require.NoError(t, err)
	assert.Empty(t, in.Names())
}

func TestMatch(t *testing.T) {
	a := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7947}
	assert.NoError(t, Match(a, "127.0.0.1:7947"))
	assert.NoError(t, Match(a, "127.0.0.1:0"))
	assert.ErrorIs(t, Match(a, "127.0.0.1:7948"), ErrAddrChanged)
	assert.ErrorIs(t, Match(a, "0.0.0.0:7947"), ErrAddrChanged)
	assert.NoError(t, Match(&net.TCPAddr{IP: net.IPv4zero, Port: 7947}, ":7947"))
}
