package artifact

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// entry is one file in a test bundle; typ defaults to a regular file.
type entry struct {
	name, body string
	mode       int64
	typ        byte
	link       string
}

func kvManifest() BundleManifest {
	return BundleManifest{Name: "kv", Version: "2.0.0", OS: "linux", Arch: "amd64",
		ProtocolMin: 1, ProtocolMax: 2, Command: []string{"bin/kv", "serve"}}
}

func manifestEntry(t testing.TB, edit func(*BundleManifest)) entry {
	m := kvManifest()
	if edit != nil {
		edit(&m)
	}
	b, err := json.Marshal(m)
	require.NoError(t, err)
	return entry{name: BundleManifestName, body: string(b), mode: 0o644}
}

var kvBinary = entry{name: "bin/kv", body: "#!/bin/sh\necho kv\n", mode: 0o755}

// bundleBytes builds a tar.gz of entries.
func bundleBytes(t testing.TB, entries ...entry) []byte {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		hdr := &tar.Header{Name: e.name, Mode: e.mode, Typeflag: typ, Linkname: e.link}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		require.NoError(t, tw.WriteHeader(hdr))
		if typ == tar.TypeReg {
			_, err := tw.Write([]byte(e.body))
			require.NoError(t, err)
		}
	}
	require.NoError(t, tw.Close())
	require.NoError(t, gz.Close())
	return buf.Bytes()
}

func writeTemp(t *testing.T, data []byte) string {
	p := filepath.Join(t.TempDir(), "kv.tar.gz")
	require.NoError(t, os.WriteFile(p, data, 0o644))
	return p
}

func writeBundle(t *testing.T, entries ...entry) string {
	return writeTemp(t, bundleBytes(t, entries...))
}

// assertNothingLeft checks that a failed extraction left neither dir nor a
// temporary sibling behind.
func assertNothingLeft(t *testing.T, dir string) {
	t.Helper()
	assert.NoDirExists(t, dir)
	left, err := os.ReadDir(filepath.Dir(dir))
	require.NoError(t, err)
	assert.Empty(t, left, "temporary directories left beside %s", dir)
}

