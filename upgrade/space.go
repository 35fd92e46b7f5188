package upgrade

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/peerd/peerd/upgrade/plan"
)

// ErrNoSpace marks a prepare that found too little free space for the
// plan's copies. The node fails the plan before it takes the lease; once
// the operator freed space, 'peerd upgrade resume' retries it.
var ErrNoSpace = errors.New("not enough free space")

// spaceReserve is left free on each file system besides the copies, for
// the state, grants and plan files the rollout writes as it goes.
const spaceReserve = 4 << 20

// FreeSpace reports the bytes free to this process on the file system
// holding path, and that file system's device (to add up the needs of
// directories that share one).
type FreeSpace func(path string) (free uint64, dev uint64, err error)

// statfsFree is FreeSpace on the real file systems.
func statfsFree(path string) (uint64, uint64, error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(path, &fs); err != nil {
		return 0, 0, err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, 0, err
	}
	return fs.Bavail * uint64(fs.Bsize), st.Dev, nil
}

// checkSpace checks, before prepare fetches or writes anything, that the
// copies a node makes of the plan's artifact fit: the artifact (and
// patch) in the store, the staged executable, and the version store's
// copy. Without it, a full disk was found only at the version store,
// after the node had taken the lease and gone offline.
func (e *Engine) checkSpace(p *plan.Compiled, patching bool) error {
	type need struct {
		dir   string
		bytes uint64
		what  []string
	}
	size := uint64(max(p.Artifact.Size, 0))
	wants := []need{}
	add := func(dir string, n uint64, what string) {
		if n > 0 {
			wants = append(wants, need{dir, n, []string{what}})
		}
	}
	if !e.store.Has(p.Artifact.SHA256) {
		add(e.store.Path(""), size, "artifact")
		if patching && !e.store.Has(p.Patch.SHA256) {
			add(e.store.Path(""), uint64(max(p.Patch.Size, 0)), "patch")
		}
	}
	if _, err := os.Stat(e.stagedPath(p)); err != nil {
		add(filepath.Dir(e.stagedPath(p)), size, "staged copy")
	}
	if _, ok := e.target.Versions().Stored(p.Version); !ok {
		add(e.target.Versions().Dir(), size, "version store copy")
	}
	free := e.cfg.FreeSpace
	if free == nil {
		free = statfsFree
	}
	byDev := map[uint64]*need{}
	avail := map[uint64]uint64{}
	for _, w := range wants {
		dir := existingParent(w.dir)
		n, dev, err := free(dir)
		if err != nil {
			return fmt.Errorf("free space of %s: %w", dir, err)
		}
		if d, ok := byDev[dev]; ok {
			d.bytes += w.bytes
			d.what = append(d.what, w.what...)
			continue
		}
		byDev[dev] = &need{dir: dir, bytes: w.bytes, what: w.what}
		avail[dev] = n
	}
	var short []string
	for dev, d := range byDev {
		if d.bytes+spaceReserve > avail[dev] {
			short = append(short, fmt.Sprintf("%s has %s free, needs %s (%s, and %s to spare)",
				d.dir, mib(avail[dev]), mib(d.bytes+spaceReserve), strings.Join(d.what, ", "), mib(spaceReserve)))
		}
	}
	if len(short) == 0 {
		return nil
	}
	sort.Strings(short)
	return fmt.Errorf("%w for plan %s: %s; free some space, then retry with 'peerd upgrade resume'", ErrNoSpace, p.Short, strings.Join(short, "; "))
}

// existingParent is dir, or its nearest parent that exists (the version
// store's dir appears with its first install).
func existingParent(dir string) string {
	for {
		if _, err := os.Stat(dir); err == nil || filepath.Dir(dir) == dir {
			return dir
		}
		dir = filepath.Dir(dir)
	}
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
