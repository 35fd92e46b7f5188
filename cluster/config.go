package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
)

// Tags this package owns. Other packages may add their own tags, but never
// these: they carry the node's identity for version-compatible peering.
const (
	TagVersion  = "v"
	TagProtocol = "p"
	// TagLeaving is set by a node that is about to leave gracefully. Serf
	// can take a leave for a failure when the leave intent loses a race
	// with a push/pull sync (the intent then looks old); a failed member
	// with this tag is reported as left, as it said it would be.
	TagLeaving = "l"
)

// Gossip timing profiles, after memberlist's defaults.
const (
	ProfileLAN   = "lan"   // memberlist's LAN defaults: failure detection in seconds
	ProfileWAN   = "wan"   // tolerant of high latency
	ProfileLocal = "local" // a single host or rack
	// ProfileFast detects failures in a second or two. It is meant for
	// loopback clusters (demos and tests), where packets are never lost.
	ProfileFast = "fast"
	// ProfileLocalLarge is for many agents sharing one host (a loopback
	// fleet of ~100 on two cores): packets are not lost there either, but
	// a process may wait seconds for a core, so failures are detected in
	// 15-100 s rather than mistaken for a busy machine. Its gossip packets
	// are larger than a LAN's MTU: not for agents on separate machines.
	ProfileLocalLarge = "local-large"
)

// Profiles lists the gossip profiles, as the flag's help names them.
var Profiles = []string{ProfileLAN, ProfileWAN, ProfileLocal, ProfileFast, ProfileLocalLarge}

// Config configures one node's membership. It does not change after New.
type Config struct {
	NodeName string
	// BindAddr is the gossip address, host:port (UDP and TCP). Port 0 picks
	// a free port (see PreferPort); BoundAddr reports the one bound.
	BindAddr string
	// PreferPort, when BindAddr's port is 0, is the port to try first: the
	// one this node bound when it last ran, so that a restart (a crash, a
	// self-upgrade) keeps its address. Peers know a member by its address:
	// one that comes back at another port while they still count it alive
	// or failed is refused as a conflict until they forget it. When the
	// port is taken, a free one is picked.
	PreferPort int
	// AdvertiseAddr is the host:port other nodes reach this one at, when it
	// differs from BindAddr (NAT, 0.0.0.0 binds). Port 0 advertises the
	// bound port.
	AdvertiseAddr string
	// Version and Protocol are this build's identity, advertised in tags.
	Version  string
	Protocol ProtocolRange
	// Tags are the user's tags; SetTags replaces them. They must not use
	// TagVersion or TagProtocol.
	Tags map[string]string
	// OwnTags are tags the agent itself owns (e.g. its HTTP port, rollout
	// state); SetTag changes them one at a time and SetTags leaves them be.
	OwnTags map[string]string
	// Keyring encrypts gossip; nil means unencrypted.
	Keyring *memberlist.Keyring
	// KeyringFile is where Serf persists key rotations (optional).
	KeyringFile string
	// SnapshotPath lets a restarted node rejoin the members it last knew,
	// from Serf's snapshot and the peers file beside it. With it, the node
	// also keeps trying, every reconnect interval of the profile, the peers
	// it knew and does not see alive (see peers.go).
	SnapshotPath string
	// ReconnectTimeout is how long a member that failed is kept, and tried
	// again, by Serf and in the peers file; zero is Serf's default, 24 h.
	ReconnectTimeout time.Duration
	// NodeKey is this node's public identity key (identity.PublicKey's
	// String), advertised in TagKey; empty advertises none. Other members'
	// keys are pinned in a file beside the snapshot.
	NodeKey string
	// Profile is one of the Profile* gossip timings.
	Profile string
	Logger  *slog.Logger
	// Inherited, when set, are gossip sockets the previous image of this
	// agent handed over across its re-exec: Start serves on them instead
	// of binding (and closes them, binding afresh, when they are not on
	// BindAddr). Start takes them over, even when it fails.
	Inherited *Listeners
}

// DefaultConfig returns a config with the LAN profile and an unset node name
// and identity, which the caller must fill in.
func DefaultConfig() Config {
	return Config{
		BindAddr: "0.0.0.0:7946",
		Protocol: ProtocolRange{Min: 1, Max: 1},
		Profile:  ProfileLAN,
		Logger:   slog.Default(),
	}
}

