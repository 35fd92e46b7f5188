package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
)

// Peer is one element of KV_PEERS and of the peers file, which are both a
// JSON array written by peerd:
//
//	[{"name":"node-b","addr":"10.0.0.2:8080","version":"1.0.0"}]
//
// addr is the peer's kv HTTP address. version is informative only: the wire
// protocol is asked of the peer itself (GET /version), because the peer may
// have been upgraded or rolled back since the list was written.
type Peer struct {
	Name    string `json:"name"`
	Addr    string `json:"addr"`
	Version string `json:"version,omitempty"`
}

// parsePeers reads a peers list. An empty document is an empty list.
// Unknown fields are ignored, so peerd can add some without breaking
// instances of older releases.
func parsePeers(data []byte) ([]Peer, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	var peers []Peer
	if err := json.Unmarshal(data, &peers); err != nil {
		return nil, fmt.Errorf(`want a JSON array like [{"name":"b","addr":"10.0.0.2:8080","version":"1.0.0"}]: %w`, err)
	}
	var errs []error
	for i, p := range peers {
		if _, _, err := net.SplitHostPort(p.Addr); err != nil {
			errs = append(errs, fmt.Errorf("peer %d (%q): addr %q: want host:port", i, p.Name, p.Addr))
		}
	}
	return peers, errors.Join(errs...)
}

// loadPeers reads KV_PEERS and the peers file, leaves this instance out
// (peerd lists every node, us included) and drops duplicate addresses.
func (c config) loadPeers() ([]Peer, error) {
	all, err := parsePeers([]byte(c.peersEnv))
	if err != nil {
		return nil, fmt.Errorf("KV_PEERS: %w", err)
	}
	if c.peersFile != "" {
		b, err := os.ReadFile(c.peersFile)
		if err != nil {
			return nil, fmt.Errorf("peers file: %w", err)
		}
		fromFile, err := parsePeers(b)
		if err != nil {
			return nil, fmt.Errorf("peers file %s: %w", c.peersFile, err)
		}
		all = append(all, fromFile...)
	}
	var peers []Peer
	for _, p := range all {
		self := p.Addr == c.listen || (p.Name != "" && p.Name == c.name)
		dup := slices.ContainsFunc(peers, func(q Peer) bool { return q.Addr == p.Addr })
		if !self && !dup {
			peers = append(peers, p)
		}
	}
	slices.SortFunc(peers, func(a, b Peer) int { return strings.Compare(a.Addr, b.Addr) })
	return peers, nil
}
