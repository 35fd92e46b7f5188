package versions_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/peerd/peerd/upgrade/versions"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fixture is a launcher at base and binaries to install, each holding its
// version as bytes so that tests can tell them apart.
type fixture struct {
	t     *testing.T
	store *versions.Store
	base  string
	src   string
}

func newFixture(t *testing.T) *fixture {
	dir := t.TempDir()
	base := filepath.Join(dir, "usr-bin-peerd")
	require.NoError(t, os.WriteFile(base, []byte("launcher"), 0o755))
	src := filepath.Join(dir, "staged")
	require.NoError(t, os.Mkdir(src, 0o755))
	return &fixture{t: t, store: versions.New(filepath.Join(dir, "versions"), "peerd", base), base: base, src: src}
}

func (f *fixture) staged(version string) string {
	p := filepath.Join(f.src, version)
	require.NoError(f.t, os.WriteFile(p, []byte("peerd "+version), 0o755))
	return p
}

func (f *fixture) install(version, running string) {
	require.NoError(f.t, f.store.Install(f.staged(version), version, running))
}

func (f *fixture) stored(version string) string {
	return filepath.Join(f.store.Dir(), version, "peerd")
}

func (f *fixture) selected(self string) versions.Binary {
	b, _, err := f.store.Select(self)
	require.NoError(f.t, err)
	return b
}

func TestEmptyStoreRunsLauncher(t *testing.T) {
	f := newFixture(t)
	b := f.selected("1.0.0")
	assert.True(t, b.Base)
	assert.Equal(t, f.base, b.Path)
	prev, err := f.store.Previous()
	require.NoError(t, err)
	assert.True(t, prev.Base, "with nothing stored, a rollback goes to the launcher")
	assert.NoError(t, f.store.Rollback("2.0.0"), "rolling back what was never installed changes nothing")
}

func TestInstallSelectAndPackageUpgradeWins(t *testing.T) {
	f := newFixture(t)
	f.install("2.0.0", f.base)

	b := f.selected("1.0.0")
	assert.False(t, b.Base)
	assert.Equal(t, "2.0.0", b.Version)
	data, err := os.ReadFile(b.Path)
	require.NoError(t, err)
	assert.Equal(t, "peerd 2.0.0", string(data))
	launcher, err := os.ReadFile(f.base)
	require.NoError(t, err)
	assert.Equal(t, "launcher", string(launcher), "the package's file is never written")

	// A package upgrade to a newer version wins over the store...
	b, why, err := f.store.Select("3.0.0")
	require.NoError(t, err)
	assert.True(t, b.Base)
	assert.Contains(t, why, "not older")
	// ... and so does one at the same version; a pre-release of it does not.
	assert.True(t, f.selected("v2.0.0").Base)
	assert.False(t, f.selected("2.0.0-rc.1").Base)
}

func TestPreviousFollowsWhatWasRunning(t *testing.T) {
	f := newFixture(t)
	f.install("2.0.0", f.base)
	prev, err := f.store.Previous()
	require.NoError(t, err)
	assert.True(t, prev.Base, "2.0.0 replaced the launcher")

	// Running the stored 2.0.0, install 3.0.0: a rollback returns to 2.0.0.
	f.install("3.0.0", f.stored("2.0.0"))
	prev, err = f.store.Previous()
	require.NoError(t, err)
	assert.Equal(t, "2.0.0", prev.Version)
	assert.Equal(t, f.stored("2.0.0"), prev.Path)

	// Running a newer package launcher (the stored 3.0.0 is stale), install
	// 5.0.0: a rollback returns to the launcher, not to the stale 3.0.0.
	f.install("5.0.0", f.base)
	prev, err = f.store.Previous()
	require.NoError(t, err)
	assert.True(t, prev.Base)
	// Versions nothing points at any more are pruned.
	for _, v := range []string{"2.0.0", "3.0.0"} {
		_, err := os.Stat(filepath.Join(f.store.Dir(), v))
		assert.ErrorIs(t, err, os.ErrNotExist, v)
	}
}

func TestRollback(t *testing.T) {
	f := newFixture(t)
	f.install("2.0.0", f.base)
	f.install("3.0.0", f.stored("2.0.0"))

	require.NoError(t, f.store.Rollback("3.0.0"))
	assert.Equal(t, "2.0.0", f.selected("1.0.0").Version)
	require.NoError(t, f.store.Rollback("3.0.0"), "again, after a crash: nothing to do")
	assert.Equal(t, "2.0.0", f.selected("1.0.0").Version)

	// 2.0.0 replaced the launcher, but the previous link went with the
	// rollback: rolling back 2.0.0 now returns to the launcher.
	require.NoError(t, f.store.Rollback("2.0.0"))
	assert.True(t, f.selected("1.0.0").Base)
}

