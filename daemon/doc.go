// Package daemon is the peerd agent process: its configuration, lifecycle
// (start, ready, reload, leave, stop), the local control API on a unix
// socket, the peer HTTP API, and systemd notification.
//
// The agent owns every goroutine it starts and waits for them in Close.
// It must not hold rollout logic: that lives in package upgrade, which the
// agent wires to the cluster.
package daemon
