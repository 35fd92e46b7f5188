package daemon

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The peer HTTP API's limits. Anyone on the network can reach it: a client
// that sends its request slowly, reads its answer slowly or never, or
// keeps a connection open must not hold a file descriptor for long, and
// many downloads at once must not starve /v1/health.
const (
	peerReadHeaderTimeout = 5 * time.Second
	peerReadTimeout       = 10 * time.Second // requests are GETs with no body
	peerWriteTimeout      = 30 * time.Second // an artifact stream moves it on per chunk (upgrade.PeerRoutes)
	peerIdleTimeout       = 10 * time.Second // a peer's fetches are one-shot
	peerMaxHeaderBytes    = 16 << 10
	// maxArtifactStreams bounds the artifact downloads served at once;
	// beyond it a client gets 503 with Retry-After and fetches from another
	// peer (every node that has the artifact serves it) or later.
	maxArtifactStreams = 16
	artifactRetryAfter = 2 * time.Second
)

// newPeerServer is the peer HTTP API's server, with its time and size
// limits; h comes capped by limitArtifactStreams.
func newPeerServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: peerReadHeaderTimeout,
		ReadTimeout:       peerReadTimeout,
		WriteTimeout:      peerWriteTimeout,
		IdleTimeout:       peerIdleTimeout,
		MaxHeaderBytes:    peerMaxHeaderBytes,
	}
}

// artifactRoute prefixes the artifact downloads (upgrade.PeerRoutes).
const artifactRoute = "/v1/rollout/artifacts/"

// limitArtifactStreams serves at most max artifact downloads at once and
// answers the others 503 at once, so a flood of slow downloads holds a
// bounded number of open artifact files and streams.
func limitArtifactStreams(next http.Handler, max int) http.Handler {
	slots := make(chan struct{}, max)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, artifactRoute) {
			next.ServeHTTP(w, r)
			return
		}
		select {
		case slots <- struct{}{}:
			defer func() { <-slots }()
			next.ServeHTTP(w, r)
		default:
			w.Header().Set("Retry-After", strconv.Itoa(int(artifactRetryAfter/time.Second)))
			writeError(w, http.StatusServiceUnavailable, errArtifactsBusy)
		}
	})
}

var errArtifactsBusy = errors.New("this node serves as many artifact downloads as it may; fetch from another peer or retry")
