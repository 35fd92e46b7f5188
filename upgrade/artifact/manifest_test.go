package artifact

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const testSHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func testManifest() Manifest {
	return Manifest{Target: "peerd", Version: "2.0.0", OS: "linux", Arch: "amd64", SHA256: testSHA, Size: 123}
}

func TestTrustedCommentRoundTrip(t *testing.T) {
	for _, m := range []Manifest{
		testManifest(),
		{Target: "my-app", Version: "2.0.0-rc.1+build.5", OS: "darwin", Arch: "arm64", SHA256: testSHA, Size: 0},
		{Target: "peerd", Version: "v10.20.30", OS: "linux", Arch: "riscv64", SHA256: strings.Repeat("0", 64), Size: 1 << 40},
	} {
		t.Run(m.Version, func(t *testing.T) {
			got, err := ParseTrustedComment(m.TrustedComment())
			require.NoError(t, err)
			assert.Equal(t, m, got)
		})
	}
	assert.Equal(t,
		"peerd-artifact target=peerd version=2.0.0 os=linux arch=amd64 sha256="+testSHA+" size=123",
		testManifest().TrustedComment())
}

func TestParseTrustedCommentLenient(t *testing.T) {
	// Extra white space and keys a newer signer may add are accepted.
	got, err := ParseTrustedComment("peerd-artifact  target=peerd version=2.0.0 channel=stable os=linux arch=amd64 sha256=" + testSHA + " size=123 ")
	require.NoError(t, err)
	assert.Equal(t, testManifest(), got)
}

func TestParseTrustedCommentMalformed(t *testing.T) {
	full := testManifest().TrustedComment()
	for _, tc := range []struct {
		name, comment, want string
	}{
		{"empty", "", "not a peerd artifact manifest"},
		{"minisign default", "timestamp:1700000000\tfile:peerd\thashed", "not a peerd artifact manifest"},
		{"prefix only", "peerd-artifact", "lacks target, version, os, arch, sha256, size"},
		{"other prefix", strings.Replace(full, "peerd-artifact", "peerd-artefact", 1), "not a peerd artifact manifest"},
		{"no size", strings.TrimSuffix(full, " size=123"), "lacks size"},
		{"no equals", full + " garbage", `field "garbage" is not key=value`},
		{"size not a number", strings.Replace(full, "size=123", "size=12x", 1), `size "12x" is not a byte count`},
		{"negative size", strings.Replace(full, "size=123", "size=-1", 1), `size "-1" is not a byte count`},
		{"duplicate version", full + " version=3.0.0", "names version twice"},
		{"empty version", strings.Replace(full, "version=2.0.0", "version=", 1), "manifest version is empty"},
		{"uppercase sha", strings.Replace(full, testSHA, strings.ToUpper(testSHA), 1), "not 64 lowercase hex digits"},
		{"short sha", strings.Replace(full, testSHA, testSHA[:63], 1), "not 64 lowercase hex digits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseTrustedComment(tc.comment)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrBadSignature)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestManifestCheck(t *testing.T) {
	m := testManifest()
	for _, tc := range []struct {
		name string
		want Manifest
		errs []string // substrings; none means no error
	}{
		{"identical", m, nil},
		{"nothing wanted", Manifest{}, nil},
		{"partial match", Manifest{Target: "peerd", Version: "2.0.0", SHA256: testSHA}, nil},
		{"other version", Manifest{Version: "3.0.0"}, []string{`signed version is "2.0.0", want "3.0.0"`}},
		{"other platform", Manifest{OS: "darwin", Arch: "arm64"}, []string{`signed os is "linux", want "darwin"`, `signed arch is "amd64", want "arm64"`}},
		{"other target", Manifest{Target: "my-app"}, []string{`signed target is "peerd", want "my-app"`}},
		{"other digest and size", Manifest{SHA256: strings.Repeat("a", 64), Size: 7}, []string{"signed sha256 is", "signed size is 123, want 7"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := m.Check(tc.want)
			if len(tc.errs) == 0 {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.True(t, errors.Is(err, ErrBadSignature))
			for _, s := range tc.errs {
				assert.Contains(t, err.Error(), s)
			}
			assert.NotContains(t, err.Error(), "\n", "one line for the operator")
		})
	}
}

func TestManifestPieceRoot(t *testing.T) {
	m := Manifest{Target: "peerd", Version: "2.0.0", OS: "linux", Arch: "amd64", SHA256: strings.Repeat("ab", 32), Size: 12,
		PieceRoot: strings.Repeat("cd", 32), PieceSize: 1 << 20}
	got, err := ParseTrustedComment(m.TrustedComment())
	require.NoError(t, err)
	assert.Equal(t, m, got)
	assert.NoError(t, got.Check(m))

	old := m
	old.PieceRoot, old.PieceSize = "", 0
	assert.NotContains(t, old.TrustedComment(), "pieces", "a manifest without a list encodes as before")
	assert.NoError(t, old.Check(m), "a signature without a list vouches for the bytes of any plan's list")

	other := m
	other.PieceRoot = strings.Repeat("ef", 32)
	assert.ErrorIs(t, m.Check(other), ErrBadSignature, "another list")
	other = m
	other.PieceSize = 2 << 20
	assert.ErrorIs(t, m.Check(other), ErrBadSignature, "another piece size")

	for _, bad := range []string{
		old.TrustedComment() + " piece_size=1024",
		old.TrustedComment() + " pieces=" + strings.Repeat("cd", 32),
		old.TrustedComment() + " pieces=xyz piece_size=1024",
		old.TrustedComment() + " pieces=" + strings.Repeat("cd", 32) + " piece_size=-1",
	} {
		_, err := ParseTrustedComment(bad)
		assert.ErrorIs(t, err, ErrBadSignature, bad)
	}
}
