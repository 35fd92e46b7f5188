package upgrade

import (
	"context"
	"io"
	"time"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/peerd/peerd/upgrade/versions"
)

// The engine reaches the world only through the small interfaces in this
// file, so that the same state machine runs on a real Serf cluster and,
// by the hundred, over the in-memory hub of package upgradetest.

// Network is what the engine needs of the cluster; *cluster.Cluster has it.
// Besides these calls, the engine is told of member changes through
// Engine.MembersChanged, and of events and queries through HandleEvent and
// HandleQuery.
type Network interface {
	LocalMember() cluster.Member
	// Members is every member this node knows of, left and failed ones
	// included. It is O(members): the engine calls it to resync its view
	// and for operator commands, not per step.
	Members() []cluster.Member
	ProtocolRange() cluster.ProtocolRange
	SetTag(key, value string) error
	Broadcast(name string, payload []byte) error
	// Query asks nodes and collects their answers until every one
	// answered, enough (called once per answer, in arrival order) says the
	// answers so far suffice, the timeout passed, or ctx ended.
	Query(ctx context.Context, name string, payload []byte, nodes []string, timeout time.Duration, enough func(from string, answer []byte) bool) (map[string][]byte, error)
}

// Peers fetches what other nodes hold: plans and artifacts by their
// sha256, and a node's rollout state. HTTPPeers is the real one; its server
// side is PeerRoutes, in the same file, so that each route is written once.
type Peers interface {
	// Plan returns a plan's bytes and its origin's signature.
	Plan(ctx context.Context, m cluster.Member, id string) (plan, sig []byte, err error)
	Artifact(ctx context.Context, m cluster.Member, sha string) (io.ReadCloser, error)
	// Pieces is which of blob sha's pieces of size m holds, its raw
	// have-bitmap (piece.ParseBitmap checks it); swarm.ErrOldPeer when m
	// has no piece API (an agent from before pieces).
	Pieces(ctx context.Context, m cluster.Member, sha string, size int64) ([]byte, error)
	// Piece streams piece i of blob sha cut in pieces of size.
	Piece(ctx context.Context, m cluster.Member, sha string, size int64, i int) (io.ReadCloser, error)
	Node(ctx context.Context, m cluster.Member) (NodeState, error)
}

// Target is what a rollout installs: peerd itself (Self) or a managed
// application (App). Everything that differs between the two is here.
type Target interface {
	// Name is the target's name: TargetPeerd or the application's.
	Name() string
	// Running is the version and binary path running now (a patch applies
	// to that binary).
	Running() (version, path string)
	// Check is the preflight of a staged, verified artifact: the artifact's
	// own account of what it is (version, platform, protocol). It returns
	// what it checked, for the origin to show.
	Check(ctx context.Context, c Check) ([]string, error)
	// Stage puts the verified artifact of version into the version store
	// without making it current: everything slow about an install (copy,
	// hash, fsync, extraction) happens here, in prepare, while the node
	// still serves.
	Stage(staged, version string) error
	// Activate makes the staged version the version store's current one
	// (the running one stays, for rollback): under the lease, a swap of
	// links and nothing slower. A version not staged is
	// versions.ErrNotStaged.
	Activate(version, running string) error
	// Restart brings up the version store's current version. When
	// RestartsAgent, it only asks the agent to restart (the state machine
	// stops and the next process carries on); otherwise it returns once
	// the target runs again under this agent.
	Restart(ctx context.Context) error
	RestartsAgent() bool
	// Healthy is the health gate's check of the new version.
	Healthy(ctx context.Context) error
	// Versions is the target's version store.
	Versions() *versions.Store
	// VersionOf is the version of the target a member runs, as status
	// shows it.
	VersionOf(m cluster.Member) string
	// PreviousVersion is the version of the kept binary at path, which a
	// rollback returns to.
	PreviousVersion(ctx context.Context, path string) (string, error)
}

// Check is what a Target's preflight is asked about.
type Check struct {
	Staged  string // the staged artifact
	Version string // the version the plan names
	// Rollback is set for a plan back to an older version.
	Rollback bool
	// ActiveProtocol is the cluster's active protocol (peerd only).
	ActiveProtocol int
}

// LeaseRequester asks the granters for a wave's lease. quorumLeases is the
// real one, over Network.Query; the decisions stay in package lease.
type LeaseRequester interface {
	// Request asks for this node's part in wave's grant, or with renew
	// extends the part it holds (never acquiring one). held is how long a
	// majority of p's snapshot holds the wave for this node, counted from
	// before the request was sent; 0 when it was not granted (why says why).
	Request(ctx context.Context, p *plan.Compiled, wave int, renew bool) (held time.Duration, why string)
	// Release gives this node's hold back; it reports whether a majority
	// of the snapshot took it.
	Release(ctx context.Context, p *plan.Compiled, wave int) (released bool, why string)
}
