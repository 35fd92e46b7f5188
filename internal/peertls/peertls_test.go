package peertls

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/peerd/peerd/internal/identity"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// server serves h on one port, plain and TLS, with key's certificate.
func server(t *testing.T, key identity.Key, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	cert, err := key.Certificate("srv")
	require.NoError(t, err)
	d := Split(ln)
	plain := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	secure := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, TLSConfig: ServerConfig(cert)}
	go func() { _ = plain.Serve(d.Plain()) }()
	go func() { _ = secure.Serve(tls.NewListener(d.TLS(), secure.TLSConfig)) }()
	t.Cleanup(func() { plain.Close(); secure.Close(); d.Close() })
	return ln.Addr().String()
}

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestMembersOnlyOverTLSWithAPinnedKey(t *testing.T) {
	srvKey, member, outsider := identity.New(), identity.New(), identity.New()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") })
	secret := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "plan") })
	mux.Handle("/v1/rollout/", Member(func(k identity.PublicKey) string {
		if k.Equal(member.Public) {
			return "member"
		}
		return ""
	}, secret))
	addr := server(t, srvKey, mux)
	pinned := func(name string) identity.PublicKey {
		if name == "srv" {
			return srvKey.Public
		}
		return nil
	}
	resolve := func(string) (string, error) { return addr, nil }
	client := func(k identity.Key) *http.Client {
		cert, err := k.Certificate("c")
		require.NoError(t, err)
		return Client(cert, resolve, pinned, 10*time.Second)
	}

	// Plain HTTP on the same port: health yes, rollout routes no.
	code, body := get(t, http.DefaultClient, "http://"+addr+"/v1/health")
	assert.Equal(t, 200, code)
	assert.Equal(t, "ok", body)
	code, body = get(t, http.DefaultClient, "http://"+addr+"/v1/rollout/plans/x")
	assert.Equal(t, http.StatusForbidden, code)
	assert.Contains(t, body, "only to cluster members, over TLS")

	code, body = get(t, client(member), "https://srv/v1/rollout/plans/x")
	assert.Equal(t, 200, code)
	assert.Equal(t, "plan", body, "a member with a pinned key is served")

	code, body = get(t, client(outsider), "https://srv/v1/rollout/plans/x")
	assert.Equal(t, http.StatusForbidden, code, "a key no member was pinned with")
	assert.Contains(t, body, "no member's pinned node key")
	code, _ = get(t, client(outsider), "https://srv/v1/health")
	assert.Equal(t, 200, code, "health is for anyone, over TLS too")
}

func TestClientRefusesAServerWithAnotherKey(t *testing.T) {
	real, impostor, me := identity.New(), identity.New(), identity.New()
	addr := server(t, impostor, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "forged plan") }))
	cert, err := me.Certificate("me")
	require.NoError(t, err)
	c := Client(cert, func(string) (string, error) { return addr, nil }, func(name string) identity.PublicKey {
		if name == "srv" {
			return real.Public
		}
		return nil
	}, 10*time.Second)
	_, err = c.Get("https://srv/v1/rollout/plans/x")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "another identity key than the one pinned for it")
	_, err = c.Get("https://stranger/v1/rollout/plans/x")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no identity key pinned for member stranger")
}

// A client that connects and says nothing holds up no one else: the first
// byte is awaited in the connection's own goroutine.
func TestSilentConnectionBlocksNoOne(t *testing.T) {
	addr := server(t, identity.New(), http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") }))
	var silent []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		silent = append(silent, c)
	}
	defer func() {
		for _, c := range silent {
			c.Close()
		}
	}()
	code, body := get(t, &http.Client{Timeout: 5 * time.Second}, "http://"+addr+"/")
	assert.Equal(t, 200, code)
	assert.Equal(t, "ok", body)
}
