package integration

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
	"github.com/peerd/peerd/daemon/api"
	"github.com/peerd/peerd/internal/identity"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// joinAsPlainSerf runs an in-process Serf agent with no gossip key, as an
// outsider would, and tries to join addr. It returns the join's error.
func joinAsPlainSerf(t *testing.T, name, addr string) error {
	t.Helper()
	conf := serf.DefaultConfig()
	conf.NodeName = name
	conf.MemberlistConfig = memberlist.DefaultLocalConfig()
	conf.MemberlistConfig.Name = name
	conf.MemberlistConfig.BindAddr = "127.0.0.1"
	conf.MemberlistConfig.BindPort = 0
	conf.MemberlistConfig.Logger = log.New(io.Discard, "", 0)
	conf.Logger = log.New(io.Discard, "", 0)
	s, err := serf.Create(conf)
	require.NoError(t, err)
	defer s.Shutdown()
	_, err = s.Join([]string{addr}, true)
	return err
}

// TestGossipKeyRotation rotates the gossip key at runtime with peerd keyring
// install, use and remove; the change survives a restart (the keyring file
// wins over --encrypt), and an agent that has only the removed key is
// refused.
func TestGossipKeyRotation(t *testing.T) {
	oldKey, newKey := keygen(t), keygen(t)
	agents := startFleetOf(t, 3, bins["v1"], nil, "--encrypt", oldKey)

	keyring := func(args ...string) api.Keyring {
		t.Helper()
		var out api.Keyring
		// Flags first: urfave/cli stops parsing them at the first argument.
		cmd := append([]string{"keyring", args[0], "--json", "--socket", agents[0].socket()}, args[1:]...)
		stdout, stderr, err := agents[0].cli(cmd...)
		require.NoError(t, err, "peerd keyring %v: %s", args, stderr)
		require.NoError(t, json.Unmarshal([]byte(stdout), &out), stdout)
		return out
	}
	before := keyring("list")
	assert.Equal(t, map[string]int{oldKey: 3}, before.Keys)
	assert.Equal(t, map[string]int{oldKey: 3}, before.Primary)

	keyring("install", newKey)
	assert.Equal(t, map[string]int{oldKey: 3, newKey: 3}, keyring("list").Keys, "both keys installed everywhere")
	keyring("use", newKey)
	assert.Equal(t, map[string]int{newKey: 3}, keyring("list").Primary, "every member encrypts with the new key")

	// The primary key cannot be removed: each member refuses.
	_, stderr, err := agents[0].cli("keyring", "remove", "--socket", agents[0].socket(), newKey)
	require.Error(t, err)
	assert.Contains(t, stderr, "failed")

	keyring("remove", oldKey)
	after := keyring("list")
	assert.Equal(t, map[string]int{newKey: 3}, after.Keys, "the old key is gone from every member")
	waitAlive(t, agents, 3)

	// A restart with the same --encrypt (the old key) uses the keyring
	// file: it rejoins the cluster that no longer knows that key.
	agents[2].signal(syscall.SIGKILL)
	_, err = agents[2].wait(10 * time.Second)
	require.NoError(t, err)
	agents[2].run()
	waitAlive(t, agents, 3)
	log, _ := os.ReadFile(agents[2].logPath)
	assert.Contains(t, string(log), "the --encrypt key is not in the keyring file", "it said why --encrypt was not used")

	// A node with only the removed key is an outsider now.
	stale := newAgent(t, "node4", bins["v1"], "--encrypt", oldKey)
	stale.start("--join", agents[0].gossip())
	code, err := stale.wait(30 * time.Second)
	require.NoError(t, err)
	assert.NotEqual(t, 0, code, "an agent with the removed key joined")
	assertNotMember(t, agents, "node4")
}

// TestPeerAPIServesMembersOnly: an outsider who reaches the peer HTTP port
// reads health, never a node's rollout routes (plans, artifacts, state) -
// neither over plain HTTP nor over TLS with a certificate of its own.
func TestPeerAPIServesMembersOnly(t *testing.T) {
	a := newAgent(t, "node1", bins["v1"])
	a.run()
	addr := a.httpAddr()
	h, err := httpHealth(addr)
	require.NoError(t, err)
	assert.Equal(t, "node1", h, "health answers anyone, over plain HTTP")

	outsiderCert, err := identity.New().Certificate("outsider")
	require.NoError(t, err)
	outsider := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{outsiderCert}, InsecureSkipVerify: true},
	}}
	for _, url := range []string{
		"http://" + addr + "/v1/rollout/node",
		"https://" + addr + "/v1/rollout/node",
		"https://" + addr + "/v1/rollout/status",
		"https://" + addr + "/v1/rollout/artifacts/" + strings.Repeat("0", 64),
	} {
		resp, err := outsider.Get(url)
		require.NoError(t, err, url)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, "%s: %s", url, body)
		assert.Contains(t, string(body), "only to cluster members", url)
	}
	resp, err := outsider.Get("https://" + addr + "/v1/health")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "health over TLS too")
}
