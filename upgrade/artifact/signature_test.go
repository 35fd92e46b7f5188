package artifact

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"aead.dev/minisign"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func newKey(t *testing.T) (minisign.PublicKey, minisign.PrivateKey) {
	t.Helper()
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return pub, priv
}

// signedArtifact returns random bytes and the manifest that describes them.
func signedArtifact(t *testing.T) ([]byte, Manifest) {
	t.Helper()
	data := make([]byte, 4096)
	_, err := rand.Read(data)
	require.NoError(t, err)
	sha, size, err := Digest(bytes.NewReader(data))
	require.NoError(t, err)
	return data, Manifest{Target: "peerd", Version: "2.0.0", OS: "linux", Arch: "amd64", SHA256: sha, Size: size}
}

func TestSignVerify(t *testing.T) {
	pub, priv := newKey(t)
	otherPub, otherPriv := newKey(t)
	data, m := signedArtifact(t)
	sig, err := Sign(priv, data, m)
	require.NoError(t, err)
	assert.Contains(t, string(sig), "trusted comment: "+m.TrustedComment()+"\n")

	tampered := bytes.Clone(data)
	tampered[100] ^= 1
	otherSHA, _, err := Digest(bytes.NewReader(tampered))
	require.NoError(t, err)
	wrongManifest := m
	wrongManifest.SHA256 = otherSHA

	for _, tc := range []struct {
		name string
		keys []minisign.PublicKey
		data []byte
		sig  []byte
		want string // error substring; empty means valid
	}{
		{"good", []minisign.PublicKey{pub}, data, sig, ""},
		{"good among several keys", []minisign.PublicKey{otherPub, pub}, data, sig, ""},
		{"good with CRLF and padding", []minisign.PublicKey{pub}, data,
			[]byte("\n" + strings.ReplaceAll(string(sig), "\n", "\r\n") + "\r\n\r\n"), ""},
		{"prehashed (minisign's default)", []minisign.PublicKey{pub}, data, prehashedSig(t, priv, data, m.TrustedComment()), ""},
		{"no keys", nil, data, sig, "no trusted keys"},
		{"wrong key", []minisign.PublicKey{otherPub}, data, sig,
			fmt.Sprintf("signed by key %X, which this agent does not trust (it trusts %X)", pub.ID(), otherPub.ID())},
		{"tampered bytes", []minisign.PublicKey{pub}, tampered, sig, "does not match the artifact's bytes"},
		{"tampered trusted comment", []minisign.PublicKey{pub}, data,
			[]byte(strings.Replace(string(sig), "version=2.0.0", "version=9.0.0", 1)), "trusted comment of the signature by key"},
		{"untrusted comment edited is fine", []minisign.PublicKey{pub}, data,
			[]byte(strings.Replace(string(sig), untrustedComment, "anything at all", 1)), ""},
		{"not a peerd comment", []minisign.PublicKey{pub}, data,
			minisign.SignWithComments(priv, data, "timestamp:1700000000\tfile:peerd", ""), "not a peerd artifact manifest"},
		{"manifest for other bytes", []minisign.PublicKey{pub}, data,
			minisign.SignWithComments(priv, data, wrongManifest.TrustedComment(), ""), "but the signed bytes have sha256 " + m.SHA256},
		{"signed by another trusted key for other bytes", []minisign.PublicKey{pub, otherPub}, data,
			mustSign(t, otherPriv, tampered, wrongManifest), "does not match the artifact's bytes"},
		{"malformed", []minisign.PublicKey{pub}, data, []byte("hello\n"), "not minisign signature text"},
		{"truncated", []minisign.PublicKey{pub}, data, sig[:len(sig)/2], "not minisign signature text"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := VerifySignature(tc.keys, tc.data, tc.sig)
			if tc.want == "" {
				require.NoError(t, err)
				assert.Equal(t, m, got)
				return
			}
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrBadSignature)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func mustSign(t *testing.T, key minisign.PrivateKey, data []byte, m Manifest) []byte {
	t.Helper()
	sig, err := Sign(key, data, m)
	require.NoError(t, err)
	return sig
}

func prehashedSig(t *testing.T, key minisign.PrivateKey, data []byte, comment string) []byte {
	t.Helper()
	r := minisign.NewReader(bytes.NewReader(data))
	_, err := io.Copy(io.Discard, r)
	require.NoError(t, err)
	return r.SignWithComments(key, comment, "prehashed")
}

func TestSignRefusesBadManifest(t *testing.T) {
	_, priv := newKey(t)
	data, m := signedArtifact(t)
	for _, tc := range []struct {
		name string
		edit func(*Manifest)
		want string
	}{
		{"other digest", func(m *Manifest) { m.SHA256 = testSHA }, "but the data has sha256"},
		{"other size", func(m *Manifest) { m.Size++ }, "but the data has sha256"},
		{"no version", func(m *Manifest) { m.Version = "" }, "manifest version is empty"},
		{"space in target", func(m *Manifest) { m.Target = "my app" }, `manifest target "my app" contains white space`},
		{"newline in arch", func(m *Manifest) { m.Arch = "amd64\ntrusted comment: x" }, "contains white space"},
		{"no digest", func(m *Manifest) { m.SHA256 = "" }, "not 64 lowercase hex digits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := m
			tc.edit(&bad)
			_, err := Sign(priv, data, bad)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestLoadTrustedKeys(t *testing.T) {
	pub, _ := newKey(t)
	pub2, _ := newKey(t)
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
		return p
	}
	// The format `minisign -G` writes (no colon after "key", unlike the Go library's).
	cliFormat := write("cli.pub", fmt.Sprintf("untrusted comment: minisign public key %X\n%s\n", pub.ID(), pub.String()))
	libText, err := pub2.MarshalText()
	require.NoError(t, err)
	libFormat := write("lib.pub", string(libText))
	bare := write("bare.pub", pub.String())
	crlf := write("crlf.pub", fmt.Sprintf("untrusted comment: minisign public key %X\r\n%s\r\n", pub.ID(), pub.String()))

	keys, err := LoadTrustedKeys(cliFormat, libFormat, bare, crlf)
	require.NoError(t, err)
	require.Len(t, keys, 4)
	assert.True(t, keys[0].Equal(pub))
	assert.True(t, keys[1].Equal(pub2))
	assert.True(t, keys[2].Equal(pub))
	assert.True(t, keys[3].Equal(pub))

	for _, tc := range []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "nope.pub"), "read trusted key"},
		{"garbage", write("garbage.pub", "untrusted comment: hi\nnot base64!\n"), "garbage.pub"},
		{"empty", write("empty.pub", ""), "found 0 key lines"},
		{"two keys", write("two.pub", pub.String()+"\n"+pub2.String()+"\n"), "found 2 key lines"},
		{"secret key", write("secret.key", "untrusted comment: minisign encrypted secret key\nRWRTY0IyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"), "secret.key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadTrustedKeys(cliFormat, tc.path)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// TestMinisignCLI proves that signatures move both ways between this package
// and the reference minisign tool.
func TestMinisignCLI(t *testing.T) {
	bin, err := exec.LookPath("minisign")
	if err != nil {
		t.Skip("minisign CLI not installed (apt-get install minisign); skipping the compatibility check against it")
	}
	dir := t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "minisign %s: %s", strings.Join(args, " "), out)
		return string(out)
	}
	data, m := signedArtifact(t)
	artifactPath := filepath.Join(dir, "peerd")
	require.NoError(t, os.WriteFile(artifactPath, data, 0o755))

	t.Run("minisign signs, we verify", func(t *testing.T) {
		run("-G", "-W", "-p", "cli.pub", "-s", "cli.key")
		keys, err := LoadTrustedKeys(filepath.Join(dir, "cli.pub"))
		require.NoError(t, err)
		for _, mode := range [][]string{nil, {"-l"}} { // prehashed (default), legacy
			sigPath := filepath.Join(dir, "cli"+strings.Join(mode, "")+".minisig")
			run(append([]string{"-S", "-s", "cli.key", "-m", "peerd", "-x", sigPath, "-t", m.TrustedComment()}, mode...)...)
			sig, err := os.ReadFile(sigPath)
			require.NoError(t, err)
			got, err := VerifySignature(keys, data, sig)
			require.NoError(t, err, "mode %v", mode)
			assert.Equal(t, m, got)

			_, err = VerifySignature(keys, data[1:], sig)
			assert.ErrorIs(t, err, ErrBadSignature)
		}
	})
	t.Run("we sign, minisign verifies", func(t *testing.T) {
		pub, priv := newKey(t)
		pubText, err := pub.MarshalText()
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "go.pub"), pubText, 0o644))
		sig, err := Sign(priv, data, m)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "go.minisig"), sig, 0o644))
		out := run("-V", "-p", "go.pub", "-m", "peerd", "-x", "go.minisig")
		assert.Contains(t, out, "Trusted comment: "+m.TrustedComment())
	})
}

func TestSignedManifest(t *testing.T) {
	pub, priv := newKey(t)
	otherPub, _ := newKey(t)
	data, m := signedArtifact(t)
	m.PieceRoot, m.PieceSize = strings.Repeat("ab", 32), 1<<20
	sig, err := Sign(priv, data, m)
	require.NoError(t, err)
	got, err := SignedManifest([]minisign.PublicKey{otherPub, pub}, sig)
	require.NoError(t, err, "the comment verifies without the bytes")
	assert.Equal(t, m, got)
	_, err = SignedManifest([]minisign.PublicKey{otherPub}, sig)
	assert.ErrorIs(t, err, ErrBadSignature, "an untrusted key")
	altered := bytes.Replace(sig, []byte("version=2.0.0"), []byte("version=2.0.1"), 1)
	_, err = SignedManifest([]minisign.PublicKey{pub}, altered)
	assert.ErrorIs(t, err, ErrBadSignature, "an altered comment")
	_, err = VerifySignature([]minisign.PublicKey{pub}, data, sig)
	assert.NoError(t, err, "a signature with a piece list verifies as any other")
}