func TestInstallIsIdempotent(t *testing.T) {
	f := newFixture(t)
	f.install("2.0.0", f.base)
	f.install("3.0.0", f.stored("2.0.0"))
	// The step is retried after a crash, now running 3.0.0 (or the
	// launcher): previous must still be 2.0.0.
	f.install("3.0.0", f.stored("3.0.0"))
	prev, err := f.store.Previous()
	require.NoError(t, err)
	assert.Equal(t, "2.0.0", prev.Version)
}

func TestDamagedBinaryIsNotStarted(t *testing.T) {
	f := newFixture(t)
	f.install("2.0.0", f.base)
	p := f.stored("2.0.0")
	require.NoError(t, os.Chmod(p, 0o755))
	require.NoError(t, os.WriteFile(p, []byte("peerd 2.0.0 with a flipped bit"), 0o755))

	b, _, err := f.store.Select("1.0.0")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "does not match its recorded sha256")
	assert.True(t, b.Base, "a damaged store falls back to the launcher")

	// Installing the same version again repairs it.
	f.install("2.0.0", f.base)
	assert.Equal(t, "2.0.0", f.selected("1.0.0").Version)
}

func TestBadInput(t *testing.T) {
	f := newFixture(t)
	for _, v := range []string{"", "..", "../../etc", "latest", "1.0/2"} {
		err := f.store.Install(f.staged("x"), v, f.base)
		require.Error(t, err, "%q", v)
		assert.Contains(t, err.Error(), "is not a version")
	}
	require.NoError(t, os.MkdirAll(f.store.Dir(), 0o755))
	require.NoError(t, os.Symlink("../../etc", filepath.Join(f.store.Dir(), "current")))
	b, _, err := f.store.Select("1.0.0")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not a version")
	assert.True(t, b.Base)
	// An install replaces the bad link.
	f.install("2.0.0", f.base)
	assert.Equal(t, "2.0.0", f.selected("1.0.0").Version)
}

func TestCompare(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"1.0.0", "2.0.0", -1},
		{"v2.0.0", "2.0.0", 0},
		{"2.0.0", "2.0.0-rc.1", 1},
		{"1.10.0", "1.9.0", 1},
		{"garbage", "0.0.1", -1},
		{"2.0.0", "1.0.0", 1},
		{"2.0.0-rc1", "2.0.0", -1},
		{"0.0.0-dev", "1.0.0", -1},
	} {
		assert.Equal(t, c.want, versions.Compare(c.a, c.b), "%s vs %s", c.a, c.b)
	}
}

func TestStartsAreCountedUntilStarted(t *testing.T) {
	f := newFixture(t)
	f.install("2.0.0", f.base)
	for want := 1; want <= 3; want++ {
		n, err := f.store.NoteStart("2.0.0")
		require.NoError(t, err)
		assert.Equal(t, want, n)
	}
	require.NoError(t, f.store.Started("2.0.0"))
	n, err := f.store.NoteStart("2.0.0")
	require.NoError(t, err)
	assert.Equal(t, 1, n, "a version that came up starts counting again")
	require.NoError(t, f.store.Started("2.0.0"))
	require.NoError(t, f.store.Started("2.0.0"), "twice is fine")
}

