package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/serf/serf"
	"github.com/peerd/peerd/internal/handoff"
)

// Member is one node as this node sees it.
type Member struct {
	Name    string
	Addr    string // gossip address, host:port
	Status  string // alive, leaving, left, failed
	Version string
	// Protocol is the member's advertised range; zero when it advertises none.
	Protocol ProtocolRange
	Tags     map[string]string
}

// Cluster is this node's membership in a Serf cluster.
type Cluster struct {
	cfg   Config
	log   *slog.Logger
	merge *mergeDelegate

	// Set by Start, read-only after.
	serf      *serf.Serf
	transport *transport // the gossip sockets, which memberlist serves on
	boundAddr string     // the gossip address bound, host:port
	events    chan serf.Event
	index     memberIndex // from the event loop, for the merge delegate
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	handler Handler // set before Start

	// rejoinEvery paces the rejoin loop: the profile's reconnect interval.
	rejoinEvery time.Duration
	// querySizeLimit is Serf's: the largest query it sends, encoded.
	querySizeLimit int
	// book is the peers file's content: every peer this node knew and
	// did not see leave. Start reads it; the event loop owns it after.
	book *peerBook
	// previousPeers are the gossip addresses of the members this node knew
	// when it last ran (from its peers file), read once by Start.
	previousPeers []string
	// rejoinMu is held while the rejoin loop joins a peer, and leaving
	// stops it: a join that completes during a graceful leave would
	// announce this node as rejoined.
	rejoinMu sync.Mutex
	leaving  atomic.Bool

	// localMu keeps a query from starting while a tag update is applied:
	// serf.Query reads the local node through a pointer that memberlist
	// hands out of its lock, and UpdateNode (SetTags) writes that node.
	// Queries share it; tag updates hold it alone, until Serf returns.
	localMu sync.RWMutex

	mu       sync.Mutex // guards the fields below
	userTags map[string]string
	ownTags  map[string]string
	closed   bool
}

// Handler receives the cluster's member changes, user events and queries.
// Queries are answered on their own goroutine, so a slow answer does not
// hold up gossip. Events may arrive out of order, or again after a
// restart: ltime is the event's Lamport time, higher for an event sent
// after another was seen. Member changes arrive in order, on one
// goroutine, and must not block.
type Handler interface {
	HandleMembers(ms []Member)
	HandleEvent(name string, ltime uint64, payload []byte)
	HandleQuery(name string, payload []byte) ([]byte, error)
}

// StatusReaped is the status HandleMembers reports for a member that was
// removed from the member list (Serf reaps left and long-failed members).
const StatusReaped = "reaped"

// SetHandler installs h; it must be called before Start.
func (c *Cluster) SetHandler(h Handler) { c.handler = h }

// New checks the config and returns a Cluster that has not touched the network.
func New(cfg Config) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Cluster{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "cluster"),
		userTags: maps.Clone(cfg.Tags),
		ownTags:  maps.Clone(cfg.OwnTags),
	}
	c.merge = newMergeDelegate(cfg.NodeName, cfg.Protocol, c.log)
	if cfg.NodeKey != "" {
		path := ""
		if cfg.SnapshotPath != "" {
			path = filepath.Join(filepath.Dir(cfg.SnapshotPath), "pins.json")
		}
		p, err := loadPins(path)
		if err != nil {
			return nil, err
		}
		c.merge.pins = p
	}
	return c, nil
}

// Forget unpins a member's identity key, so that it may come back with a
// new one (its data dir was lost). Only an operator should ask this. It
// returns the key it unpinned, "" if none was pinned for name.
func (c *Cluster) Forget(name string) (string, error) {
	if c.merge.pins == nil {
		return "", errors.New("this node pins no identity keys")
	}
	return c.merge.pins.forget(name)
}

// PinnedKey is the identity key this node pinned for member name, or "".
func (c *Cluster) PinnedKey(name string) string {
	if c.merge.pins == nil {
		return ""
	}
	return c.merge.pins.key(name)
}

