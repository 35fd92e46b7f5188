package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A test network is a set of network namespaces that one test made: one per
// node, each with a veth into a bridge that lives in a namespace of its own
// (the hub). Nothing of it is in the root namespace (no interface, address
// or route), and a node's namespace has no route but its own subnet, so an
// agent in it can reach nothing else. From the root namespace the nodes'
// addresses would route off the machine: every probe of them enters a
// node's namespace first (nsDialer), and every command the test runs for a
// node runs inside it (agent.netns).
//
// Faults are iptables rules inside the nodes' namespaces (a partition drops
// every packet between the sides), or signals to the agents' PIDs. Deleting
// the namespaces deletes every link and rule with them; the names are
// unique to the test process, and the namespaces of a test process that is
// gone (a run killed before its cleanup) are removed with their processes.

// netnsPrefix starts the name of every namespace a test network makes:
// peerd-faults-PID-N-ROLE, PID being the test process's.
const netnsPrefix = "peerd-faults-"

// testSubnet is the /24 of every test network's nodes; each network has a
// bridge of its own, so two of them never meet.
const testSubnet = "10.211.0"

var (
	netSeq    atomic.Int64
	sweepOnce sync.Once
)

type testNet struct {
	t     testing.TB
	name  string // peerd-faults-PID-N
	hub   string
	nodes []*netNode
}

// netNode is one node's namespace.
type netNode struct {
	ns   string
	ip   string
	dial *nsDialer
	// http asks the node's peer API from inside its namespace.
	http *http.Client
}

// newTestNet makes a network of n nodes, removed again when the test ends
// (after its agents: register it before starting them).
func newTestNet(t testing.TB, n int) *testNet {
	t.Helper()
	sweepOnce.Do(func() { sweepStaleNets(t) })
	tn := &testNet{t: t, name: fmt.Sprintf("%s%d-%d", netnsPrefix, os.Getpid(), netSeq.Add(1))}
	tn.hub = tn.name + "-hub"
	t.Cleanup(tn.destroy)
	ipCmd(t, "netns", "add", tn.hub)
	ipCmd(t, "-n", tn.hub, "link", "add", "br0", "type", "bridge")
	ipCmd(t, "-n", tn.hub, "link", "set", "br0", "up")
	for i := 1; i <= n; i++ {
		node := &netNode{ns: fmt.Sprintf("%s-n%d", tn.name, i), ip: fmt.Sprintf("%s.%d", testSubnet, i)}
		tn.nodes = append(tn.nodes, node)
		ipCmd(t, "netns", "add", node.ns)
		// Made inside the hub: the veth never has a name in the root namespace.
		veth := "v" + strconv.Itoa(i)
		ipCmd(t, "-n", tn.hub, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", node.ns)
		ipCmd(t, "-n", tn.hub, "link", "set", veth, "master", "br0", "up")
		ipCmd(t, "-n", node.ns, "addr", "add", node.ip+"/24", "dev", "eth0")
		ipCmd(t, "-n", node.ns, "link", "set", "eth0", "up")
		ipCmd(t, "-n", node.ns, "link", "set", "lo", "up")
		d, err := newNSDialer(node.ns)
		require.NoError(t, err)
		node.dial = d
		node.http = &http.Client{
			Timeout:   2 * time.Second,
			Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true},
		}
	}
	return tn
}

// split partitions the network in two: the nodes at the given indexes
// (from 0) on one side, the rest on the other. Each node drops every packet
// that arrives from the other side, as a cut link would: nothing is refused
// and no send fails (a rule on OUTPUT would fail the sender's sendto with
// EPERM at once), so connections hang until their timeouts.
func (tn *testNet) split(side []int) {
	tn.t.Helper()
	in := map[int]bool{}
	for _, i := range side {
		in[i] = true
	}
	for i, n := range tn.nodes {
		var rules []string
		for j, o := range tn.nodes {
			if in[i] != in[j] {
				rules = append(rules, "-A INPUT -s "+o.ip+" -j DROP")
			}
		}
		tn.setRules(n, rules)
	}
}

// heal removes every rule: the network is whole again.
func (tn *testNet) heal() {
	tn.t.Helper()
	for _, n := range tn.nodes {
		tn.setRules(n, nil)
	}
}

// setRules replaces the filter table of n's namespace, at once.
func (tn *testNet) setRules(n *netNode, rules []string) {
	tn.t.Helper()
	in := "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
	for _, r := range rules {
		in += r + "\n"
	}
	in += "COMMIT\n"
	cmd := exec.Command("ip", "netns", "exec", n.ns, "iptables-restore")
	cmd.Stdin = strings.NewReader(in)
	out, err := cmd.CombinedOutput()
	require.NoError(tn.t, err, "iptables-restore in %s: %s", n.ns, out)
}

