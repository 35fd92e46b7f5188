// Package packaging_test builds the deb and rpm with `make packages` and
// checks what they install: their contents, owners and modes, lintian, the
// systemd unit (systemd-analyze verify), and, in a throwaway Debian root made
// with debootstrap, install, self-upgrade into the version store, package
// upgrade and purge. The root is cached under build/rootfs.
package packaging_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

const repo = ".."

// file is what a package must install at one path.
type file struct {
	path, mode, owner, group string
}

// wantFiles are the package's files (deb paths; the rpm differs where
// rpmPath says), with the owners and modes the package itself declares.
var wantFiles = []file{
	{"/usr/bin/peerd", "-rwxr-xr-x", "root", "root"},
	{"/lib/systemd/system/peerd.service", "-rw-r--r--", "root", "root"},
	{"/etc/peerd", "drwxr-x---", "root", "root"},
	{"/etc/peerd/peerd.hcl", "-rw-r-----", "root", "root"},
	{"/usr/share/bash-completion/completions/peerd", "-rw-r--r--", "root", "root"},
	{"/usr/share/zsh/vendor-completions/_peerd", "-rw-r--r--", "root", "root"},
	{"/usr/share/man/man1/peerd.1.gz", "-rw-r--r--", "root", "root"},
	{"/usr/share/doc/peerd/copyright", "-rw-r--r--", "root", "root"},
}

// rpmFile maps a deb file to the rpm's: other systemd and zsh dirs, and the
// config group set at unpack (rpm resolves it after %pre made it).
func rpmFile(f file) (file, bool) {
	switch f.path {
	case "/lib/systemd/system/peerd.service":
		f.path = "/usr/lib/systemd/system/peerd.service"
	case "/usr/share/zsh/vendor-completions/_peerd":
		f.path = "/usr/share/zsh/site-functions/_peerd"
	case "/etc/peerd", "/etc/peerd/peerd.hcl":
		f.group = "peerd"
	case "/usr/share/doc/peerd/copyright":
		return f, false
	}
	return f, true
}

var (
	pkgOnce  sync.Map // version -> *pkgBuild
	rootOnce sync.Once
	rootDir  string
	rootErr  error
)

type pkgBuild struct {
	once     sync.Once
	deb, rpm string
	err      error
}

// packages builds the deb and rpm of version for amd64 (once per test run).
func packages(t *testing.T, version string) (deb, rpm string) {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make is needed: apt-get install make")
	}
	v, _ := pkgOnce.LoadOrStore(version, &pkgBuild{})
	b := v.(*pkgBuild)
	b.once.Do(func() {
		dist := filepath.Join(os.TempDir(), fmt.Sprintf("peerd-pkg-%d-%s", os.Getpid(), version))
		// `make packages` stages its inputs in the checkout's build/gen,
		// which nfpm.yaml and goreleaser.yaml name: another test run in
		// this checkout must not empty it halfway through this one's.
		unlock, err := lockGen()
		if err != nil {
			b.err = err
			return
		}
		defer unlock()
		cmd := exec.Command("make", "-s", "-C", repo, "packages", "VERSION="+version, "ARCHS=amd64", "DIST="+dist)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("make packages VERSION=%s: %v\n%s", version, err, out)
			return
		}
		b.deb = filepath.Join(dist, fmt.Sprintf("peerd_%s_amd64.deb", version))
		b.rpm = filepath.Join(dist, fmt.Sprintf("peerd-%s-1.x86_64.rpm", version))
	})
	require.NoError(t, b.err)
	return b.deb, b.rpm
}

