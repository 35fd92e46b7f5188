// Package api holds the types of the agent's local control API (HTTP over
// a unix socket) and the client the CLI uses to call it.
package api

// Member is one row of `peerd members`.
type Member struct {
	Name        string            `json:"name"`
	Addr        string            `json:"addr"`
	Status      string            `json:"status"`
	Version     string            `json:"version"`
	ProtocolMin int               `json:"protocol_min"`
	ProtocolMax int               `json:"protocol_max"`
	HTTPAddr    string            `json:"http_addr,omitempty"`
	Tags        map[string]string `json:"tags"`
}

// Info is what `peerd info` prints.
type Info struct {
	Node    Member      `json:"node"`
	Cluster ClusterInfo `json:"cluster"`
	Build   Build       `json:"build"`
	// Addrs are the addresses the agent bound. Over the peer HTTP API,
	// which anyone on the network may call, PID and Socket are left out.
	Addrs Addrs `json:"addrs"`
	// ArtifactBytesServed counts the artifact bytes this node served to peers.
	ArtifactBytesServed int64 `json:"artifact_bytes_served"`
}

// AddrsFile is the file in the data dir where a ready agent records the
// addresses it bound (Addrs as JSON, replaced atomically). It is written
// once the agent serves, so a harness that started the agent with port 0
// waits for it to name the agent's PID, then reads the ports. It stays
// after the agent exits: the next start there tries the same ports first.
const AddrsFile = "addrs.json"

// Addrs are the addresses an agent bound, with the ports it picked for 0.
type Addrs struct {
	// PID is the agent's process (the same across a re-exec in place).
	PID int `json:"pid,omitempty"`
	// Gossip is the gossip address bound, TCP and UDP.
	Gossip string `json:"gossip"`
	// GossipAdvertise is the gossip address others reach this node at:
	// the one to --join.
	GossipAdvertise string `json:"gossip_advertise"`
	// HTTP is the peer HTTP API address bound.
	HTTP string `json:"http"`
	// Socket is the control API's unix socket.
	Socket string `json:"socket,omitempty"`
}

// ClusterInfo summarises the cluster as this node sees it.
type ClusterInfo struct {
	// Size counts the members still in the cluster (alive, leaving or failed).
	Size     int            `json:"size"`
	ByStatus map[string]int `json:"by_status"`
	// ActiveProtocol is the minimum over members of their maximum protocol.
	ActiveProtocol int `json:"active_protocol"`
	// ProtocolMin is the highest minimum: every member speaks ProtocolMin..ActiveProtocol.
	ProtocolMin int `json:"protocol_min"`
}

// Build is the agent binary's identity.
type Build struct {
	Version     string `json:"version"`
	Commit      string `json:"commit"`
	GoVersion   string `json:"go_version"`
	OS          string `json:"os"`
	Arch        string `json:"arch"`
	ProtocolMin int    `json:"protocol_min"`
	ProtocolMax int    `json:"protocol_max"`
}

// Health is the peer HTTP API's /v1/health answer.
type Health struct {
	Status  string `json:"status"`
	Node    string `json:"node"`
	Version string `json:"version"`
	// SafeMode says why a rollout engine of the node is in safe mode (it
	// takes no rollout step and grants no lease for a while); the node
	// still serves, so the status stays ok.
	SafeMode string `json:"safe_mode,omitempty"`
}

// Keyring is what the members answered to a gossip keyring operation.
type Keyring struct {
	// Nodes the cluster has, how many answered and how many failed.
	Nodes     int `json:"nodes"`
	Responses int `json:"responses"`
	Errors    int `json:"errors"`
	// Failed maps each failed member to its reason.
	Failed map[string]string `json:"failed,omitempty"`
	// Keys maps each base64 key to the number of members that have it
	// installed; Primary to the number that use it as primary (list).
	Keys    map[string]int `json:"keys,omitempty"`
	Primary map[string]int `json:"primary,omitempty"`
	// Error is set when some member failed or did not answer.
	Error string `json:"error,omitempty"`
}

// JoinRequest asks the agent to join the cluster at these gossip addresses
// (a bare host means port 7946).
type JoinRequest struct {
	Addrs []string `json:"addrs"`
}

// JoinResult is how many of the addresses answered.
type JoinResult struct {
	Contacted int `json:"contacted"`
}

// ForceLeaveRequest asks the agent to mark a failed member as left.
type ForceLeaveRequest struct {
	Node string `json:"node"`
}

// ForceLeaveResult is the member forced out, and its status now.
type ForceLeaveResult struct {
	Node   string `json:"node"`
	Status string `json:"status"`
}

// ForgetResult is the identity key an agent unpinned for a member: Key is
// "" (and Forgotten false) when it had pinned none for that name.
type ForgetResult struct {
	Node      string `json:"node"`
	Forgotten bool   `json:"forgotten"`
	Key       string `json:"key,omitempty"`
}

// Error is the body of a non-2xx answer.
type Error struct {
	Error string `json:"error"`
}

// Upload is the answer to an artifact upload.
type Upload struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// App is one managed application on one node, as `peerd apps` lists it.
type App struct {
	Node       string `json:"node"`
	NodeStatus string `json:"node_status"`
	Name       string `json:"app"`
	Version    string `json:"version,omitempty"`
	// State is the supervisor's: starting, running (healthy), unhealthy,
	// backoff, stopped or not-installed.
	State   string `json:"state"`
	Address string `json:"address,omitempty"`
	// Protocol is the version's protocol range, "MIN-MAX", where its
	// bundle declared one.
	Protocol string `json:"protocol,omitempty"`
	Reason   string `json:"reason,omitempty"`
}