// MemberOfKey is the member this node pinned identity key for, or "".
func (c *Cluster) MemberOfKey(key string) string {
	if c.merge.pins == nil || key == "" {
		return ""
	}
	return c.merge.pins.memberOf(key)
}

// Start binds the gossip address and starts Serf. If a snapshot from an
// earlier run exists, Serf rejoins the members it lists by itself.
func (c *Cluster) Start(ctx context.Context) error {
	ln, err := c.gossipSockets()
	if err != nil {
		return err
	}
	port := ln.TCP.Addr().(*net.TCPAddr).Port
	sc := c.cfg.serfConfig(port)
	sc.Tags = c.tagsLocked()
	c.rejoinEvery = sc.ReconnectInterval
	c.querySizeLimit = sc.QuerySizeLimit
	c.book = newPeerBook(c.cfg.NodeName, c.reconnectTimeout())
	if c.cfg.SnapshotPath != "" {
		known := snapshotMembers(c.cfg.SnapshotPath)
		c.loadPeers()
		for name := range c.book.peers {
			if name != c.cfg.NodeName {
				known[name] = true
			}
		}
		c.previousPeers = c.book.others()
		c.merge.setPrevious(known)
	}
	c.events = make(chan serf.Event, 256)
	sc.EventCh = c.events
	sc.Merge = c.merge
	sc.Logger = newStdLogger(c.cfg.Logger)
	sc.MemberlistConfig.Logger = sc.Logger
	host, _, _ := SplitHostPort(c.cfg.BindAddr)
	if host == "" {
		host = "0.0.0.0"
	}
	c.transport = newTransport(ln, host, sc.Logger)
	sc.MemberlistConfig.Transport = c.transport

	s, err := serf.Create(sc)
	if err != nil {
		c.transport.Shutdown()
		return fmt.Errorf("start gossip on %s: %w", c.cfg.BindAddr, err)
	}
	c.serf = s
	c.boundAddr = net.JoinHostPort(host, strconv.Itoa(port))
	c.merge.setLocal(c.mergeView, c.index.lookup)
	c.transport.open()

	loopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c.cancel = cancel
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.eventLoop(loopCtx)
	}()
	c.log.Info("gossip started", "node", c.cfg.NodeName, "bound", c.boundAddr, "addr", c.LocalAddr(),
		"version", c.cfg.Version, "protocol", c.cfg.Protocol.String(), "encrypted", c.cfg.Keyring != nil)
	return nil
}

// gossipSockets are the sockets to serve gossip on: those the previous
// image handed over when they are on the configured address, else a fresh
// bind of the chosen port.
func (c *Cluster) gossipSockets() (Listeners, error) {
	if in := c.cfg.Inherited; in != nil && in.TCP != nil && in.UDP != nil {
		err := handoff.Match(in.TCP.Addr(), c.cfg.BindAddr)
		if err == nil {
			err = handoff.Match(in.UDP.LocalAddr(), c.cfg.BindAddr)
		}
		if err == nil && in.TCP.Addr().(*net.TCPAddr).Port == in.UDP.LocalAddr().(*net.UDPAddr).Port {
			c.log.Info("serving gossip on the sockets the previous image handed over", "addr", in.TCP.Addr().String())
			return *in, nil
		}
		c.log.Warn("the gossip sockets handed over are not on --bind; binding afresh", "got", in.TCP.Addr().String(), "bind", c.cfg.BindAddr, "err", err)
	}
	if in := c.cfg.Inherited; in != nil {
		if in.TCP != nil {
			in.TCP.Close()
		}
		if in.UDP != nil {
			in.UDP.Close()
		}
	}
	port, err := c.choosePort()
	if err != nil {
		return Listeners{}, err
	}
	host, _, _ := SplitHostPort(c.cfg.BindAddr)
	ln, err := listenGossip(host, port)
	if err != nil {
		return Listeners{}, fmt.Errorf("start gossip: %w; %s", err, BindHint(err, "--bind"))
	}
	return ln, nil
}