// lockGen takes the checkout's lock on build/gen (an flock, so that it is
// released however the holder ends) and returns its release.
func lockGen() (func(), error) {
	dir := filepath.Join(repo, "build")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lock build/gen: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "gen.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock build/gen: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock build/gen: %w", err)
	}
	return func() { f.Close() }, nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("peerd-pkg-%d-*", os.Getpid())))
	for _, d := range matches {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

// listing parses `dpkg-deb -c` or `rpm -qplv` lines into path -> file.
func listing(t *testing.T, out string) map[string]file {
	t.Helper()
	files := map[string]file{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			continue
		}
		var f file
		f.mode = fields[0]
		if owner, group, ok := strings.Cut(fields[1], "/"); ok { // dpkg-deb: root/root
			f.owner, f.group = owner, group
		} else { // rpm: links owner group
			f.owner, f.group = fields[2], fields[3]
		}
		f.path = "/" + strings.TrimPrefix(strings.TrimPrefix(fields[len(fields)-1], "."), "/")
		f.path = strings.TrimSuffix(f.path, "/")
		files[f.path] = f
	}
	return files
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %s:\n%s", name, strings.Join(args, " "), out)
	return string(out)
}

func need(t *testing.T, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s is not installed: apt-get install %s (.ci/run does)", tool, pkg)
	}
}

func TestDebContents(t *testing.T) {
	need(t, "dpkg-deb", "dpkg")
	deb, _ := packages(t, "1.0.0")
	files := listing(t, run(t, "dpkg-deb", "-c", deb))
	for _, want := range wantFiles {
		assert.Equal(t, want, files[want.path], "deb: %s", want.path)
	}
	info := run(t, "dpkg-deb", "-I", deb)
	for _, s := range []string{"preinst", "postinst", "prerm", "postrm", "conffiles", "Package: peerd", "Version: 1.0.0", "Architecture: amd64", "Depends: procps"} {
		assert.Contains(t, info, s)
	}
	assert.Equal(t, "/etc/peerd/peerd.hcl\n", extract(t, deb, "conffiles"))
}

// extract returns one control file of a deb.
func extract(t *testing.T, deb, name string) string {
	t.Helper()
	dir := t.TempDir()
	run(t, "dpkg-deb", "--control", deb, dir)
	b, err := os.ReadFile(filepath.Join(dir, name))
	require.NoError(t, err)
	return string(b)
}

func TestRpmContents(t *testing.T) {
	need(t, "rpm", "rpm")
	_, rpm := packages(t, "1.0.0")
	files := listing(t, run(t, "rpm", "-qplv", rpm))
	for _, w := range wantFiles {
		want, ok := rpmFile(w)
		if !ok {
			continue
		}
		assert.Equal(t, want, files[want.path], "rpm: %s", want.path)
	}
	scripts := run(t, "rpm", "-qp", "--scripts", rpm)
	for _, s := range []string{"preinstall scriptlet", "postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet", "useradd --system"} {
		assert.Contains(t, scripts, s)
	}
	assert.Contains(t, run(t, "rpm", "-qp", "--configfiles", rpm), "/etc/peerd/peerd.hcl")
}

func TestLintian(t *testing.T) {
	need(t, "lintian", "lintian")
	deb, _ := packages(t, "1.0.0")
	out, err := exec.Command("lintian", "--fail-on", "error", deb).CombinedOutput()
	assert.NoError(t, err, "lintian:\n%s", out)
	assert.NotRegexp(t, regexp.MustCompile(`(?m)^E: `), string(out), "lintian errors")
}

func TestUnitHasWhatTheServiceNeeds(t *testing.T) {
	unit, err := os.ReadFile(filepath.Join(repo, "packaging", "peerd.service"))
	require.NoError(t, err)
	for _, line := range []string{
		"Type=notify",
		"ExecStart=/usr/bin/peerd agent --config /etc/peerd/peerd.hcl",
		"ExecReload=/bin/kill -HUP $MAINPID",
		"Restart=on-failure",
		"User=peerd",
		"StateDirectory=peerd",
		"ProtectSystem=strict",
		"ProtectHome=yes",
		"NoNewPrivileges=yes",
		"PrivateTmp=yes",
	} {
		assert.Contains(t, string(unit), "\n"+line+"\n")
	}
	assert.Regexp(t, `\nWatchdogSec=\d+s\n`, string(unit))
}