func TestExtractBundle(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries func(t *testing.T) []entry
		wantErr []string // substrings; none means success
	}{
		{name: "valid", entries: func(t *testing.T) []entry {
			return []entry{manifestEntry(t, nil), kvBinary, {name: "share/data.txt", body: "x", mode: 0o600}}
		}},
		{name: "tar -C dir . layout", entries: func(t *testing.T) []entry {
			m := manifestEntry(t, nil)
			m.name = "./" + m.name
			return []entry{{name: "./", typ: tar.TypeDir, mode: 0o755}, m,
				{name: "./bin/", typ: tar.TypeDir, mode: 0o700}, {name: "./bin/kv", body: "x", mode: 0o755}}
		}},
		{name: "manifest after the files", entries: func(t *testing.T) []entry {
			return []entry{kvBinary, manifestEntry(t, nil)}
		}},
		{name: "missing manifest", entries: func(t *testing.T) []entry {
			return []entry{kvBinary}
		}, wantErr: []string{"no peerd-app.json at the archive's root"}},
		{name: "manifest not at the root", entries: func(t *testing.T) []entry {
			m := manifestEntry(t, nil)
			m.name = "kv/" + m.name
			return []entry{m, kvBinary}
		}, wantErr: []string{"no peerd-app.json"}},
		{name: "bad JSON", entries: func(t *testing.T) []entry {
			return []entry{{name: BundleManifestName, body: `{"name": "kv",`}, kvBinary}
		}, wantErr: []string{"peerd-app.json is not valid JSON", "fix the manifest"}},
		{name: "invalid manifest", entries: func(t *testing.T) []entry {
			return []entry{manifestEntry(t, func(m *BundleManifest) { m.Version, m.Command = "", nil }), kvBinary}
		}, wantErr: []string{`"version" is empty`, `"command" is empty`}},
		{name: "manifest too large", entries: func(t *testing.T) []entry {
			return []entry{{name: BundleManifestName, body: strings.Repeat(" ", int(maxBundleManifest)+1)}, kvBinary}
		}, wantErr: []string{"is it really the manifest"}},
		{name: "path traversal", entries: func(t *testing.T) []entry {
			return []entry{{name: "../evil", body: "x"}, manifestEntry(t, nil), kvBinary}
		}, wantErr: []string{"bundle entry ../evil leaves the bundle root"}},
		{name: "path traversal after the manifest", entries: func(t *testing.T) []entry {
			return []entry{manifestEntry(t, nil), kvBinary, {name: "../evil", body: "x"}}
		}, wantErr: []string{"bundle entry ../evil leaves the bundle root"}},
		{name: "entry inside a file", entries: func(t *testing.T) []entry {
			return []entry{manifestEntry(t, nil), kvBinary, {name: "bin/kv/x", body: "x"}}
		}, wantErr: []string{"bundle entry bin/kv/x is inside bin/kv, which is a file"}},
		{name: "file where entries are inside", entries: func(t *testing.T) []entry {
			return []entry{manifestEntry(t, nil), {name: "bin/kv/x", body: "x"}, kvBinary}
		}, wantErr: []string{"bundle entry bin/kv is a file, but other entries are inside it"}},
		{name: "command is an unlisted directory", entries: func(t *testing.T) []entry {
			return []entry{manifestEntry(t, func(m *BundleManifest) { m.Command = []string{"bin"} }), kvBinary}
		}, wantErr: []string{"command bin is not a regular file"}},
		{name: "path traversal inside", entries: func(t *testing.T) []entry {
			return []entry{{name: "bin/../../evil", body: "x"}, manifestEntry(t, nil), kvBinary}
		}, wantErr: []string{"leaves the bundle root"}},
		{name: "absolute path", entries: func(t *testing.T) []entry {
			return []entry{{name: "/abs", body: "x"}, manifestEntry(t, nil), kvBinary}
		}, wantErr: []string{"bundle entry /abs has an absolute path"}},
		{name: "symlink", entries: func(t *testing.T) []entry {
			return []entry{manifestEntry(t, nil), kvBinary, {name: "lib", typ: tar.TypeSymlink, link: "/etc"}}
		}, wantErr: []string{"bundle entry lib is a link to /etc", "tar --dereference"}},
		{name: "hard link", entries: func(t *testing.T) []entry {
			return []entry{{name: "passwd", typ: tar.TypeLink, link: "/etc/passwd"}, manifestEntry(t, nil), kvBinary}
		}, wantErr: []string{"is a link to /etc/passwd"}},
		{name: "device", entries: func(t *testing.T) []entry {
			return []entry{{name: "null", typ: tar.TypeChar}, manifestEntry(t, nil), kvBinary}
		}, wantErr: []string{"bundle entry null is a device"}},
		{name: "duplicate entry", entries: func(t *testing.T) []entry {
			return []entry{manifestEntry(t, nil), kvBinary, {name: "./bin/kv", body: "other", mode: 0o755}}
		}, wantErr: []string{"bundle lists bin/kv twice"}},
		{name: "command not in bundle", entries: func(t *testing.T) []entry {
			return []entry{manifestEntry(t, nil)}
		}, wantErr: []string{"command bin/kv is not in the bundle"}},
		{name: "command not executable", entries: func(t *testing.T) []entry {
			return []entry{manifestEntry(t, nil), {name: "bin/kv", body: "x", mode: 0o644}}
		}, wantErr: []string{"command bin/kv is not executable", "chmod +x"}},
		{name: "command is a directory", entries: func(t *testing.T) []entry {
			return []entry{manifestEntry(t, nil), {name: "bin/kv", typ: tar.TypeDir, mode: 0o755}}
		}, wantErr: []string{"command bin/kv is not a regular file"}},
		{name: "command outside the bundle", entries: func(t *testing.T) []entry {
			return []entry{manifestEntry(t, func(m *BundleManifest) { m.Command = []string{"/bin/sh"} }), kvBinary}
		}, wantErr: []string{`command[0] "/bin/sh" is not inside the bundle`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeBundle(t, tc.entries(t)...)
			dir := filepath.Join(t.TempDir(), "kv-2.0.0")
			got, err := ExtractBundle(p, dir)
			// Validation, before the lease, refuses exactly what extraction
			// (after it) would.
			read, size, readErr := ValidateBundle(p)
			if len(tc.wantErr) == 0 {
				require.NoError(t, err)
				require.NoError(t, readErr)
				assert.Equal(t, kvManifest(), got)
				assert.Equal(t, got, read)
				assert.Positive(t, size)
				fi, err := os.Stat(filepath.Join(dir, "bin", "kv"))
				require.NoError(t, err)
				assert.Equal(t, os.FileMode(0o755), fi.Mode().Perm())
				return
			}
			require.Error(t, err)
			require.Error(t, readErr, "validation passes what extraction refuses")
			for _, s := range tc.wantErr {
				assert.Contains(t, err.Error(), s)
				assert.Contains(t, readErr.Error(), s)
			}
			assertNothingLeft(t, dir)
		})
	}
}

