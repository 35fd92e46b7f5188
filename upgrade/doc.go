// Package upgrade will hold the rollout engine: plan, waves, leases, fetch,
// verify, apply, health gate and rollback (see DESIGN.md, "A rollout").
// It reaches the network only through interfaces that packages cluster and
// daemon satisfy, so that it can run many nodes in one test process.
package upgrade
