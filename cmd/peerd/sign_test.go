package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/peerd/peerd/upgrade/piece"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSignGenerateRefusesToOverwrite(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "release")
	code, _ := runCLI(t, "sign", "--generate", prefix)
	require.Equal(t, 0, code)
	key, err := os.ReadFile(prefix + ".key")
	require.NoError(t, err)
	pub, err := os.ReadFile(prefix + ".pub")
	require.NoError(t, err)

	// Without --force, an existing pair stays as it was.
	var stderr strings.Builder
	code = run([]string{"peerd", "sign", "--generate", prefix}, &strings.Builder{}, &stderr)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr.String(), "release.key already exists")
	assert.Contains(t, stderr.String(), "--force")
	again, _ := os.ReadFile(prefix + ".key")
	assert.Equal(t, key, again, "the secret key was not replaced")

	// Only the public key left: still refused (its pair would not match).
	require.NoError(t, os.Remove(prefix+".key"))
	code = run([]string{"peerd", "sign", "--generate", prefix}, &strings.Builder{}, &strings.Builder{})
	assert.Equal(t, 1, code)
	pubAgain, _ := os.ReadFile(prefix + ".pub")
	assert.Equal(t, pub, pubAgain)

	// --force replaces the pair, and a key file readable by others becomes 0600.
	require.NoError(t, os.WriteFile(prefix+".key", key, 0o644))
	code, _ = runCLI(t, "sign", "--generate", prefix, "--force")
	require.Equal(t, 0, code)
	fi, err := os.Stat(prefix + ".key")
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	replaced, _ := os.ReadFile(prefix + ".key")
	assert.NotEqual(t, key, replaced)

	code, _ = runCLI(t, "sign", "--force", "x")
	assert.Equal(t, 2, code, "--force without --generate")
}

// TestSignKeysWorkWithMinisign: the key pair peerd writes is minisign's:
// minisign verifies peerd's signatures with peerd's .pub, and signs with
// peerd's .key what agents then accept.
func TestSignKeysWorkWithMinisign(t *testing.T) {
	dir := t.TempDir()
	prefix := filepath.Join(dir, "release")
	code, _ := runCLI(t, "sign", "--generate", prefix)
	require.Equal(t, 0, code)
	pub, err := os.ReadFile(prefix + ".pub")
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(string(pub), "\n"), "\n")
	require.Len(t, lines, 2, "one comment line, one key line: %q", pub)
	assert.Regexp(t, `^untrusted comment: minisign public key [0-9A-F]{16}$`, lines[0])

	art := filepath.Join(dir, "peerd-2.0.0")
	require.NoError(t, os.WriteFile(art, []byte("a new release"), 0o755))
	code, _ = runCLI(t, "sign", "--key", prefix+".key", "--version", "2.0.0", art)
	require.Equal(t, 0, code)

	minisign := lookPath(t, "minisign", "minisign")
	out, err := exec.Command(minisign, "-V", "-p", prefix+".pub", "-m", art).CombinedOutput()
	require.NoError(t, err, "minisign -V reads peerd's public key and signature: %s", out)
	assert.Contains(t, string(out), "Trusted comment: peerd-artifact target=peerd version=2.0.0")

	// And the other way: minisign signs with peerd's secret key what an
	// agent trusting peerd's public key accepts.
	other := filepath.Join(dir, "kv-1.0.0")
	require.NoError(t, os.WriteFile(other, []byte("signed by minisign"), 0o755))
	sha, size, err := artifact.DigestFile(other)
	require.NoError(t, err)
	m := artifact.Manifest{Target: "kv", Version: "1.0.0", OS: "linux", Arch: "amd64", SHA256: sha, Size: size}
	cmd := exec.Command(minisign, "-S", "-s", prefix+".key", "-m", other, "-t", m.TrustedComment())
	cmd.Stdin = strings.NewReader("")
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "minisign -S reads peerd's unencrypted secret key: %s", out)
	keys, err := artifact.LoadTrustedKeys(prefix + ".pub")
	require.NoError(t, err)
	data, _ := os.ReadFile(other)
	sig, _ := os.ReadFile(other + ".minisig")
	got, err := artifact.VerifySignature(keys, data, sig)
	require.NoError(t, err)
	assert.NoError(t, got.Check(m))

	// minisign's own key pair, unencrypted (-W): its files look as peerd's
	// do, line for line, and peerd signs with its secret key.
	gen := exec.Command(minisign, "-G", "-W", "-p", filepath.Join(dir, "m.pub"), "-s", filepath.Join(dir, "m.key"))
	out, err = gen.CombinedOutput()
	require.NoError(t, err, "minisign -G: %s", out)
	for _, ext := range []string{".pub", ".key"} {
		theirs, err := os.ReadFile(filepath.Join(dir, "m"+ext))
		require.NoError(t, err)
		ours, err := os.ReadFile(prefix + ext)
		require.NoError(t, err)
		tl, ol := strings.Split(string(theirs), "\n"), strings.Split(string(ours), "\n")
		require.Len(t, ol, len(tl), "%s: as many lines as minisign's", ext)
		assert.Equal(t, strings.TrimRight(tl[0], "0123456789ABCDEF"), strings.TrimRight(ol[0], "0123456789ABCDEF"), "%s: the same comment", ext)
		assert.Equal(t, len(tl[1]), len(ol[1]), "%s: a key line of the same length", ext)
	}
	code, _ = runCLI(t, "sign", "--key", filepath.Join(dir, "m.key"), "--version", "2.0.0", "--out", art+".m.minisig", art)
	require.Equal(t, 0, code, "peerd signs with minisign's unencrypted secret key")
	out, err = exec.Command(minisign, "-V", "-p", filepath.Join(dir, "m.pub"), "-m", art, "-x", art+".m.minisig").CombinedOutput()
	require.NoError(t, err, "minisign -V: %s", out)
}

// TestSignBindsPieceList: the signature carries the root of the piece list
// agents fetch the artifact by, and verifies as any other.
func TestSignBindsPieceList(t *testing.T) {
	dir := t.TempDir()
	prefix := filepath.Join(dir, "release")
	code, _ := runCLI(t, "sign", "--generate", prefix)
	require.Equal(t, 0, code)
	bin := filepath.Join(dir, "app")
	data := []byte(strings.Repeat("peerd ", 1000))
	require.NoError(t, os.WriteFile(bin, data, 0o755))
	code, _ = runCLI(t, "sign", "--key", prefix+".key", "--version", "2.0.0", bin)
	require.Equal(t, 0, code)
	keys, err := artifact.LoadTrustedKeys(prefix + ".pub")
	require.NoError(t, err)
	sig, err := os.ReadFile(bin + ".minisig")
	require.NoError(t, err)
	m, err := artifact.VerifySignature(keys, data, sig)
	require.NoError(t, err)
	l, err := piece.Compute(strings.NewReader(string(data)), int64(len(data)), piece.DefaultSize)
	require.NoError(t, err)
	assert.Equal(t, l.Root(), m.PieceRoot)
	assert.Equal(t, int64(piece.DefaultSize), m.PieceSize)
}