// TestGoreleaserMatchesNfpm: goreleaser's nfpms section ships the files
// `make packages` does.
func TestGoreleaserMatchesNfpm(t *testing.T) {
	type content struct {
		Src      string         `yaml:"src"`
		Dst      string         `yaml:"dst"`
		Type     string         `yaml:"type"`
		Packager string         `yaml:"packager"`
		FileInfo map[string]any `yaml:"file_info"`
	}
	type nfpm struct {
		Contents  []content      `yaml:"contents"`
		Scripts   map[string]any `yaml:"scripts"`
		Rpm       map[string]any `yaml:"rpm"`
		Overrides map[string]any `yaml:"overrides"`
		Other     map[string]any `yaml:",inline"`
	}
	var local nfpm
	var release struct {
		Nfpms []nfpm `yaml:"nfpms"`
	}
	read := func(path string, v any) {
		b, err := os.ReadFile(filepath.Join(repo, path))
		require.NoError(t, err)
		require.NoError(t, yaml.Unmarshal(b, v), path)
	}
	read("packaging/nfpm.yaml", &local)
	read("goreleaser.yaml", &release)
	require.Len(t, release.Nfpms, 1)
	rel := release.Nfpms[0]
	// nfpm.yaml names the binary itself; goreleaser adds it from the build.
	var files []content
	for _, c := range local.Contents {
		if c.Dst != "/usr/bin/peerd" {
			files = append(files, c)
		}
	}
	assert.Equal(t, files, rel.Contents)
	assert.Equal(t, local.Scripts, rel.Scripts)
	assert.Equal(t, local.Rpm, rel.Rpm)
	assert.Equal(t, local.Overrides["deb"].(map[string]any)["depends"], rel.Overrides["deb"].(map[string]any)["dependencies"])
	for _, k := range []string{"maintainer", "description", "section", "priority", "homepage", "license", "vendor"} {
		assert.NotNil(t, local.Other[k], k)
		assert.Equal(t, local.Other[k], rel.Other[k], k)
	}
}

// debianRoot returns a fresh copy of a minimal Debian bookworm root with
// systemd, built once with debootstrap and cached in build/rootfs, with
// /proc mounted for the processes run in it by chroot.
func debianRoot(t *testing.T) string {
	t.Helper()
	dst := debianRootNoProc(t)
	proc := filepath.Join(dst, "proc")
	run(t, "mount", "-t", "proc", "proc", proc)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", proc).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", proc, err, out)
		}
	})
	return dst
}

// debianRootNoProc is debianRoot without /proc (systemd-nspawn mounts its own).
func debianRootNoProc(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("installing the package into a Debian root needs root (chroot, dpkg)")
	}
	need(t, "debootstrap", "debootstrap")
	rootOnce.Do(func() {
		cache, _ := filepath.Abs(filepath.Join(repo, "build", "rootfs", "bookworm"))
		rootDir = cache
		if _, err := os.Stat(filepath.Join(cache, "usr", "bin", "systemd-analyze")); err == nil {
			return
		}
		// A build dir of this run's own: another test run in this checkout
		// may be building the cache at the same time.
		if rootErr = os.MkdirAll(filepath.Dir(cache), 0o755); rootErr != nil {
			return
		}
		tmp, err := os.MkdirTemp(filepath.Dir(cache), "bookworm.tmp-")
		if err == nil {
			err = os.Chmod(tmp, 0o755) // the root's "/": every user of the root traverses it
		}
		if err != nil {
			rootErr = err
			return
		}
		mirror := aptMirror()
		// systemd: systemd-analyze and booting under nspawn; procps: the
		// package's dependency (/bin/kill); man-db: verify checks the man page.
		cmd := exec.Command("debootstrap", "--variant=minbase", "--include=systemd,systemd-sysv,procps,man-db", "bookworm", tmp, mirror)
		out, err := cmd.CombinedOutput()
		if err != nil {
			os.RemoveAll(tmp)
			rootErr = fmt.Errorf("debootstrap bookworm from %s: %v\n%s", mirror, err, tail(out, 2000))
			return
		}
		if err := os.Rename(tmp, cache); err != nil {
			// The other run got there first (the cache is not empty): use its.
			os.RemoveAll(tmp)
			if _, serr := os.Stat(filepath.Join(cache, "usr", "bin", "systemd-analyze")); serr != nil {
				rootErr = fmt.Errorf("cache the Debian root: %w", err)
			}
		}
	})
	if rootErr != nil {
		if strings.Contains(rootErr.Error(), "Failed getting release file") || strings.Contains(rootErr.Error(), "Couldn't download") {
			t.Skipf("debootstrap cannot reach its mirror here: %v", rootErr)
		}
		t.Fatal(rootErr)
	}
	dst := filepath.Join(t.TempDir(), "root")
	run(t, "cp", "-a", rootDir, dst)
	return dst
}

