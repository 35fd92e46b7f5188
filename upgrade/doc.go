// Package upgrade is the rollout engine: plan adoption, waves, leases,
// fetch, verify, apply, health gate and rollback (DESIGN.md, "A rollout").
//
// machine.go is the per-node state machine; one goroutine owns it, and
// everything that blocks runs as an op under a context that pause, abort
// and Close cancel. It reaches the world only through the interfaces in
// seams.go (Network, Peers, Target, LeaseRequester) and internal/clock, which
// package cluster and daemon satisfy for real and package upgradetest
// satisfies in memory, so that a thousand engines run in one test.
//
// What it must never do: take a node offline without a majority of the
// plan's snapshot granting its wave; act on a state it has not persisted;
// accept an artifact whose digest, signature or preflight does not match
// the plan.
package upgrade