// HandOff adds duplicates of the gossip sockets to s, for the image this
// agent re-execs into: they stay open when Close closes the originals.
func (c *Cluster) HandOff(s *handoff.Set) error {
	if c.transport == nil {
		return errors.New("gossip is not started")
	}
	return errors.Join(s.Add(handoff.GossipTCP, c.transport.ln.TCP), s.Add(handoff.GossipUDP, c.transport.ln.UDP))
}

// PreviousPeers are the gossip addresses of the members this node knew when
// it last ran. A restarted node rejoins them by itself.
func (c *Cluster) PreviousPeers() []string { return c.previousPeers }

// snapshotMembers lists the members a Serf snapshot file records as alive
// ("alive: NAME ADDR" and "not-alive: NAME" lines, in order).
func snapshotMembers(path string) map[string]bool {
	out := map[string]bool{}
	b, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "alive: "); ok {
			if name, _, ok := strings.Cut(rest, " "); ok {
				out[name] = true
			}
		} else if name, ok := strings.CutPrefix(line, "not-alive: "); ok {
			delete(out, strings.TrimSpace(name))
		}
	}
	return out
}

// choosePort is the gossip port to bind: the configured one, checked first
// so that a port in use gets a clear error; for port 0, the preferred port
// while it is free, else 0 for memberlist to pick one (it binds TCP and UDP
// on the same number, retrying when the UDP half is taken).
func (c *Cluster) choosePort() (int, error) {
	host, port, err := SplitHostPort(c.cfg.BindAddr)
	if err != nil {
		return 0, err
	}
	if port != 0 {
		return port, checkBindable(c.cfg.BindAddr)
	}
	if c.cfg.PreferPort == 0 {
		return 0, nil
	}
	prefer := net.JoinHostPort(host, strconv.Itoa(c.cfg.PreferPort))
	if err := checkBindable(prefer); err != nil {
		c.log.Warn("the gossip port this node had before is taken; binding another (peers that saw this node fail refuse it at a new address until they forget it)",
			"port", c.cfg.PreferPort, "err", err)
		return 0, nil
	}
	return c.cfg.PreferPort, nil
}

// checkBindable tries the gossip port on TCP and UDP first, so that a port in
// use is reported plainly rather than deep inside memberlist's error.
func checkBindable(addr string) error {
	host, port, err := SplitHostPort(addr)
	if err != nil || port == 0 {
		return err
	}
	hp := net.JoinHostPort(host, strconv.Itoa(port))
	l, err := net.Listen("tcp", hp)
	if err != nil {
		return fmt.Errorf("gossip address %s (TCP) is not available: %w; %s", hp, err, BindHint(err, "--bind"))
	}
	l.Close()
	p, err := net.ListenPacket("udp", hp)
	if err != nil {
		return fmt.Errorf("gossip address %s (UDP) is not available: %w; %s", hp, err, BindHint(err, "--bind"))
	}
	p.Close()
	return nil
}

// BindHint says what to do about a failed bind, by its cause: another
// process is to blame only when the address is in use.
func BindHint(err error, flag string) string {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return "stop the process using it, or choose another port with " + flag
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "it is not an address of this host: give " + flag + " one of this host's addresses (ip addr), or 0.0.0.0"
	case errors.Is(err, syscall.EACCES):
		return "ports below 1024 need privileges: choose a port of 1024 or above with " + flag
	}
	return "check " + flag
}

// tagsLocked merges user, own and identity tags; identity wins.
func (c *Cluster) tagsLocked() map[string]string {
	t := make(map[string]string, len(c.userTags)+len(c.ownTags)+2)
	maps.Copy(t, c.userTags)
	maps.Copy(t, c.ownTags)
	t[TagVersion] = c.cfg.Version
	t[TagProtocol] = c.cfg.Protocol.String()
	if c.cfg.NodeKey != "" {
		t[TagKey] = c.cfg.NodeKey
	}
	return t
}