func TestExtractBundleModes(t *testing.T) {
	p := writeBundle(t, manifestEntry(t, nil),
		entry{name: "bin/kv", body: "x", mode: 0o4775}, // setuid and group-writable: dropped
		entry{name: "etc/secret", body: "x", mode: 0o600},
		entry{name: "etc/world", body: "x", mode: 0o666},
		entry{name: "private/", typ: tar.TypeDir, mode: 0o700})
	dir := filepath.Join(t.TempDir(), "kv")
	_, err := ExtractBundle(p, dir)
	require.NoError(t, err)
	for name, want := range map[string]os.FileMode{
		".":          os.ModeDir | 0o755,
		"bin":        os.ModeDir | 0o755,
		"bin/kv":     0o755,
		"etc/secret": 0o644,
		"etc/world":  0o644,
		"private":    os.ModeDir | 0o755,
	} {
		fi, err := os.Stat(filepath.Join(dir, name))
		require.NoError(t, err, name)
		assert.Equal(t, want, fi.Mode(), name)
	}
}

func TestExtractBundleTarget(t *testing.T) {
	p := writeBundle(t, manifestEntry(t, nil), kvBinary)

	t.Run("empty directory is replaced", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "kv")
		require.NoError(t, os.Mkdir(dir, 0o755))
		_, err := ExtractBundle(p, dir)
		require.NoError(t, err)
		assert.FileExists(t, filepath.Join(dir, "bin", "kv"))
	})
	t.Run("non-empty directory is refused and left alone", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "kv")
		require.NoError(t, os.Mkdir(dir, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "keep"), []byte("x"), 0o644))
		_, err := ExtractBundle(p, dir)
		assert.ErrorContains(t, err, "not empty: extract into a new directory")
		left, err := os.ReadDir(filepath.Dir(dir))
		require.NoError(t, err)
		require.Len(t, left, 1)
		assert.FileExists(t, filepath.Join(dir, "keep"))
	})
	t.Run("missing bundle", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "kv")
		_, err := ExtractBundle(filepath.Join(t.TempDir(), "missing.tar.gz"), dir)
		assert.ErrorContains(t, err, "no such file")
		assertNothingLeft(t, dir)
	})
}

func TestBundleLimits(t *testing.T) {
	p := writeBundle(t, manifestEntry(t, nil), kvBinary, entry{name: "big", body: strings.Repeat("x", 1000)})
	for _, tc := range []struct {
		name    string
		lower   func()
		wantErr string
	}{
		{name: "size", lower: func() { maxBundleSize = 1000 }, wantErr: "bundle unpacks to more than 1000 bytes"},
		{name: "entries", lower: func() { maxBundleEntries = 2 }, wantErr: "bundle has more than 2 entries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			size, entries := maxBundleSize, maxBundleEntries
			t.Cleanup(func() { maxBundleSize, maxBundleEntries = size, entries })
			tc.lower()
			dir := filepath.Join(t.TempDir(), "kv")
			_, err := ExtractBundle(p, dir)
			assert.ErrorContains(t, err, tc.wantErr)
			assertNothingLeft(t, dir)
		})
	}
}

