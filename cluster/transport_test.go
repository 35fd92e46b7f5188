package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestTransportHoldsPacketsUntilOpen: what reaches the sockets before
// open waits there (Serf's Create has not returned), and is handed over
// once the transport opens.
func TestTransportHoldsPacketsUntilOpen(t *testing.T) {
	ln, err := listenGossip("127.0.0.1", 0)
	require.NoError(t, err)
	tr := newTransport(ln, "127.0.0.1", newStdLogger(TestConfig("t").Logger))
	defer tr.Shutdown()
	to := ln.UDP.LocalAddr().String()
	send, err := net.Dial("udp", to)
	require.NoError(t, err)
	defer send.Close()
	_, err = send.Write([]byte("early"))
	require.NoError(t, err)
	conn, err := net.Dial("tcp", to) // waits in the backlog
	require.NoError(t, err)
	defer conn.Close()

	select {
	case p := <-tr.PacketCh():
		t.Fatalf("packet %q handed over before open", p.Buf)
	case c := <-tr.StreamCh():
		c.Close()
		t.Fatal("connection handed over before open")
	case <-time.After(200 * time.Millisecond): // a failure shows within it; a pass proves nothing faster
	}
	tr.open()
	select {
	case p := <-tr.PacketCh():
		assert.Equal(t, "early", string(p.Buf))
	case <-time.After(10 * time.Second):
		t.Fatal("the packet that waited was not handed over after open")
	}
	select {
	case c := <-tr.StreamCh():
		c.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the connection that waited was not handed over after open")
	}
}

// TestTransportShutdownBeforeOpen: a transport that never opened (Serf's
// Create failed) still shuts down, its readers gone.
func TestTransportShutdownBeforeOpen(t *testing.T) {
	ln, err := listenGossip("127.0.0.1", 0)
	require.NoError(t, err)
	tr := newTransport(ln, "127.0.0.1", newStdLogger(TestConfig("t").Logger))
	require.NoError(t, tr.Shutdown()) // goleak (TestMain) sees a reader left behind
}

// TestKeyQueriesQueuedAcrossAHandOff: the key queries a member sends while
// this node re-execs wait in the handed-over socket; the next image takes
// them as it starts, answers them, and does not crash. Before the
// transport waited for Serf's Create, the first one answered dereferenced
// Serf's memberlist before Serf held it (a panic seen in
// TestGossipKeyRotation).
func TestKeyQueriesQueuedAcrossAHandOff(t *testing.T) {
	key := make([]byte, 32)
	kr := func() *memberlist.Keyring {
		k, err := memberlist.NewKeyring(nil, key)
		require.NoError(t, err)
		return k
	}
	cfgA, cfgB := TestConfig("a"), TestConfig("b")
	cfgA.Keyring, cfgB.Keyring = kr(), kr()
	a := startTestNode(t, cfgA)
	b, err := New(cfgB)
	require.NoError(t, err)
	require.NoError(t, b.Start(context.Background()))
	_, err = b.Join([]string{a.LocalAddr()})
	require.NoError(t, err)
	waitFor(t, 10*time.Second, func() error {
		if len(aliveNames(a)) != 2 {
			return fmt.Errorf("a sees %v alive", aliveNames(a))
		}
		return nil
	})

	// b's image ends; its sockets stay open in duplicates, as exec keeps them.
	tcpF, err := b.transport.ln.TCP.File()
	require.NoError(t, err)
	udpF, err := b.transport.ln.UDP.File()
	require.NoError(t, err)
	require.NoError(t, b.Close())

	// a asks for the keys while b is down: a still sees b alive, and its
	// queries, gossiped to b, queue in b's socket.
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = a.serf.KeyManager().ListKeys()
		}()
	}
	waitFor(t, 10*time.Second, func() error {
		if n, err := unix.IoctlGetInt(int(udpF.Fd()), unix.SIOCINQ); err != nil || n == 0 {
			return fmt.Errorf("no packet waits in b's socket (%d bytes, %v)", n, err)
		}
		return nil
	})

	in, err := inherit(tcpF, udpF)
	require.NoError(t, err)
	cfgB.Inherited = &in
	b2 := startTestNode(t, cfgB)
	wg.Wait()
	resp, err := a.serf.KeyManager().ListKeys()
	require.NoError(t, err)
	assert.Equal(t, 2, resp.NumResp, "b's next image answers: %v", resp.Messages)
	assert.Equal(t, b.BoundAddr(), b2.BoundAddr())
}

// inherit turns duplicated socket files into Listeners, as the next image
// does with what it was handed.
func inherit(tcpF, udpF *os.File) (Listeners, error) {
	defer tcpF.Close()
	defer udpF.Close()
	l, err := net.FileListener(tcpF)
	if err != nil {
		return Listeners{}, err
	}
	pc, err := net.FilePacketConn(udpF)
	if err != nil {
		l.Close()
		return Listeners{}, err
	}
	return Listeners{TCP: l.(*net.TCPListener), UDP: pc.(*net.UDPConn)}, nil
}