// Join contacts the given gossip addresses and returns how many answered.
// It fails when none did; when this node was refused for its protocol range,
// the error wraps ErrIncompatibleProtocol and names both ranges.
func (c *Cluster) Join(addrs []string) (int, error) {
	c.merge.clearRefusal()
	addrs = WithDefaultPort(addrs)
	n, err := c.serf.Join(addrs, true)
	if n > 0 {
		return n, nil
	}
	if r := c.merge.refusal(); r != nil {
		return 0, r
	}
	err = flattenError(err)
	hint := ""
	if c.cfg.Keyring != nil {
		hint = " (if the cluster is up, check that this node's gossip key matches the cluster's)"
	} else {
		hint = " (if the cluster is up and uses gossip encryption, give this node its key with --encrypt or --keyring-file)"
	}
	return 0, fmt.Errorf("join %s: %w%s", strings.Join(addrs, ", "), err, hint)
}

// DefaultPort is the gossip port of a join address that names none, and
// of the default --bind.
const DefaultPort = 7946

// WithDefaultPort gives every address that names no port DefaultPort.
// memberlist would use this node's own bind port instead, which with
// --bind HOST:0 or a non-default port is not where the cluster listens.
func WithDefaultPort(addrs []string) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a
		if _, _, err := net.SplitHostPort(a); err != nil {
			out[i] = net.JoinHostPort(strings.Trim(a, "[]"), strconv.Itoa(DefaultPort))
		}
	}
	return out
}

// ForceLeave marks a failed member as left at once, as serf force-leave
// does: the cluster stops trying to reach it, and a rollout or a lease
// majority stops counting it. Only a failed member can be made to leave: an
// alive one would refute it, and should leave by itself.
func (c *Cluster) ForceLeave(name string) error {
	for _, m := range c.serf.Members() {
		if m.Name != name {
			continue
		}
		switch m.Status {
		case serf.StatusAlive:
			return fmt.Errorf("member %s is alive: only a failed member can be forced to leave; make it leave with 'peerd leave' on that node", name)
		case serf.StatusLeaving, serf.StatusLeft:
			return nil
		}
		if err := c.serf.RemoveFailedNode(name); err != nil {
			return fmt.Errorf("force %s to leave: %w", name, err)
		}
		return nil
	}
	return fmt.Errorf("no member named %q: see 'peerd members' for the names", name)
}

