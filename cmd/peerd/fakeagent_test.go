package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// fakeAgent serves a control API on a unix socket with the given routes,
// so that client commands can be run against answers a test chooses. It
// records the requests' paths and bodies.
type fakeAgent struct {
	Socket string
	mu     sync.Mutex
	calls  []fakeCall
}

type fakeCall struct {
	Method, Path string
	Body         []byte
}

func newFakeAgent(t *testing.T, routes map[string]http.HandlerFunc) *fakeAgent {
	t.Helper()
	// A short path: a unix socket's path is limited to 107 bytes.
	dir, err := os.MkdirTemp("", "peerd-cli-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeAgent{Socket: filepath.Join(dir, "peerd.sock")}
	ln, err := net.Listen("unix", f.Socket)
	require.NoError(t, err)
	mux := http.NewServeMux()
	for pattern, h := range routes {
		mux.HandleFunc(pattern, h)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body bytes.Buffer
		_, _ = body.ReadFrom(r.Body)
		f.mu.Lock()
		f.calls = append(f.calls, fakeCall{Method: r.Method, Path: r.URL.Path, Body: body.Bytes()})
		f.mu.Unlock()
		r.Body = readCloser{bytes.NewReader(body.Bytes())}
		mux.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return f
}

// Calls returns the requests the agent received.
func (f *fakeAgent) Calls() []fakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeCall(nil), f.calls...)
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

// answer replies with v as JSON.
func answer(v any) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
}

// fail replies with an API error.
func fail(code int, msg string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
	}
}
