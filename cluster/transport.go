package cluster

import (
	"errors"
	"fmt"
	"log"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	sockaddr "github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/memberlist"
)

// Listeners are the gossip sockets, TCP and UDP on one port, that this
// node's memberlist serves on. memberlist's own NetTransport binds its
// sockets itself and closes them at shutdown; this transport is that one
// over sockets it is given (a fresh bind, or the ones a re-exec'd agent
// handed to its next image, see package internal/handoff), so that the
// port never stops listening across a self-upgrade: the peers' probes and
// pushes that arrive while the next image starts wait in the socket
// buffers, and are answered late instead of refused.
type Listeners struct {
	TCP *net.TCPListener
	UDP *net.UDPConn
}

// listenGossip binds TCP and UDP on host:port; with port 0 the TCP
// listener picks it and UDP takes the same number, retrying when it is
// taken (as memberlist does).
func listenGossip(host string, port int) (Listeners, error) {
	ip := net.ParseIP(host)
	tries := 1
	if port == 0 {
		tries = 10
	}
	var err error
	for range tries {
		var tcp *net.TCPListener
		tcp, err = net.ListenTCP("tcp", &net.TCPAddr{IP: ip, Port: port})
		if err != nil {
			return Listeners{}, fmt.Errorf("gossip address %s (TCP): %w", net.JoinHostPort(host, strconv.Itoa(port)), err)
		}
		p := tcp.Addr().(*net.TCPAddr).Port
		var udp *net.UDPConn
		udp, err = net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: p})
		if err == nil {
			setUDPRecvBuf(udp)
			return Listeners{TCP: tcp, UDP: udp}, nil
		}
		tcp.Close()
		err = fmt.Errorf("gossip address %s (UDP): %w", net.JoinHostPort(host, strconv.Itoa(p)), err)
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	return Listeners{}, err
}

// udpRecvBufSize is the receive buffer memberlist asks for (2 MiB): room
// for the gossip of a large cluster, and for what arrives while the agent
// re-execs.
const udpRecvBufSize = 2 << 20

func setUDPRecvBuf(c *net.UDPConn) {
	for size := udpRecvBufSize; size > 0; size /= 2 {
		if c.SetReadBuffer(size) == nil {
			return
		}
	}
}

// transport is memberlist.NetTransport (net_transport.go, v0.7.0) over
// sockets it is given, with a single bind address.
type transport struct {
	ln       Listeners
	bindHost string // as configured: "0.0.0.0" advertises a private IP
	logger   *log.Logger
	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	wg       sync.WaitGroup
	once     sync.Once
	// opened is closed by open, closing by Shutdown: the readers wait for
	// either before they take anything from the sockets, and a read that
	// fails once closing is closed ends them.
	opened, closing chan struct{}
	openOnce        sync.Once
}

var _ memberlist.NodeAwareTransport = (*transport)(nil)

func newTransport(ln Listeners, bindHost string, logger *log.Logger) *transport {
	t := &transport{
		ln: ln, bindHost: bindHost, logger: logger,
		packetCh: make(chan *memberlist.Packet),
		streamCh: make(chan net.Conn),
		opened:   make(chan struct{}),
		closing:  make(chan struct{}),
	}
	t.wg.Add(2)
	go t.tcpListen()
	go t.udpListen()
	return t
}

// open starts handing memberlist what the sockets receive. Serf's Create
// must have returned: memberlist handles packets from its own Create on,
// before Serf holds it, and a query answered in between dereferences a
// nil memberlist. Packets queue in the sockets for that long, and across
// a re-exec they do: a key query that had waited in a handed-over socket
// crashed the next image at start (seen in TestGossipKeyRotation).
func (t *transport) open() { t.openOnce.Do(func() { close(t.opened) }) }

// shuttingDown reports whether Shutdown has begun.
func (t *transport) shuttingDown() bool {
	select {
	case <-t.closing:
		return true
	default:
		return false
	}
}

// waitOpen reports whether the transport was opened before it shut down.
func (t *transport) waitOpen() bool {
	select {
	case <-t.opened:
		return true
	case <-t.closing:
		return false
	}
}

func (t *transport) port() int { return t.ln.TCP.Addr().(*net.TCPAddr).Port }

func (t *transport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if ip != "" {
		addr := net.ParseIP(ip)
		if addr == nil {
			return nil, 0, fmt.Errorf("failed to parse advertise address %q", ip)
		}
		if ip4 := addr.To4(); ip4 != nil {
			addr = ip4
		}
		return addr, port, nil
	}
	if t.bindHost == "0.0.0.0" {
		priv, err := sockaddr.GetPrivateIP()
		if err != nil {
			return nil, 0, fmt.Errorf("failed to get interface addresses: %v", err)
		}
		if priv == "" {
			return nil, 0, errors.New("no private IP address found, and explicit IP not provided")
		}
		addr := net.ParseIP(priv)
		if addr == nil {
			return nil, 0, fmt.Errorf("failed to parse advertise address: %q", priv)
		}
		return addr, t.port(), nil
	}
	return t.ln.TCP.Addr().(*net.TCPAddr).IP, t.port(), nil
}

func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	udpAddr, err := net.ResolveUDPAddr("udp", a.Addr)
	if err != nil {
		return time.Time{}, err
	}
	_, err = t.ln.UDP.WriteTo(b, udpAddr)
	return time.Now(), err
}

func (t *transport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	return d.Dial("tcp", a.Addr)
}

func (t *transport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown closes the sockets and waits for their readers. Descriptors
// handed to the next image (duplicates) keep the sockets open.
func (t *transport) Shutdown() error {
	t.once.Do(func() {
		close(t.closing)
		t.ln.TCP.Close()
		t.ln.UDP.Close()
		t.wg.Wait()
	})
	return nil
}

func (t *transport) tcpListen() {
	defer t.wg.Done()
	if !t.waitOpen() {
		return
	}
	const baseDelay, maxDelay = 5 * time.Millisecond, time.Second
	var delay time.Duration
	for {
		conn, err := t.ln.TCP.AcceptTCP()
		if err != nil {
			if t.shuttingDown() {
				return
			}
			delay = min(max(2*delay, baseDelay), maxDelay)
			t.logger.Printf("[ERR] memberlist: Error accepting TCP connection: %v", err)
			time.Sleep(delay)
			continue
		}
		delay = 0
		t.streamCh <- conn
	}
}

func (t *transport) udpListen() {
	defer t.wg.Done()
	if !t.waitOpen() {
		return
	}
	// One 64 KiB buffer to read into (a datagram's largest size), and an
	// exact-size copy of each datagram for memberlist, which keeps it
	// while the message waits in its handler queue. memberlist's own
	// transport allocates 64 KiB per datagram: most carry 1-16 KiB, and in
	// a 100-agent rollout that allocation and its zeroing were 7 % of the
	// agents' CPU, and the garbage drove most of the collector's 14 %.
	buf := make([]byte, 65536)
	for {
		n, addr, err := t.ln.UDP.ReadFrom(buf)
		ts := time.Now()
		if err != nil {
			if t.shuttingDown() {
				return
			}
			t.logger.Printf("[ERR] memberlist: Error reading UDP packet: %v", err)
			continue
		}
		if n < 1 {
			t.logger.Printf("[ERR] memberlist: UDP packet too short (%d bytes) %s", n, memberlist.LogAddress(addr))
			continue
		}
		t.packetCh <- &memberlist.Packet{Buf: append([]byte(nil), buf[:n]...), From: addr, Timestamp: ts}
	}
}
