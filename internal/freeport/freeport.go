// Package freeport picks loopback ports for tests that start real agents.
package freeport

import (
	"fmt"
	"net"
	"testing"
)

// Get returns a port free on 127.0.0.1 for both TCP and UDP: memberlist
// binds both on the same number. It fails the test when none is found.
func Get(t testing.TB) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find a free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP on 127.0.0.1")
	return 0
}
