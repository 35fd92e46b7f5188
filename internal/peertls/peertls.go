// Package peertls puts the peer HTTP API behind mutual TLS with node-key
// certificates: each side shows a self-signed certificate for its identity
// key, and the other accepts it only if that key is the one it pinned for
// the member (from the encrypted gossip tags). No CA, no expiry, nothing to
// distribute: the pins are the trust.
//
// One port serves both TLS and plain HTTP, told apart by the first byte a
// client sends (a TLS handshake opens with 0x16; an HTTP request with a
// letter), so that load balancers and probes keep reading /v1/health over
// plain HTTP while plans, artifacts and rollout state are served only over
// TLS to members.
package peertls

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/peerd/peerd/internal/identity"
)

// sniffTimeout bounds how long a new connection may stay silent before its
// first byte tells TLS from plain HTTP. It is spent in the connection's own
// goroutine: a silent client holds no one else up.
const sniffTimeout = 10 * time.Second

// Demux splits one listener into a TLS one and a plain one. Its goroutine
// (started by Split, stopped by Close) owns the accept loop.
type Demux struct {
	ln    net.Listener
	tls   *chanListener
	plain *chanListener
	done  chan struct{}
	wg    sync.WaitGroup
	// routes counts the connections accepted and not yet handed to a
	// server (or closed).
	routes sync.WaitGroup
}

// Split starts splitting ln. Serve TLS() with a TLS server config (through
// tls.NewListener, so handlers see r.TLS) and Plain() as plain HTTP.
func Split(ln net.Listener) *Demux {
	d := &Demux{ln: ln, done: make(chan struct{})}
	d.tls = &chanListener{addr: ln.Addr(), conns: make(chan net.Conn), done: d.done, close: d.Close}
	d.plain = &chanListener{addr: ln.Addr(), conns: make(chan net.Conn), done: d.done, close: d.Close}
	d.wg.Add(1)
	go d.loop()
	return d
}

// TLS is the listener of connections that opened with a TLS handshake.
func (d *Demux) TLS() net.Listener { return d.tls }

// Plain is the listener of every other connection.
func (d *Demux) Plain() net.Listener { return d.plain }

// Close stops accepting and closes the listener; served connections stay.
func (d *Demux) Close() error {
	select {
	case <-d.done:
		return nil
	default:
	}
	close(d.done)
	err := d.ln.Close()
	d.wg.Wait()
	return err
}

func (d *Demux) loop() {
	defer d.wg.Done()
	for {
		c, err := d.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		d.routes.Add(1)
		go d.route(c)
	}
}

// Drain stops accepting and waits, up to timeout, until every connection
// already accepted is handed to its server, which must still be serving:
// then a server's Shutdown serves them instead of Close dropping them. The
// listener stays open for whoever holds a duplicate of it (an agent
// handing it to its next image): connections keep queueing in its
// backlog. Close is still needed after it.
func (d *Demux) Drain(timeout time.Duration) {
	d.ln.Close()
	d.wg.Wait()
	done := make(chan struct{})
	go func() {
		d.routes.Wait()
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C: // a silent client; Close drops it
	}
}

// route reads the first byte in the connection's own goroutine and hands
// the connection to the listener it belongs to.
func (d *Demux) route(c net.Conn) {
	defer d.routes.Done()
	_ = c.SetReadDeadline(time.Now().Add(sniffTimeout))
	br := bufio.NewReaderSize(c, 16)
	first, err := br.Peek(1)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return
	}
	to := d.plain
	if first[0] == 0x16 { // TLS record type: handshake
		to = d.tls
	}
	select {
	case to.conns <- &peekedConn{Conn: c, r: br}:
	case <-d.done:
		c.Close()
	}
}

// peekedConn is a connection whose first bytes sit in r.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	close func() error
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { return l.close() }
func (l *chanListener) Addr() net.Addr { return l.addr }

// ServerConfig is the peer API's TLS config: it shows cert and asks every
// client for its own (checked by Member, per route, not here: probes may
// call /v1/health over TLS without one).
func ServerConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tls.VersionTLS13,
	}
}

// PinLookup finds the member a key was pinned for ("" for none).
type PinLookup func(identity.PublicKey) string

// Member guards h: only a client whose TLS certificate carries a key pinned
// for a member may call it. Anyone else gets 403 saying what is needed.
func Member(memberOf PinLookup, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			http.Error(w, "this route is served only to cluster members, over TLS with their node-key certificate", http.StatusForbidden)
			return
		}
		key, err := identity.KeyOfCertificate(r.TLS.PeerCertificates)
		if err != nil || memberOf(key) == "" {
			http.Error(w, "this route is served only to cluster members: the client's certificate is no member's pinned node key", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Client calls members' peer APIs by name: a URL's host is the member's
// name (https://NAME/path), the dialer resolves it with addr, and the
// server must show the key pinned for that name. It shows cert as its own.
func Client(cert tls.Certificate, addr func(name string) (string, error), pinned func(name string) identity.PublicKey, timeout time.Duration) *http.Client {
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, hostport string) (net.Conn, error) {
			name, _, err := net.SplitHostPort(hostport)
			if err != nil {
				return nil, err
			}
			a, err := addr(name)
			if err != nil {
				return nil, err
			}
			return dialer.DialContext(ctx, network, a)
		},
		TLSClientConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS13,
			// The chain is not what makes the server trusted; the
			// pinned key is, checked below for the name dialled.
			InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error {
				want := pinned(cs.ServerName)
				if want == nil {
					return fmt.Errorf("no identity key pinned for member %s", cs.ServerName)
				}
				got, err := identity.KeyOfCertificate(cs.PeerCertificates)
				if err != nil {
					return fmt.Errorf("member %s: %w", cs.ServerName, err)
				}
				if !got.Equal(want) {
					return fmt.Errorf("member %s answered with another identity key than the one pinned for it", cs.ServerName)
				}
				return nil
			},
		},
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}