func TestIsBundle(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		data []byte
		want bool
	}{
		{name: "bundle", data: bundleBytes(t, manifestEntry(t, nil), kvBinary), want: true},
		{name: "truncated gzip", data: []byte{0x1f, 0x8b}, want: true}, // the magic is all IsBundle checks
		{name: "ELF executable", data: []byte("\x7fELF\x02\x01\x01\x00"), want: false},
		{name: "shell script", data: []byte("#!/bin/sh\n"), want: false},
		{name: "one byte", data: []byte{0x1f}, want: false},
		{name: "empty", data: nil, want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			require.NoError(t, os.WriteFile(p, tc.data, 0o755))
			got, err := IsBundle(p)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	_, err := IsBundle(filepath.Join(dir, "missing"))
	assert.ErrorContains(t, err, "no such file")
}

func TestValidateBundleNotABundle(t *testing.T) {
	_, _, err := ValidateBundle(writeTemp(t, []byte("\x7fELF\x02\x01\x01\x00 some binary")))
	assert.ErrorContains(t, err, "not a gzip-compressed tar")
}

// TestBundleTruncated cuts a valid bundle at every length: each cut must be
// refused cleanly, with no panic and nothing left behind.
func TestBundleTruncated(t *testing.T) {
	data := bundleBytes(t, manifestEntry(t, nil), kvBinary)
	for n := range len(data) {
		p := writeTemp(t, data[:n])
		dir := filepath.Join(t.TempDir(), "kv")
		_, err := ExtractBundle(p, dir)
		require.Error(t, err, "bundle cut to %d of %d bytes", n, len(data))
		assertNothingLeft(t, dir)
		_, _, err = ValidateBundle(p)
		require.Error(t, err, "validation of the bundle cut to %d of %d bytes", n, len(data))
	}
}

// FuzzExtractBundle feeds arbitrary bytes to the bundle readers: they must
// never panic, and extraction must be all or nothing.
func FuzzExtractBundle(f *testing.F) {
	valid := bundleBytes(f, manifestEntry(f, nil), kvBinary)
	f.Add(valid)
	f.Add(valid[:len(valid)/2])
	f.Add([]byte{0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		p := writeTemp(t, data)
		_, _ = IsBundle(p)
		vm, _, verr := ValidateBundle(p)
		dir := filepath.Join(t.TempDir(), "kv")
		m, err := ExtractBundle(p, dir)
		if (err == nil) != (verr == nil) {
			t.Fatalf("validation (%v) and extraction (%v) disagree", verr, err)
		}
		if err != nil {
			assertNothingLeft(t, dir)
			return
		}
		assert.Equal(t, vm, m)
		assert.NoError(t, m.Validate())
		assert.FileExists(t, filepath.Join(dir, BundleManifestName))
	})
}

func TestBundleManifestValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		edit    func(*BundleManifest)
		wantErr []string
	}{
		{name: "valid"},
		{name: "no protocol range", edit: func(m *BundleManifest) { m.ProtocolMin, m.ProtocolMax = 0, 0 }},
		{name: "no protocol_min", edit: func(m *BundleManifest) { m.ProtocolMin = 0 }},
		{name: "open-ended protocol range", edit: func(m *BundleManifest) { m.ProtocolMax = 0 },
			wantErr: []string{"protocol_min is 1 but protocol_max is missing"}},
		{name: "everything missing", edit: func(m *BundleManifest) { *m = BundleManifest{} },
			wantErr: []string{`"name" is empty`, `"version" is empty`, `"os" is empty`, `"arch" is empty`, `"command" is empty`}},
		{name: "white space", edit: func(m *BundleManifest) { m.Name = "my kv" },
			wantErr: []string{`"name" is "my kv": it must be one word`}},
		{name: "slash in version", edit: func(m *BundleManifest) { m.Version = "../2" },
			wantErr: []string{`"version" is "../2"`}},
		{name: "dot-dot name", edit: func(m *BundleManifest) { m.Name = ".." },
			wantErr: []string{`"name" is "..": it must be one word`}},
		{name: "empty protocol range", edit: func(m *BundleManifest) { m.ProtocolMin, m.ProtocolMax = 3, 2 },
			wantErr: []string{"protocol range 3-2 is empty"}},
		{name: "negative protocol", edit: func(m *BundleManifest) { m.ProtocolMin = -1 },
			wantErr: []string{"protocol range -1-2 is negative"}},
		{name: "empty command path", edit: func(m *BundleManifest) { m.Command = []string{"", "serve"} },
			wantErr: []string{`"command" is empty`}},
		{name: "command escapes", edit: func(m *BundleManifest) { m.Command = []string{"../kv"} },
			wantErr: []string{`command[0] "../kv" is not inside the bundle`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := kvManifest()
			if tc.edit != nil {
				tc.edit(&m)
			}
			err := m.Validate()
			if len(tc.wantErr) == 0 {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, s := range tc.wantErr {
				assert.Contains(t, err.Error(), s)
			}
		})
	}
}

