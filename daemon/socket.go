package daemon

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// DefaultSocketGroup is the group the packages create: its members may use
// the control socket without root.
const DefaultSocketGroup = "peerd"

// umaskMu serialises this package's umask changes (the umask is the
// process's, and agents in one test process start concurrently).
var umaskMu sync.Mutex

// listenSocket serves the control API on a unix socket only its owner, and
// the members of the socket group when it exists, can use. The socket is
// created under a umask that leaves group and others nothing, so that it is
// never reachable by them between listen and chmod. A socket left behind by
// a dead agent is replaced; one that answers belongs to a live agent and is
// an error.
func (a *Agent) listenSocket(path string) (net.Listener, error) {
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another agent is serving socket %s; stop it or choose another --socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	umaskMu.Lock()
	// 0o077, not 0o177: a file another goroutine creates in this instant
	// (a staged executable) keeps its owner's execute bit.
	old := syscall.Umask(0o077)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	umaskMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("listen on socket %s: %w", path, err)
	}
	mode, err := a.shareSocket(path)
	if err == nil {
		err = os.Chmod(path, mode)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict socket %s: %w", path, err)
	}
	return ln, nil
}

// shareSocket gives the socket to the socket group, if it exists, and
// returns the mode the socket gets: 0660 for a group that may use it, else
// 0600. A group the agent cannot give files to (its user is not a member)
// is logged and left out.
func (a *Agent) shareSocket(path string) (os.FileMode, error) {
	name := a.opts.SocketGroup
	if name == "" {
		name = DefaultSocketGroup
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		var unknown user.UnknownGroupError
		if !errors.As(err, &unknown) {
			a.log.Warn("control socket: cannot look up its group; only this user can use it", "group", name, "err", err)
		}
		return 0o600, nil
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0o600, nil
	}
	if err := os.Lchown(path, -1, gid); err != nil {
		a.log.Warn("control socket: cannot give it to its group; only this user can use it (run the agent as a member of the group)",
			"group", name, "err", err)
		return 0o600, nil
	}
	return 0o660, nil
}
