package main

import (
	"errors"
	"fmt"
)

// The wire protocols this source implements. Every build speaks wireMin up to
// its own maximum (see buildProtocol), so any two builds share wire 1.
//
//	1: {"proto":1,"key","value","ts","origin"}
//	2: wire 1 plus "meta":{"content_type"}, the Content-Type of the PUT
const (
	wireMin = 1
	wireMax = 2
)

// message is one replicated write on the wire: the body of POST /sync/push
// and an element of the GET /sync/dump array.
type message struct {
	Proto int `json:"proto"`
	Entry
}

// encode renders e for a peer that speaks proto; fields that proto does not
// have are left out, never sent for the peer to puzzle over.
func encode(e Entry, proto int) message {
	m := message{Proto: proto, Entry: e}
	if proto < 2 {
		m.Meta = nil
	}
	return m
}

// decode checks a message from a peer against the highest protocol this
// build speaks. A v1 build refuses v2 messages: a correct peer never sends
// them, so one arriving means a stale negotiation the sender must redo.
func decode(m message, maxProto int) (Entry, error) {
	if m.Proto < wireMin || m.Proto > maxProto {
		return Entry{}, fmt.Errorf("unsupported wire protocol %d (this build speaks %d-%d)", m.Proto, wireMin, maxProto)
	}
	if m.Key == "" || m.Origin == "" || m.TS <= 0 {
		return Entry{}, errors.New("message needs key, origin and a positive ts")
	}
	e := m.Entry
	if m.Proto < 2 || (e.Meta != nil && *e.Meta == (Meta{})) {
		e.Meta = nil // keep "no meta" one value, so equal writes compare equal
	}
	return e, nil
}

// versionInfo is the body of GET /version.
type versionInfo struct {
	Version     string `json:"version"`
	Protocol    int    `json:"protocol"`     // highest wire protocol spoken
	ProtocolMin int    `json:"protocol_min"` // lowest
}

// negotiate picks the highest wire protocol both sides speak.
func negotiate(ourMax int, peer versionInfo) (int, error) {
	lo := max(wireMin, peer.ProtocolMin)
	hi := min(ourMax, peer.Protocol)
	if lo > hi {
		return 0, fmt.Errorf("no common wire protocol: we speak %d-%d, peer %s speaks %d-%d",
			wireMin, ourMax, peer.Version, peer.ProtocolMin, peer.Protocol)
	}
	return hi, nil
}