// aptMirror is the Debian mirror apt is set up with here.
func aptMirror() string {
	for _, path := range []string{"/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"} {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		if m := regexp.MustCompile(`(?m)^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(https?://\S+/debian)\s*$`).FindSubmatch(b); m != nil {
			return string(m[1])
		}
	}
	return "http://deb.debian.org/debian"
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// in runs a command inside root (chroot) and returns its output.
func in(t *testing.T, root string, args ...string) string {
	t.Helper()
	out, err := inErr(root, args...)
	require.NoError(t, err, "chroot %s:\n%s", strings.Join(args, " "), out)
	return out
}

func inErr(root string, args ...string) (string, error) {
	cmd := exec.Command("chroot", append([]string{root}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func copyInto(t *testing.T, root, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(root, dst), b, 0o755))
}

func TestDebInstallsAndPurges(t *testing.T) {
	deb, _ := packages(t, "1.0.0")
	root := debianRoot(t)
	copyInto(t, root, deb, "/tmp/peerd.deb")

	in(t, root, "dpkg", "-i", "/tmp/peerd.deb")
	assert.Contains(t, in(t, root, "peerd", "version"), "peerd 1.0.0")
	assert.Regexp(t, `^peerd:x:\d+:\d+:peerd agent:/var/lib/peerd:/usr/sbin/nologin`, in(t, root, "getent", "passwd", "peerd"))
	in(t, root, "getent", "group", "peerd")
	assert.Equal(t, "root peerd 750\n", in(t, root, "stat", "-c", "%U %G %a", "/etc/peerd"))
	assert.Equal(t, "root peerd 640\n", in(t, root, "stat", "-c", "%U %G %a", "/etc/peerd/peerd.hcl"))
	assert.Equal(t, "peerd peerd 700\n", in(t, root, "stat", "-c", "%U %G %a", "/var/lib/peerd"))
	assert.Empty(t, in(t, root, "dpkg", "--verify", "peerd"))
	// The unit passes systemd's own checks, man page reference included.
	out, err := inErr(root, "systemd-analyze", "verify", "/lib/systemd/system/peerd.service")
	assert.NoError(t, err, "systemd-analyze verify:\n%s", out)
	assert.Empty(t, strings.TrimSpace(out), "systemd-analyze verify has no complaints")
	assert.Contains(t, in(t, root, "sh", "-c", "MANWIDTH=80 man peerd | head -5"), "peerd")

	// Installing again (a reinstall) keeps the user and the config.
	in(t, root, "dpkg", "-i", "/tmp/peerd.deb")
	// Remove keeps the conffile, purge removes everything.
	in(t, root, "dpkg", "--remove", "peerd")
	assert.FileExists(t, filepath.Join(root, "etc/peerd/peerd.hcl"))
	in(t, root, "dpkg", "--purge", "peerd")
	for _, p := range []string{"usr/bin/peerd", "etc/peerd", "var/lib/peerd", "lib/systemd/system/peerd.service"} {
		assert.NoFileExists(t, filepath.Join(root, p))
		assert.NoDirExists(t, filepath.Join(root, p))
	}
	_, err = inErr(root, "getent", "passwd", "peerd")
	assert.Error(t, err, "purge removes the user")
	_, err = inErr(root, "getent", "group", "peerd")
	assert.Error(t, err, "purge removes the group")
	overrides, _ := inErr(root, "dpkg-statoverride", "--list", "/etc/peerd*") // exits 1 when there is none
	assert.Empty(t, overrides, "purge removes the stat overrides")
}

// agentProc is a peerd agent running inside a root, as user peerd.
type agentProc struct {
	cmd  *exec.Cmd
	out  *logBuffer
	done chan struct{}
}

// logBuffer collects a process's output while the test reads it.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startAgent runs the package's agent on ports it picks: the chroot shares
// the host's network, where anything may be listening.
func startAgent(t *testing.T, root string) *agentProc {
	t.Helper()
	out := new(logBuffer)
	cmd := exec.Command("chroot", "--userspec=peerd:peerd", root, "/usr/bin/peerd", "agent",
		"--config", "/etc/peerd/peerd.hcl", "--node", "pkg-node",
		"--bind", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--gossip-profile", "fast", "--allow-unsigned", "--allow-outage")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/var/lib/peerd"}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	a := &agentProc{cmd: cmd, out: out, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(a.done) }()
	t.Cleanup(func() { a.stop(t) })
	return a
}

// stop sends SIGTERM (a graceful leave) and waits, SIGKILL after a bound.
func (a *agentProc) stop(t *testing.T) {
	select {
	case <-a.done:
		return
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(20 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
		t.Errorf("agent did not stop on SIGTERM within 20s; log:\n%s", a.out)
	}
}

// infoVersion asks the agent in root (over its control socket) which
// version it runs; empty while it does not answer.
func infoVersion(root string) string {
	out, err := inErr(root, "peerd", "info", "--json")
	if err != nil {
		return ""
	}
	var info struct {
		Build struct {
			Version string `json:"version"`
		} `json:"build"`
	}
	if json.Unmarshal([]byte(out), &info) != nil {
		return ""
	}
	return info.Build.Version
}

func waitVersion(t *testing.T, root string, a *agentProc, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if infoVersion(root) == want {
			return
		}
		select {
		case <-a.done:
			t.Fatalf("agent exited while waiting for version %s; log:\n%s", want, a.out)
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("agent did not report version %s within 60s (now %q); log:\n%s", want, infoVersion(root), a.out)
}

// TestVersionStoreUnderThePackageManager: a package-installed 1.0.0
// self-upgrades to 2.0.0 into the version store without touching dpkg's
// files; a restart still runs 2.0.0; a package upgrade to 3.0.0 then wins.
func TestVersionStoreUnderThePackageManager(t *testing.T) {
	deb1, _ := packages(t, "1.0.0")
	deb3, _ := packages(t, "3.0.0")
	root := debianRoot(t)
	v2 := filepath.Join(t.TempDir(), "peerd")
	build := exec.Command("make", "-s", "-C", repo, "build", "VERSION=2.0.0", "OUT="+v2)
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	copyInto(t, root, deb1, "/tmp/peerd-1.deb")
	copyInto(t, root, deb3, "/tmp/peerd-3.deb")
	copyInto(t, root, v2, "/tmp/peerd-2.0.0")
	in(t, root, "dpkg", "-i", "/tmp/peerd-1.deb")

	a := startAgent(t, root)
	waitVersion(t, root, a, "1.0.0")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	up := exec.CommandContext(ctx, "chroot", root, "peerd", "upgrade", "--to", "2.0.0", "--artifact", "/tmp/peerd-2.0.0",
		"--allow-outage", "--min-healthy", "200ms", "--deadline", "1m")
	up.Env = []string{"PATH=/usr/bin:/bin"}
	out, err = up.CombinedOutput()
	require.NoError(t, err, "peerd upgrade:\n%s\nagent log:\n%s", out, a.out)
	waitVersion(t, root, a, "2.0.0")

	// The package's files are as dpkg installed them; the new version is in
	// the data dir, owned by the agent's user.
	assert.Empty(t, in(t, root, "dpkg", "--verify", "peerd"), "dpkg --verify: no file the package owns changed")
	assert.Contains(t, in(t, root, "/usr/bin/peerd", "version"), "peerd 1.0.0")
	assert.Equal(t, "2.0.0", strings.TrimSpace(in(t, root, "readlink", "/var/lib/peerd/versions/current")))
	assert.Contains(t, in(t, root, "/var/lib/peerd/versions/2.0.0/peerd", "version"), "peerd 2.0.0")
	assert.Equal(t, "peerd\n", in(t, root, "stat", "-c", "%U", "/var/lib/peerd/versions/2.0.0/peerd"))

	// A restart runs 2.0.0 again: /usr/bin/peerd hands over to the store.
	a.stop(t)
	a = startAgent(t, root)
	waitVersion(t, root, a, "2.0.0")
	assert.Contains(t, a.out.String(), "starting the newer version from the version store")

	// A package upgrade to 3.0.0 wins over the store's 2.0.0.
	a.stop(t)
	in(t, root, "dpkg", "-i", "/tmp/peerd-3.deb")
	a = startAgent(t, root)
	waitVersion(t, root, a, "3.0.0")
	assert.Contains(t, a.out.String(), "is not older than the stored 2.0.0")
	assert.Empty(t, in(t, root, "dpkg", "--verify", "peerd"))
	a.stop(t)

	in(t, root, "dpkg", "--purge", "peerd")
	assert.NoDirExists(t, filepath.Join(root, "var/lib/peerd"), "purge removes the version store too")
}

// TestRpmInstallsAndErases installs the rpm into the Debian root with rpm
// --root (there is no RPM-based root here; --nodeps because that root's rpm
// database knows none of its files): the scriptlets run in the root, make
// the user and the data dir; erase removes the files and keeps the user.
func TestRpmInstallsAndErases(t *testing.T) {
	need(t, "rpm", "rpm")
	_, rpm := packages(t, "1.0.0")
	root := debianRoot(t)
	rpmIn := func(args ...string) string {
		out, err := exec.Command("rpm", append([]string{"--root", root}, args...)...).CombinedOutput()
		require.NoError(t, err, "rpm %s:\n%s", strings.Join(args, " "), out)
		return string(out)
	}
	rpmIn("--initdb")
	rpmIn("-i", "--nodeps", rpm)
	assert.Contains(t, in(t, root, "peerd", "version"), "peerd 1.0.0")
	assert.Regexp(t, `^peerd:x:\d+:\d+:peerd agent:/var/lib/peerd:/usr/sbin/nologin`, in(t, root, "getent", "passwd", "peerd"))
	assert.Equal(t, "root peerd 640\n", in(t, root, "stat", "-c", "%U %G %a", "/etc/peerd/peerd.hcl"))
	assert.Equal(t, "peerd peerd 700\n", in(t, root, "stat", "-c", "%U %G %a", "/var/lib/peerd"))
	assert.FileExists(t, filepath.Join(root, "usr/lib/systemd/system/peerd.service"))
	verify, err := exec.Command("rpm", "--root", root, "-V", "peerd").CombinedOutput()
	assert.NoError(t, err, "rpm -V:\n%s", verify)

	rpmIn("-e", "peerd")
	assert.NoFileExists(t, filepath.Join(root, "usr/bin/peerd"))
	in(t, root, "getent", "passwd", "peerd") // rpm has no purge: the user stays
}
