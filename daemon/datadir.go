package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// dataDirMode is a new data dir's mode: it holds the node's identity key,
// the gossip keyring, the snapshot and the rollout's state, for the
// agent's user only. An existing one may also let its group in to read
// and traverse (dataDirMaxMode: the packages make it 0750 so that group
// peerd reaches the control socket; the secrets in it are 0600 anyway),
// never write, and never others.
const (
	dataDirMode    fs.FileMode = 0o700
	dataDirMaxMode fs.FileMode = 0o750
)

// LockFileName is the file in the data dir an agent holds an flock on
// while it runs; it contains that agent's PID.
const LockFileName = "agent.lock"

// ErrDataDirInUse is returned by Start when another agent runs on the
// same data dir.
var ErrDataDirInUse = errors.New("data dir in use")

// prepareDataDir creates the data dir, or takes from an existing one what
// dataDirMaxMode does not allow (saying so when it does), and checks that the
// agent can write there. It reports the mode it found when it changed it.
func prepareDataDir(dir string) (was fs.FileMode, err error) {
	if err := os.MkdirAll(dir, dataDirMode); err != nil {
		return 0, fmt.Errorf("data dir %s cannot be created: %w; choose another --data-dir", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, fmt.Errorf("data dir %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return 0, fmt.Errorf("data dir %s is not a directory; choose another --data-dir", dir)
	}
	if perm := fi.Mode().Perm(); perm&^dataDirMaxMode != 0 || perm&dataDirMode != dataDirMode {
		want := perm&dataDirMaxMode | dataDirMode
		if err := os.Chmod(dir, want); err != nil {
			return 0, fmt.Errorf("data dir %s has mode %04o and cannot be restricted to %04o: %w; fix its owner or choose another --data-dir",
				dir, perm, want, err)
		}
		was = perm
	}
	f, err := os.CreateTemp(dir, ".write-test-*")
	if err != nil {
		return 0, fmt.Errorf("data dir %s is not writable: %w; fix its permissions or choose another --data-dir", dir, err)
	}
	f.Close()
	return was, os.Remove(f.Name())
}

// lockDataDir takes the data dir's lock (an flock, which the kernel drops
// when the process dies however it dies, so a crashed agent leaves no stale
// lock) and records this process's PID in it. Two agents on one data dir
// would both write its state, its grants and its plan lock, and vote twice
// with one identity; the second one refuses to start instead.
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, LockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open the data dir's lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder := "another agent"
			if b, rerr := os.ReadFile(path); rerr == nil {
				if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
					holder = fmt.Sprintf("another agent (PID %d)", pid)
				}
			}
			return nil, fmt.Errorf("%w: %s is running on data dir %s; stop it, or give this one another --data-dir", ErrDataDirInUse, holder, dir)
		}
		return nil, fmt.Errorf("lock the data dir %s: %w", dir, err)
	}
	// The PID is only for that message: the flock is the lock.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}