// SetTags replaces this node's extra tags (TagVersion and TagProtocol stay).
func (c *Cluster) SetTags(tags map[string]string) error {
	for _, k := range []string{TagVersion, TagProtocol, TagLeaving, TagKey} {
		if _, ok := tags[k]; ok {
			return fmt.Errorf("tag %q is reserved for peerd", k)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.userTags
	c.userTags = maps.Clone(tags)
	if err := c.setSerfTagsLocked(); err != nil {
		c.userTags = old
		return fmt.Errorf("set tags: %w", err)
	}
	return nil
}

// SetTag sets one of the agent's own tags; an empty value removes it.
func (c *Cluster) SetTag(key, value string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ownTags == nil {
		c.ownTags = map[string]string{}
	}
	old, had := c.ownTags[key]
	if value == "" {
		delete(c.ownTags, key)
	} else {
		c.ownTags[key] = value
	}
	if err := c.setSerfTagsLocked(); err != nil {
		if had {
			c.ownTags[key] = old
		} else {
			delete(c.ownTags, key)
		}
		return fmt.Errorf("set tag %s: %w", key, err)
	}
	return nil
}

// setSerfTagsLocked gives Serf the tags; it returns once the update went
// out (or the profile's broadcast timeout passed).
func (c *Cluster) setSerfTagsLocked() error {
	c.localMu.Lock()
	defer c.localMu.Unlock()
	return c.serf.SetTags(c.tagsLocked())
}

// Broadcast sends a Serf user event to every member. Serf caps the payload
// (512 bytes by default): send an ID and fetch the rest over HTTP.
func (c *Cluster) Broadcast(name string, payload []byte) error {
	if err := c.serf.UserEvent(name, payload, false); err != nil {
		return fmt.Errorf("broadcast %s: %w", name, err)
	}
	return nil
}

// Query asks the given nodes (all members when nodes is empty) and collects
// their answers until every one answered, enough (if not nil; called once
// per answer, as it arrives, so that a caller can count in O(1)) says the
// answers so far suffice, the timeout passed, or ctx ended.
func (c *Cluster) Query(ctx context.Context, name string, payload []byte, nodes []string, timeout time.Duration, enough func(from string, answer []byte) bool) (map[string][]byte, error) {
	params := &serf.QueryParam{FilterNodes: nodes, Timeout: timeout}
	var asked map[string]bool // when not nil, the only answers to take
	if len(nodes) > 0 && querySize(c.cfg.NodeName, name, payload, nodes) > c.querySizeLimit {
		// Serf refuses a query over its size limit, its node filter
		// included: a hundred hosts named like ip-10-0-12-34.ec2.internal
		// do not fit in 1 KiB. Ask everyone, keep the answers asked for.
		params.FilterNodes = nil
		asked = make(map[string]bool, len(nodes))
		for _, n := range nodes {
			asked[n] = true
		}
	}
	c.localMu.RLock()
	resp, err := c.serf.Query(name, payload, params)
	c.localMu.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("query %s: %w", name, err)
	}
	defer resp.Close()
	out := map[string][]byte{}
	want := len(nodes)
	for {
		select {
		case r, ok := <-resp.ResponseCh():
			if !ok {
				return out, nil
			}
			if _, dup := out[r.From]; dup || (asked != nil && !asked[r.From]) {
				continue
			}
			out[r.From] = r.Payload
			if (enough != nil && enough(r.From, r.Payload)) || (want > 0 && len(out) >= want) {
				return out, nil
			}
		case <-ctx.Done():
			return out, ctx.Err()
		}
	}
}

// querySize bounds the size of Serf's encoding of a query from node with
// a filter naming nodes: msgpack's map of the message's fields (about 150
// bytes besides the strings), each string with its longest header.
func querySize(node, name string, payload []byte, nodes []string) int {
	n := 160 + len(node) + len(name) + len(payload)
	for _, m := range nodes {
		n += len(m) + 3
	}
	return n
}

// BoundAddr is the gossip address bound (TCP and UDP), with the port
// picked when the configured one was 0.
func (c *Cluster) BoundAddr() string { return c.boundAddr }

// LocalAddr is the gossip address other nodes reach this one at.
func (c *Cluster) LocalAddr() string {
	m := c.serf.LocalMember()
	return net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port)))
}

// LocalMember returns this node as the cluster sees it.
func (c *Cluster) LocalMember() Member { return toMember(c.serf.LocalMember()) }

// Members returns every member this node knows of, including failed and left ones.
func (c *Cluster) Members() []Member {
	sm := c.serf.Members()
	out := make([]Member, 0, len(sm))
	for _, m := range sm {
		out = append(out, toMember(m))
	}
	return out
}

// Others counts the members other than this node still in the cluster
// (not left), and how many of them are alive, without formatting each one
// as Members does: the peer API's health check asks for it on every
// probe, which at a hundred members made Members most of its cost.
func (c *Cluster) Others() (others, alive int) {
	self := c.serf.LocalMember().Name
	for _, m := range c.serf.Members() {
		st := status(m)
		if m.Name == self || st == serf.StatusLeft {
			continue
		}
		others++
		if st == serf.StatusAlive {
			alive++
		}
	}
	return others, alive
}