// destroy removes the network. Its agents were stopped before (their
// cleanups ran first); a process still inside a namespace is reported and
// killed by its PID.
func (tn *testNet) destroy() {
	for _, n := range tn.nodes {
		if n.dial != nil {
			n.dial.close()
		}
	}
	for _, ns := range append(tn.namespaces(), tn.hub) {
		// Never this process: its dialers' threads went back to the root
		// namespace (or ended) when they were closed.
		if pids := netnsPIDs(ns); len(pids) > 0 {
			tn.t.Errorf("processes %v were still running in %s; killed", pids, ns)
			killPIDs(pids)
		}
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
			tn.t.Errorf("remove network namespace %s: %v: %s", ns, err, out)
		}
	}
	for _, ns := range listNetns() {
		if strings.HasPrefix(ns, tn.name+"-") {
			tn.t.Errorf("network namespace %s is still there after cleanup", ns)
		}
	}
}

func (tn *testNet) namespaces() []string {
	var out []string
	for _, n := range tn.nodes {
		out = append(out, n.ns)
	}
	return out
}

// sweepStaleNets removes the namespaces of test processes that are gone,
// and kills (by PID) any agent a killed run left inside them.
func sweepStaleNets(t testing.TB) {
	for _, ns := range listNetns() {
		rest, ok := strings.CutPrefix(ns, netnsPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() || !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			continue // not ours, or its test process still runs
		}
		pids := netnsPIDs(ns)
		killPIDs(pids)
		out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput()
		t.Logf("removed network namespace %s of a test run that is gone (processes killed: %v; %v %s)", ns, pids, err, out)
	}
}

func listNetns() []string {
	entries, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func netnsPIDs(ns string) []int {
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

func killPIDs(pids []int) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func ipCmd(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	require.NoError(t, err, "ip %s: %s", strings.Join(args, " "), out)
}

// nsDialer makes TCP connections from inside one network namespace: a
// goroutine whose OS thread entered the namespace creates the sockets (a
// socket belongs to the namespace of the thread that made it, whatever
// thread reads it later).
type nsDialer struct {
	ns   string
	reqs chan dialReq
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

type dialReq struct {
	ctx   context.Context
	addr  string
	reply chan dialResult
}

type dialResult struct {
	conn net.Conn
	err  error
}

func newNSDialer(ns string) (*nsDialer, error) {
	d := &nsDialer{ns: ns, reqs: make(chan dialReq), stop: make(chan struct{}), done: make(chan struct{})}
	ready := make(chan error, 1)
	go d.serve(ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	return d, nil
}

func (d *nsDialer) serve(ready chan<- error) {
	defer close(d.done)
	// The thread is this goroutine's alone while it is in the namespace.
	// It is unlocked again only once it is back in the root namespace;
	// if it cannot go back, it stays locked, and the runtime ends it with
	// the goroutine rather than hand it to another one.
	runtime.LockOSThread()
	root, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		ready <- fmt.Errorf("open the root network namespace: %w", err)
		return
	}
	defer root.Close()
	if err := enterNetns(d.ns); err != nil {
		ready <- err
		return
	}
	defer func() {
		if unix.Setns(int(root.Fd()), unix.CLONE_NEWNET) == nil && inNetns(root) == nil {
			runtime.UnlockOSThread()
		}
	}()
	ready <- nil
	for {
		select {
		case <-d.stop:
			return
		case r := <-d.reqs:
			var dialer net.Dialer
			c, err := dialer.DialContext(r.ctx, "tcp", r.addr)
			r.reply <- dialResult{c, err}
		}
	}
}

// enterNetns moves the calling thread into namespace ns, and checks that it
// is there.
func enterNetns(ns string) error {
	f, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", ns, err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter network namespace %s: %w", ns, err)
	}
	if err := inNetns(f); err != nil {
		return fmt.Errorf("enter network namespace %s: %w", ns, err)
	}
	return nil
}

// inNetns checks that the calling thread is in the namespace f refers to.
func inNetns(f *os.File) error {
	var want, got unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &want); err != nil {
		return err
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &got); err != nil {
		return err
	}
	if want.Ino != got.Ino || want.Dev != got.Dev {
		return errors.New("the thread is in another network namespace")
	}
	return nil
}

// DialContext connects to addr from inside the namespace (an http.Transport's dialer).
func (d *nsDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if network != "tcp" && network != "tcp4" {
		return nil, fmt.Errorf("dial %s %s: only tcp from inside %s", network, addr, d.ns)
	}
	r := dialReq{ctx: ctx, addr: addr, reply: make(chan dialResult, 1)}
	select {
	case d.reqs <- r:
	case <-d.done:
		return nil, fmt.Errorf("dial %s: the dialer of %s is closed", addr, d.ns)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	res := <-r.reply // the dial itself ends with ctx
	return res.conn, res.err
}

func (d *nsDialer) close() {
	d.once.Do(func() { close(d.stop) })
	<-d.done
}
