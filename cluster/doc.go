// Package cluster is peerd's Serf membership: joining, gossip encryption,
// tags, the event loop, and version-compatible peering.
//
// Each node advertises the wire-protocol range its build speaks (tag "p").
// The cluster's active protocol is the minimum over its members of their
// maximum, so a new wire feature switches on only when every member speaks
// it. A merge delegate refuses a node whose range does not include the active
// protocol, which keeps an incompatible binary out without disturbing the
// members already in.
//
// This package must never know about upgrades: the rollout engine reaches the
// network through interfaces this package satisfies.
package cluster