// mergeView is the member list as the merge delegate reads it: names,
// statuses and protocol ranges only. Serf calls the delegate for every
// alive message, under memberlist's lock, so this stays at one allocation
// (Members formats every address).
func (c *Cluster) mergeView() []Member { return mergeView(c.serf.Members()) }

// memberIndex mirrors Serf's member list by name, as mergeView has each
// member, from Serf's member events: the merge delegate's lookup of one
// member, which Serf.Members (a copy of the whole list, ~6 us and 8 KB at
// 100 members) made 6% of a 100-agent rollout's CPU. It lags Serf's own
// list by the event queue, as that list lags the cluster by gossip: a
// member found here is as it was moments ago, which is all the delegate
// asks of it (see mergeDelegate's fast path).
type memberIndex struct {
	mu sync.Mutex
	m  map[string]Member
}

func (x *memberIndex) update(e serf.MemberEvent) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.m == nil {
		x.m = map[string]Member{}
	}
	for _, m := range e.Members {
		if e.EventType() == serf.EventMemberReap {
			delete(x.m, m.Name)
			continue
		}
		x.m[m.Name] = mergeView([]serf.Member{m})[0]
	}
}

func (x *memberIndex) lookup(name string) (Member, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	m, ok := x.m[name]
	return m, ok
}

func mergeView(sm []serf.Member) []Member {
	out := make([]Member, len(sm))
	for i, m := range sm {
		r, _ := ParseProtocolRange(m.Tags[TagProtocol])
		out[i] = Member{Name: m.Name, Status: status(m).String(), Protocol: r}
	}
	return out
}

// status is m's status, except that a failed member that had announced
// its leave (see TagLeaving) has left.
func status(m serf.Member) serf.MemberStatus {
	if m.Status == serf.StatusFailed && m.Tags[TagLeaving] != "" {
		return serf.StatusLeft
	}
	return m.Status
}

func toMember(m serf.Member) Member {
	r, _ := ParseProtocolRange(m.Tags[TagProtocol])
	return Member{
		Name:     m.Name,
		Addr:     net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port))),
		Status:   status(m).String(),
		Version:  m.Tags[TagVersion],
		Protocol: r,
		Tags:     m.Tags,
	}
}

// inCluster reports whether a member still counts for the active protocol:
// a failed node may come back at the version it had, so only a node that
// left gracefully stops counting.
func inCluster(m Member) bool { return m.Status != serf.StatusLeft.String() }

// ProtocolRange returns the range every member still in the cluster speaks;
// its Max is the cluster's active protocol.
func (c *Cluster) ProtocolRange() ProtocolRange {
	r, _ := ClusterRange(ranges(c.Members(), ""))
	return r
}

// ranges lists the protocol ranges of members still in the cluster, except skip.
func ranges(members []Member, skip string) []ProtocolRange {
	var out []ProtocolRange
	for _, m := range members {
		if m.Name != skip && inCluster(m) {
			out = append(out, m.Protocol)
		}
	}
	return out
}

// Leave tells the cluster this node is going away and waits for the message
// to spread (bounded by the profile's broadcast timeout) or for ctx.
func (c *Cluster) Leave(ctx context.Context) error {
	done := make(chan error, 1)
	go func() {
		// No rejoin of a missing peer from now on, and none running while
		// this node leaves: its join would announce the node as back.
		c.leaving.Store(true)
		c.rejoinMu.Lock()
		defer c.rejoinMu.Unlock()
		// Say so first: SetTag returns once the update went out, ahead of
		// the leave intent (see TagLeaving). Leaving goes on without it.
		if err := c.SetTag(TagLeaving, "1"); err != nil {
			c.log.Warn("announce leave", "err", err)
		}
		done <- c.serf.Leave()
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("leave cluster: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("leave cluster: %w", ctx.Err())
	}
}

// Close stops gossip without saying goodbye (the others will mark this node
// failed unless Leave ran first) and waits for the event loop. It is idempotent.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed || c.serf == nil {
		c.closed = true
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	err := c.serf.Shutdown()
	c.cancel()
	c.wg.Wait()
	if err != nil {
		return fmt.Errorf("shut down gossip: %w", err)
	}
	return nil
}