func TestBundleManifestJSON(t *testing.T) {
	var m BundleManifest
	require.NoError(t, json.Unmarshal([]byte(`{"name":"kv","version":"2.0.0","os":"linux","arch":"amd64",
		"protocol_min":1,"protocol_max":2,"command":["bin/kv","serve"],"added_later":true}`), &m))
	assert.Equal(t, kvManifest(), m)
}

func TestCheckBundle(t *testing.T) {
	for _, tc := range []struct {
		name    string
		edit    func(*BundleManifest)
		wantErr []string
	}{
		{name: "matches"},
		{name: "other application", edit: func(m *BundleManifest) { m.Name = "web" },
			wantErr: []string{"is of application web, not kv", "check that --artifact is a bundle of kv"}},
		{name: "other version", edit: func(m *BundleManifest) { m.Version = "1.9.0" },
			wantErr: []string{"names version 1.9.0, not 2.0.0", "check that --artifact is the build of --to"}},
		{name: "other arch", edit: func(m *BundleManifest) { m.Arch = "arm64" },
			wantErr: []string{"is for linux/arm64, this node is linux/amd64", "use the bundle built for linux/amd64"}},
		{name: "other os", edit: func(m *BundleManifest) { m.OS = "darwin" },
			wantErr: []string{"is for darwin/amd64"}},
		{name: "everything wrong at once", edit: func(m *BundleManifest) { m.Name, m.Version, m.OS = "web", "0.1", "windows" },
			wantErr: []string{"application web", "version 0.1", "windows/amd64"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := kvManifest()
			if tc.edit != nil {
				tc.edit(&m)
			}
			err := CheckBundle(m, "kv", "2.0.0", "linux", "amd64")
			if len(tc.wantErr) == 0 {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, s := range tc.wantErr {
				assert.Contains(t, err.Error(), s)
			}
			assert.NotContains(t, err.Error(), "\n", "one line for the operator")
		})
	}
}

func TestBundleManifestProtocol(t *testing.T) {
	for _, tc := range []struct {
		min, max int
		want     string
	}{{1, 2, "1-2"}, {0, 3, "1-3"}, {2, 2, "2-2"}, {0, 0, ""}} {
		m := kvManifest()
		m.ProtocolMin, m.ProtocolMax = tc.min, tc.max
		assert.Equal(t, tc.want, m.Protocol(), "%d-%d", tc.min, tc.max)
	}
}

func TestReadInstalledManifest(t *testing.T) {
	dir := t.TempDir()
	_, ok, err := ReadInstalledManifest(dir)
	require.NoError(t, err)
	assert.False(t, ok, "a version installed from a single executable has no manifest")

	want := kvManifest()
	data, err := json.Marshal(want)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, BundleManifestName), data, 0o644))
	got, ok, err := ReadInstalledManifest(dir)
	require.NoError(t, err)
	assert.True(t, ok)
	assert.Equal(t, want, got)

	require.NoError(t, os.WriteFile(filepath.Join(dir, BundleManifestName), []byte("{"), 0o644))
	_, _, err = ReadInstalledManifest(dir)
	assert.ErrorContains(t, err, dir)
}