func TestInstallTree(t *testing.T) {
	f := newFixture(t)
	tree, err := f.store.TreeDir("2.0.0")
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(filepath.Join(tree, "bin"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(tree, "bin", "app"), []byte("app 2.0.0"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(tree, "share.txt"), []byte("data"), 0o644))
	require.NoError(t, f.store.InstallTree(tree, "bin/app", "2.0.0", f.base))

	b := f.selected("1.0.0")
	assert.Equal(t, "2.0.0", b.Version)
	data, err := os.ReadFile(b.Path)
	require.NoError(t, err)
	assert.Equal(t, "app 2.0.0", string(data), "the version's binary is the bundle's entry")
	assert.FileExists(t, filepath.Join(f.store.Dir(), "2.0.0", "share.txt"), "the whole tree is installed")
	assert.NoDirExists(t, tree)

	for _, bad := range []string{"../x", "/abs", "."} {
		tree2, _ := f.store.TreeDir("3.0.0")
		require.NoError(t, os.MkdirAll(tree2, 0o755))
		assert.ErrorContains(t, f.store.InstallTree(tree2, bad, "3.0.0", f.base), "inside the bundle", bad)
		os.RemoveAll(tree2)
	}
}

// Stage does every slow part of an install and points nothing at the new
// version: a node that dies after staging comes back at what it ran.
// Activate then only swaps links, and reads no binary.
func TestStageThenActivate(t *testing.T) {
	f := newFixture(t)
	f.install("1.0.0", f.base)
	require.NoError(t, f.store.Stage(f.staged("2.0.0"), "2.0.0"))
	assert.Equal(t, f.stored("1.0.0"), f.selected("0.1.0").Path, "a staged version is not current")
	b, ok := f.store.Stored("2.0.0")
	require.True(t, ok, "the staged binary verifies against its digest")
	assert.Equal(t, f.stored("2.0.0"), b.Path)

	// Activate reads no binary: it takes the staged bytes as Stage hashed
	// them (the launcher checks them again before it runs them).
	require.NoError(t, os.Chmod(f.stored("2.0.0"), 0o755))
	require.NoError(t, os.WriteFile(f.stored("2.0.0"), []byte("damaged"), 0o755))
	require.NoError(t, f.store.Activate("2.0.0", f.stored("1.0.0")))
	cur, ok, err := f.store.Current()
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, "2.0.0", cur.Version)
	prev, err := f.store.Previous()
	require.NoError(t, err)
	assert.Equal(t, "1.0.0", prev.Version, "what ran before is kept for a rollback")
	b, _, err = f.store.Select("0.1.0")
	assert.Error(t, err)
	assert.True(t, b.Base, "the launcher never runs the damaged binary")

	require.NoError(t, f.store.Activate("2.0.0", f.stored("1.0.0")), "activating again (after a crash) changes nothing")
	prev, err = f.store.Previous()
	require.NoError(t, err)
	assert.Equal(t, "1.0.0", prev.Version)
}

func TestActivateNeedsAStagedVersion(t *testing.T) {
	f := newFixture(t)
	assert.ErrorIs(t, f.store.Activate("2.0.0", f.base), versions.ErrNotStaged)

	// A binary without its digest (a crash between the two) is not staged.
	require.NoError(t, os.MkdirAll(filepath.Dir(f.stored("2.0.0")), 0o755))
	require.NoError(t, os.WriteFile(f.stored("2.0.0"), []byte("peerd 2.0.0"), 0o755))
	assert.ErrorIs(t, f.store.Activate("2.0.0", f.base), versions.ErrNotStaged)
	_, ok, err := f.store.Current()
	require.NoError(t, err)
	assert.False(t, ok, "nothing points at a version that is not staged")
}

// Staging the current or previous version again leaves its bytes as they
// are (it may be running, and a rollback needs it); a damaged one is
// staged afresh.
func TestStageKeepsWhatALinkNames(t *testing.T) {
	f := newFixture(t)
	f.install("1.0.0", f.base)
	f.install("2.0.0", f.stored("1.0.0"))
	before, err := os.Stat(f.stored("1.0.0"))
	require.NoError(t, err)
	require.NoError(t, f.store.Stage(f.staged("1.0.0"), "1.0.0"))
	after, err := os.Stat(f.stored("1.0.0"))
	require.NoError(t, err)
	assert.True(t, os.SameFile(before, after), "the previous version was not copied again")

	require.NoError(t, os.Chmod(f.stored("2.0.0"), 0o755))
	require.NoError(t, os.WriteFile(f.stored("2.0.0"), []byte("damaged"), 0o755))
	require.NoError(t, f.store.Stage(f.staged("2.0.0"), "2.0.0"))
	_, ok := f.store.Stored("2.0.0")
	assert.True(t, ok, "a damaged current version is staged again")
}

// A re-exec right after an activation trusts the staged bytes on their
// digest file (they were hashed as they were copied); any other version,
// and a cold start, is hashed.
func TestSelectTrustingSkipsTheHashOfTheActivatedVersionOnly(t *testing.T) {
	f := newFixture(t)
	f.install("2.0.0", f.base)
	require.NoError(t, os.Chmod(f.stored("2.0.0"), 0o755))
	require.NoError(t, os.WriteFile(f.stored("2.0.0"), []byte("changed after staging"), 0o755))

	b, _, err := f.store.SelectTrusting("1.0.0", "2.0.0")
	require.NoError(t, err)
	assert.Equal(t, f.stored("2.0.0"), b.Path, "the activated version is taken on its digest file")
	b, _, err = f.store.SelectTrusting("1.0.0", "3.0.0")
	assert.Error(t, err)
	assert.True(t, b.Base, "another version is hashed")
	b, _, err = f.store.Select("1.0.0")
	assert.Error(t, err)
	assert.True(t, b.Base, "a cold start hashes")

	require.NoError(t, os.Remove(filepath.Join(f.store.Dir(), "2.0.0", "sha256")))
	b, _, err = f.store.SelectTrusting("1.0.0", "2.0.0")
	assert.Error(t, err)
	assert.True(t, b.Base, "a version without its digest file is never trusted")
}