// TestConfig returns a config for an in-process test node on loopback with
// a free port and the fast profile.
func TestConfig(name string) Config {
	c := DefaultConfig()
	c.NodeName = name
	c.BindAddr = "127.0.0.1:0"
	c.Version = "0.0.0-test"
	c.Profile = ProfileFast
	c.Logger = slog.New(slog.DiscardHandler)
	return c
}

// Validate reports every problem with the config at once.
func (c Config) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("node name is empty"))
	}
	if _, _, err := SplitHostPort(c.BindAddr); err != nil {
		errs = append(errs, fmt.Errorf("bind address: %w", err))
	}
	if c.AdvertiseAddr != "" {
		if _, _, err := SplitHostPort(c.AdvertiseAddr); err != nil {
			errs = append(errs, fmt.Errorf("advertise address: %w", err))
		} else if err := checkAdvertisePort(c.BindAddr, c.AdvertiseAddr); err != nil {
			errs = append(errs, fmt.Errorf("advertise address %s: %w", c.AdvertiseAddr, err))
		}
	}
	if c.ReconnectTimeout < 0 {
		errs = append(errs, fmt.Errorf("reconnect timeout %s: want 0 (the default) or more", c.ReconnectTimeout))
	}
	if c.PreferPort < 0 || c.PreferPort > 65535 {
		errs = append(errs, fmt.Errorf("preferred port %d: want 0 to 65535", c.PreferPort))
	}
	if err := c.Protocol.Validate(); err != nil {
		errs = append(errs, err)
	}
	for _, k := range []string{TagVersion, TagProtocol, TagLeaving, TagKey} {
		if _, ok := c.Tags[k]; ok {
			errs = append(errs, fmt.Errorf("tag %q is reserved for peerd", k))
		}
	}
	if !slices.Contains(Profiles, c.Profile) {
		errs = append(errs, fmt.Errorf("gossip profile %q: want one of %s", c.Profile, strings.Join(Profiles, ", ")))
	}
	if c.Logger == nil {
		errs = append(errs, errors.New("logger is nil"))
	}
	return errors.Join(errs...)
}

// SplitHostPort parses a host:port address with a numeric port and an IP or
// empty host, naming what is wrong in its error.
func SplitHostPort(addr string) (host string, port int, err error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%q is not HOST:PORT (e.g. 127.0.0.1:7946)", addr)
	}
	port, err = strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, p)
	}
	if h != "" && net.ParseIP(h) == nil {
		return "", 0, fmt.Errorf("%q: host %q is not an IP address", addr, h)
	}
	return h, port, nil
}

// checkAdvertisePort refuses a fixed advertised port with a bind port of 0:
// memberlist replaces the advertised port with the one it picked, so the
// fixed one would hold only on the restarts that get their old port back.
func checkAdvertisePort(bind, advertise string) error {
	_, bp, err := SplitHostPort(bind)
	if err != nil {
		return nil // reported by the bind address's own check
	}
	_, ap, _ := SplitHostPort(advertise)
	if bp == 0 && ap != 0 {
		return fmt.Errorf("port %d with a bind port of 0 (any free port): give the bind address a fixed port, or advertise port 0 (the bound one)", ap)
	}
	return nil
}