// savePins writes newly pinned keys (the merge delegate pins them under
// memberlist's lock, where no file is written).
func (c *Cluster) savePins() {
	if c.merge.pins == nil {
		return
	}
	if err := c.merge.pins.save(); err != nil {
		c.log.Warn("save pinned node keys", "err", err)
	}
}

// ShutdownCh is closed when Serf stops, whatever the reason.
func (c *Cluster) ShutdownCh() <-chan struct{} { return c.serf.ShutdownCh() }

// peersSaveDelay bounds how long a membership change that adds nobody
// to the peers file waits to be written.
const peersSaveDelay = time.Second

func (c *Cluster) eventLoop(ctx context.Context) {
	var save <-chan time.Time // a peers file write is due
	refresh := time.NewTicker(c.peersRefresh())
	defer refresh.Stop()
	rejoin := time.NewTicker(c.rejoinEvery)
	defer rejoin.Stop()
	var rejoining chan struct{} // closed when the running rejoin ends; nil: none runs
	for {
		select {
		case <-ctx.Done():
			if save != nil {
				c.savePeers()
			}
			c.savePins()
			return
		case <-save:
			save = nil
			c.savePeers()
		case <-refresh.C:
			c.savePeers()
		case <-rejoin.C:
			if rejoining == nil && c.cfg.SnapshotPath != "" {
				rejoining = c.startRejoin(ctx)
			}
		case <-rejoining:
			rejoining = nil
		case e := <-c.events:
			switch e := e.(type) {
			case serf.MemberEvent:
				c.index.update(e)
				c.savePins()
				ms := make([]Member, len(e.Members))
				for i, m := range e.Members {
					ms[i] = toMember(m)
					if e.EventType() == serf.EventMemberReap {
						ms[i].Status = StatusReaped
					}
				}
				if c.handler != nil {
					c.handler.HandleMembers(ms)
				}
				if c.cfg.SnapshotPath != "" {
					urgent, later := false, false
					now := time.Now()
					for _, m := range ms {
						u, l := c.book.note(m, now)
						urgent, later = urgent || u, later || l
					}
					switch {
					case urgent:
						c.savePeers()
						save = nil
					case later && save == nil:
						save = time.After(peersSaveDelay)
					}
				}
				if e.EventType() == serf.EventMemberUpdate {
					continue // tag changes (rollout progress) are too frequent to log
				}
				for _, m := range e.Members {
					c.log.Info("member "+strings.TrimPrefix(e.EventType().String(), "member-"),
						"member", m.Name, "addr", m.Addr.String(), "version", m.Tags[TagVersion], "protocol", m.Tags[TagProtocol])
				}
			case serf.UserEvent:
				if c.handler != nil {
					c.handler.HandleEvent(e.Name, uint64(e.LTime), e.Payload)
				}
			case *serf.Query:
				if c.handler == nil {
					continue
				}
				c.wg.Add(1)
				go func(q *serf.Query) {
					defer c.wg.Done()
					out, err := c.handler.HandleQuery(q.Name, q.Payload)
					if err != nil {
						c.log.Debug("query not answered", "query", q.Name, "err", err)
						return
					}
					if err := q.Respond(out); err != nil {
						c.log.Debug("query answer not sent", "query", q.Name, "err", err)
					}
				}(e)
			}
		}
	}
}

// flattenError turns memberlist's multi-line "N errors occurred" into one line.
func flattenError(err error) error {
	if err == nil {
		return nil
	}
	var parts []string
	for _, line := range strings.Split(err.Error(), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "* "))
		if line == "" || strings.HasSuffix(line, "error occurred:") || strings.HasSuffix(line, "errors occurred:") {
			continue
		}
		parts = append(parts, line)
	}
	return errors.New(strings.Join(parts, "; "))
}
