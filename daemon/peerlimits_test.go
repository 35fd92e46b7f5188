package daemon

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestArtifactStreamsAreCapped: past the cap, an artifact download is
// answered 503 with Retry-After at once; other routes are not counted.
func TestArtifactStreamsAreCapped(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	h := limitArtifactStreams(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/health" {
			entered <- struct{}{}
			<-release
		}
		w.WriteHeader(http.StatusOK)
	}), 2)
	srv := httptest.NewServer(h)
	defer srv.Close()

	done := make(chan int, 2)
	for range 2 {
		go func() {
			resp, err := http.Get(srv.URL + artifactRoute + "abc")
			if err == nil {
				resp.Body.Close()
				done <- resp.StatusCode
			} else {
				done <- 0
			}
		}()
		<-entered
	}
	resp, err := http.Get(srv.URL + artifactRoute + "abc")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "a third stream past a cap of 2")
	assert.Equal(t, "2", resp.Header.Get("Retry-After"))
	resp, err = http.Get(srv.URL + "/v1/health")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "health is not an artifact stream")

	close(release)
	assert.Equal(t, http.StatusOK, <-done)
	assert.Equal(t, http.StatusOK, <-done)
	go func() {
		resp, err := http.Get(srv.URL + artifactRoute + "abc")
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-entered // a slot is free again
}