// serfConfig translates the config into Serf's, with the timing profile
// applied, to bind the given gossip port (0: memberlist picks one).
func (c Config) serfConfig(port int) *serf.Config {
	sc := serf.DefaultConfig()
	switch c.Profile {
	case ProfileWAN:
		sc.MemberlistConfig = memberlist.DefaultWANConfig()
	case ProfileLocal:
		sc.MemberlistConfig = memberlist.DefaultLocalConfig()
	case ProfileFast:
		ml := memberlist.DefaultLocalConfig()
		// Still well below the LAN defaults, but with room for a loaded
		// test machine (two cores, -race): a starved process must not be
		// declared dead while it is merely slow.
		ml.ProbeInterval = 250 * time.Millisecond
		ml.ProbeTimeout = 200 * time.Millisecond
		ml.GossipInterval = 50 * time.Millisecond
		ml.PushPullInterval = 5 * time.Second
		ml.SuspicionMult = 4
		ml.SuspicionMaxTimeoutMult = 4
		ml.TCPTimeout = 2 * time.Second
		sc.MemberlistConfig = ml
		sc.LeavePropagateDelay = 200 * time.Millisecond
		sc.BroadcastTimeout = 2 * time.Second
		sc.ReapInterval = time.Second
		sc.ReconnectInterval = time.Second
	case ProfileLocalLarge:
		sc.MemberlistConfig = localLargeConfig()
		// SetTags waits this long for a tag's broadcast to be sent its
		// full count (~1 s at 100 members: 12 sends, 3 a gossip round);
		// past it the tag is still set and spreads (the rollout engine
		// counts it published). The default 5 s held a node's next tag,
		// its queries and its restart behind a slow broadcast.
		sc.BroadcastTimeout = 2 * time.Second
	}
	sc.NodeName = c.NodeName
	sc.MemberlistConfig.Name = c.NodeName
	host, _, _ := SplitHostPort(c.BindAddr)
	if host == "" {
		host = "0.0.0.0"
	}
	sc.MemberlistConfig.BindAddr = host
	// With port 0, memberlist sets both ports to the one it picked.
	sc.MemberlistConfig.BindPort = port
	sc.MemberlistConfig.AdvertisePort = port
	if c.AdvertiseAddr != "" {
		ah, ap, _ := SplitHostPort(c.AdvertiseAddr)
		sc.MemberlistConfig.AdvertiseAddr = ah
		if ap != 0 {
			sc.MemberlistConfig.AdvertisePort = ap
		}
	}
	sc.MemberlistConfig.Keyring = c.Keyring
	sc.KeyringFile = c.KeyringFile
	sc.SnapshotPath = c.SnapshotPath
	sc.RejoinAfterLeave = false
	if c.ReconnectTimeout > 0 {
		sc.ReconnectTimeout = c.ReconnectTimeout
	}
	return sc
}

// localLargeConfig is memberlist's LAN config made safe for ~100 agents on
// two shared cores. On one host a probe is never lost, only late: the
// answer waits for a core (seconds, when a wave of agents restarts or
// other work shares the machine), and at the fast profile's timings a
// late answer made a suspect, whose refutation every member received and
// gossiped on, which made more late answers: 100 agents never converged.
// These timings leave a starved process ample time to answer and to refute.
func localLargeConfig() *memberlist.Config {
	ml := memberlist.DefaultLANConfig()
	// A probe every 2 s (LAN: 1 s) halves the probe traffic, and the
	// direct ack may take 1 s before indirect probes and a TCP ping are
	// tried, which have until the end of the interval.
	ml.ProbeInterval = 2 * time.Second
	ml.ProbeTimeout = time.Second
	// A suspect has SuspicionMult x log10(members) x ProbeInterval to
	// refute: 16 s at 100 members, up to 6x that (LAN's max multiplier)
	// while few others confirm. A restarting agent is back within a few
	// seconds; a dead one is declared in 16-96 s.
	ml.SuspicionMult = 4
	ml.SuspicionMaxTimeoutMult = 6
	// LAN's gossip (3 nodes every 200 ms, each message sent 4 x
	// ceil(log10(members+1)) times: 12 at 100) reaches every member in
	// about a second; fewer sends would leave about one broadcast in four
	// missing a member (e^-6 each at 6 sends), for push/pull to heal.
	ml.GossipInterval = 200 * time.Millisecond
	ml.GossipNodes = 3
	ml.RetransmitMult = 4
	// Push/pull heals what gossip missed: every 15 s, which memberlist
	// scales to 45 s at 100 members; with each node also the partner of
	// others' syncs, a missed tag is healed in ~10-20 s. The merge of a
	// push/pull is cheap again (see mergeDelegate's fast path).
	ml.PushPullInterval = 15 * time.Second
	// A push/pull or TCP ping to a starved process may take seconds.
	ml.TCPTimeout = 5 * time.Second
	// On one host bytes are free and CPU is not: LZW on every packet sent
	// and received was 12% of the agents' CPU in a 100-agent rollout
	// (perf). Members with compression on still read these packets, and
	// these members read theirs.
	ml.EnableCompression = false
	// Gossip has room for what a rollout sends: LAN's 1,400-byte packets
	// (~7 tag changes each, 15 packets a second a node) fell behind the
	// bursts of a 100-agent rollout (20 nodes changing phase at once, each
	// change sent 12 times by every member), and lease queries, gossiped
	// after memberlist's own messages, took over 3 s to reach a majority:
	// 49 timed-out lease requests in one rollout, none with 16 KiB packets
	// (and half the wait between waves). On one host a datagram crosses no
	// real link: loopback's MTU is 64 KiB, and a bridge's fragments are
	// put together again by the same kernel. Every member reads packets
	// up to 64 KiB, whatever its profile.
	ml.UDPBufferSize = 16 * 1024
	return ml
}
