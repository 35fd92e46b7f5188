package artifact

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"unicode"

	"github.com/peerd/peerd/internal/durable"
)

// BundleManifestName is the manifest every bundle carries at its root.
const BundleManifestName = "peerd-app.json"

// Limits on what a bundle may unpack to, so that a hostile or broken archive
// (a gzip bomb, millions of empty files) cannot fill the disk or inode table.
// Variables rather than constants so that tests can lower them.
var (
	maxBundleSize     int64 = 1 << 30 // total bytes of file contents
	maxBundleEntries        = 10_000
	maxBundleManifest int64 = 64 << 10
	maxBundleTrailer  int64 = 1 << 20 // after the tar end marker (tar pads to 10 KiB)
)

// BundleManifest describes an application bundle: a gzip-compressed tar with
// this manifest, as peerd-app.json, at its root beside the application's
// files. Unknown JSON keys are ignored, so that a newer packager may add
// fields without older agents refusing its bundles.
type BundleManifest struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	OS      string `json:"os"`
	Arch    string `json:"arch"`
	// ProtocolMin and ProtocolMax are the application's protocol range;
	// both 0: unspecified. A release is refused where it shares no protocol
	// with an instance running in the cluster (see Protocol).
	ProtocolMin int `json:"protocol_min,omitempty"`
	ProtocolMax int `json:"protocol_max,omitempty"`
	// Command is the argv that runs the application. Command[0] is a path
	// relative to the bundle root, e.g. "bin/kv".
	Command []string `json:"command"`
}

// Validate reports every problem with m at once, each saying what to fix.
func (m BundleManifest) Validate() error {
	var errs []error
	for _, f := range []struct{ key, v, example string }{
		{"name", m.Name, `"kv"`},
		{"version", m.Version, `"1.2.0"`},
		{"os", m.OS, `"linux"`},
		{"arch", m.Arch, `"amd64"`},
	} {
		switch {
		case f.v == "":
			errs = append(errs, fmt.Errorf("%s: %q is empty: set it, e.g. %s", BundleManifestName, f.key, f.example))
		case f.v == "." || f.v == ".." ||
			strings.IndexFunc(f.v, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r == '/' }) >= 0:
			// These values end up in file names and signed manifests.
			errs = append(errs, fmt.Errorf("%s: %q is %q: it must be one word, without white space or '/', and not '.' or '..', e.g. %s",
				BundleManifestName, f.key, f.v, f.example))
		}
	}
	if m.ProtocolMin < 0 || m.ProtocolMax < 0 {
		errs = append(errs, fmt.Errorf("%s: protocol range %d-%d is negative: use positive numbers, or leave protocol_min and protocol_max out",
			BundleManifestName, m.ProtocolMin, m.ProtocolMax))
	} else if m.ProtocolMin > 0 && m.ProtocolMax == 0 {
		errs = append(errs, fmt.Errorf("%s: protocol_min is %d but protocol_max is missing: give the highest protocol this release speaks too",
			BundleManifestName, m.ProtocolMin))
	} else if m.ProtocolMin > 0 && m.ProtocolMax < m.ProtocolMin {
		errs = append(errs, fmt.Errorf("%s: protocol range %d-%d is empty: protocol_max must be at least protocol_min",
			BundleManifestName, m.ProtocolMin, m.ProtocolMax))
	}
	switch {
	case len(m.Command) == 0 || m.Command[0] == "":
		errs = append(errs, fmt.Errorf(`%s: "command" is empty: set it to the program in the bundle and its arguments, e.g. ["bin/kv", "serve"]`, BundleManifestName))
	case !filepath.IsLocal(filepath.FromSlash(m.Command[0])):
		errs = append(errs, fmt.Errorf(`%s: command[0] %q is not inside the bundle: give the program's path relative to the bundle root, e.g. "bin/kv"`,
			BundleManifestName, m.Command[0]))
	}
	return errors.Join(errs...)
}

// Protocol is the application's protocol range as "MIN-MAX" (the form of
// peerd's own "p" tag), or "" when the manifest declares none. A missing
// protocol_min is 1.
func (m BundleManifest) Protocol() string {
	if m.ProtocolMax <= 0 {
		return ""
	}
	return fmt.Sprintf("%d-%d", max(m.ProtocolMin, 1), m.ProtocolMax)
}

// ReadInstalledManifest reads the manifest an extracted bundle kept in dir
// (a version's directory in an application's version store); ok is false
// when there is none, as for a version installed from a single executable.
func ReadInstalledManifest(dir string) (m BundleManifest, ok bool, err error) {
	data, err := os.ReadFile(filepath.Join(dir, BundleManifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return BundleManifest{}, false, nil
	}
	if err != nil {
		return BundleManifest{}, false, err
	}
	m, err = parseBundleManifest(data)
	if err != nil {
		return BundleManifest{}, false, fmt.Errorf("%s: %w", dir, err)
	}
	return m, true, nil
}

// CheckBundle verifies a bundle's manifest against what the plan and the node
// expect: the application and version the plan names, and this node's OS and
// architecture. Like CheckBuild, the error names every problem found, on one
// line, and what the operator can do about it.
func CheckBundle(m BundleManifest, name, version, goos, goarch string) error {
	var problems []string
	if m.Name != name {
		problems = append(problems, fmt.Sprintf("the bundle is of application %s, not %s: check that --artifact is a bundle of %s", m.Name, name, name))
	}
	if m.Version != version {
		problems = append(problems, fmt.Sprintf("the bundle's manifest names version %s, not %s: check that --artifact is the build of --to", m.Version, version))
	}
	if m.OS != goos || m.Arch != goarch {
		problems = append(problems, fmt.Sprintf("the bundle is for %s/%s, this node is %s/%s: use the bundle built for %s/%s",
			m.OS, m.Arch, goos, goarch, goos, goarch))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// IsBundle reports whether the file at path is gzip-compressed, which is how
// a bundle is told from a single executable (ELF, Mach-O and PE files never
// start with the gzip magic). It does not check that the rest is a bundle.
func IsBundle(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("inspect artifact: %w", err)
	}
	defer f.Close()
	var magic [2]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return false, nil // too short to be gzip
		}
		return false, fmt.Errorf("inspect artifact %s: %w", path, err)
	}
	return magic == [2]byte{0x1f, 0x8b}, nil
}

// ValidateBundle checks the whole bundle at path without extracting it,
// as ExtractBundle would: every entry (no absolute or ".." paths, no links,
// devices or duplicates, sizes and counts within the limits), the
// archive's end (gzip's checksum), the manifest, and that the manifest's
// command is an executable regular file of the bundle. It returns the
// validated manifest and the bytes the bundle unpacks to. The origin and
// each node run it before the lease, so that a bundle that extraction
// would refuse is refused before anything goes offline.
func ValidateBundle(path string) (BundleManifest, int64, error) {
	m, size, err := walkBundle(path, func(*tar.Header, string, io.Reader) error { return nil })
	if err != nil {
		return BundleManifest{}, 0, fmt.Errorf("bundle %s: %w", path, err)
	}
	return m, size, nil
}

var errNoManifest = fmt.Errorf("no %s at the archive's root: is it a peerd application bundle? Add the manifest, or ship a single executable", BundleManifestName)

func parseBundleManifest(data []byte) (BundleManifest, error) {
	var m BundleManifest
	if err := json.Unmarshal(data, &m); err != nil {
		return BundleManifest{}, fmt.Errorf("%s is not valid JSON (%v): fix the manifest and rebuild the bundle", BundleManifestName, err)
	}
	if err := m.Validate(); err != nil {
		return BundleManifest{}, err
	}
	return m, nil
}

// ExtractBundle unpacks the bundle at path into dir, which must not exist or
// be empty, and returns its validated manifest. Only regular files and
// directories are accepted: absolute or ".." paths, links of any kind and
// device files are refused, so nothing is written outside dir. Files keep
// only their executable bits (0o755 or 0o644; directories 0o755). The
// manifest's command must be an executable regular file in the bundle.
//
// Callers see all or nothing: the bundle is unpacked and synced in a sibling
// temporary directory that is renamed to dir once complete; on error, nothing
// is left behind.
func ExtractBundle(path, dir string) (m BundleManifest, err error) {
	fail := func(err error) (BundleManifest, error) {
		return BundleManifest{}, fmt.Errorf("extract bundle %s into %s: %w", path, dir, err)
	}
	existing, err := os.ReadDir(dir)
	dirExists := err == nil
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fail(err)
	case len(existing) > 0:
		return fail(errors.New("the directory is not empty: extract into a new directory"))
	}
	parent := filepath.Dir(dir)
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-*")
	if err != nil {
		return fail(err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp makes it 0o700
		return fail(err)
	}
	if m, err = extractInto(path, tmp); err != nil {
		return fail(err)
	}
	if err := syncDirs(tmp); err != nil {
		return fail(err)
	}
	// os.Rename will not replace a directory, even an empty one; removing it
	// fails, as it should, if something was put in it meanwhile.
	if dirExists {
		if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fail(err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fail(err)
	}
	if err := durable.SyncDir(parent); err != nil {
		return fail(err)
	}
	return m, nil
}

// extractInto unpacks the bundle at path into the empty directory dir.
func extractInto(path, dir string) (BundleManifest, error) {
	m, _, err := walkBundle(path, func(hdr *tar.Header, name string, r io.Reader) error {
		target := filepath.Join(dir, filepath.FromSlash(name))
		// Archives need not list parent directories. No links are ever
		// created, so no path component can lead out of dir.
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeDir {
			if err := os.Mkdir(target, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			return nil
		}
		mode := os.FileMode(0o644)
		if hdr.Mode&0o111 != 0 {
			mode = 0o755
		}
		return writeBundleFile(target, mode, r)
	})
	return m, err
}

// walkBundle reads the bundle at path entry by entry, checking each one
// (bundleReader.next) and how it fits with the others (no name twice, no
// entry inside a file), and hands each entry's contents to put. It then
// checks the archive's end, the manifest, and that the manifest's command
// is an executable regular file of the bundle. It returns the manifest and
// the bytes the entries hold. Nothing is trusted until it returns nil.
func walkBundle(file string, put func(hdr *tar.Header, name string, r io.Reader) error) (BundleManifest, int64, error) {
	b, err := openBundle(file)
	if err != nil {
		return BundleManifest{}, 0, err
	}
	defer b.Close()
	var manifest []byte
	entries := map[string]*tar.Header{}
	dirs := map[string]bool{} // every entry's parents, listed or not
	for {
		hdr, name, err := b.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return BundleManifest{}, 0, err
		}
		if name == "." { // "./", as written by tar -C dir .
			continue
		}
		// Without this, a second entry could silently replace a file a
		// reviewer already looked at.
		if entries[name] != nil {
			return BundleManifest{}, 0, fmt.Errorf("bundle lists %s twice: rebuild it", name)
		}
		if hdr.Typeflag != tar.TypeDir && dirs[name] {
			return BundleManifest{}, 0, fmt.Errorf("bundle entry %s is a file, but other entries are inside it: rebuild the bundle", name)
		}
		for parent := path.Dir(name); parent != "."; parent = path.Dir(parent) {
			if h := entries[parent]; h != nil && h.Typeflag != tar.TypeDir {
				return BundleManifest{}, 0, fmt.Errorf("bundle entry %s is inside %s, which is a file: rebuild the bundle", name, parent)
			}
			dirs[parent] = true
		}
		entries[name] = hdr
		var r io.Reader = b.tr
		if name == BundleManifestName {
			if manifest, err = io.ReadAll(b.tr); err != nil {
				return BundleManifest{}, 0, fmt.Errorf("read archive (%v): is the bundle complete? Fetch it again", err)
			}
			r = bytes.NewReader(manifest)
		}
		if err := put(hdr, name, r); err != nil {
			return BundleManifest{}, 0, err
		}
		// The tar reader checks that each entry holds its header's size
		// only once it is read to the end.
		if _, err := io.Copy(io.Discard, b.tr); err != nil {
			return BundleManifest{}, 0, fmt.Errorf("read archive (%v): is the bundle complete? Fetch it again", err)
		}
	}
	// Read to the end so that gzip checks its CRC and length: a corrupted or
	// cut-off bundle is refused rather than installed. Bounded, since the
	// tar end marker may be followed by any amount of compressed padding.
	if n, err := io.CopyN(io.Discard, b.gz, maxBundleTrailer+1); err != nil && !errors.Is(err, io.EOF) {
		return BundleManifest{}, 0, fmt.Errorf("read archive (%v): is the bundle complete? Fetch it again", err)
	} else if n > maxBundleTrailer {
		return BundleManifest{}, 0, fmt.Errorf("bundle has more than %d bytes after the end of its tar archive: rebuild it", maxBundleTrailer)
	}
	if manifest == nil {
		return BundleManifest{}, 0, errNoManifest
	}
	m, err := parseBundleManifest(manifest)
	if err != nil {
		return BundleManifest{}, 0, err
	}
	cmd := path.Clean(filepath.ToSlash(m.Command[0]))
	hdr := entries[cmd]
	switch {
	case hdr == nil && dirs[cmd]:
		return BundleManifest{}, 0, fmt.Errorf("%s: command %s is not a regular file: fix \"command\"", BundleManifestName, cmd)
	case hdr == nil:
		return BundleManifest{}, 0, fmt.Errorf("%s: command %s is not in the bundle: add it, or fix \"command\"", BundleManifestName, cmd)
	case hdr.Typeflag != tar.TypeReg:
		return BundleManifest{}, 0, fmt.Errorf("%s: command %s is not a regular file: fix \"command\"", BundleManifestName, cmd)
	case hdr.Mode&0o111 == 0:
		return BundleManifest{}, 0, fmt.Errorf("%s: command %s is not executable: chmod +x it before building the bundle", BundleManifestName, cmd)
	}
	return m, b.size, nil
}

// writeBundleFile creates target (which must not exist) with the contents of
// r, synced to disk.
func writeBundleFile(target string, mode os.FileMode, r io.Reader) error {
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if err == nil {
		err = f.Chmod(mode) // the umask may have removed bits
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// syncDirs fsyncs every directory under root, so that the entries of the
// files already synced survive a crash once root is renamed into place.
func syncDirs(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return durable.SyncDir(p)
	})
}

// bundleReader walks a bundle's entries, checking each one's name, type and
// size, and the archive's totals, before anyone acts on it.
type bundleReader struct {
	f       *os.File
	gz      *gzip.Reader
	tr      *tar.Reader
	entries int
	size    int64
}

func openBundle(path string) (*bundleReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	gz, err := gzip.NewReader(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("not a gzip-compressed tar (%v): is it a bundle?", err)
	}
	return &bundleReader{f: f, gz: gz, tr: tar.NewReader(gz)}, nil
}

func (b *bundleReader) Close() error {
	b.gz.Close()
	return b.f.Close()
}

// next returns the next entry's header and its cleaned slash-separated name
// ("." for the root), or io.EOF after the last entry.
func (b *bundleReader) next() (*tar.Header, string, error) {
	hdr, err := b.tr.Next()
	if errors.Is(err, io.EOF) {
		return nil, "", io.EOF
	}
	if err != nil {
		return nil, "", fmt.Errorf("read archive (%v): is the bundle complete? Fetch it again", err)
	}
	b.entries++
	if b.entries > maxBundleEntries {
		return nil, "", fmt.Errorf("bundle has more than %d entries: ship fewer files", maxBundleEntries)
	}
	name, err := bundleEntryName(hdr.Name)
	if err != nil {
		return nil, "", err
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeDir:
	case tar.TypeSymlink, tar.TypeLink:
		return nil, "", fmt.Errorf("bundle entry %s is a link to %s: bundles hold only regular files and directories; put the file itself in the bundle (tar --dereference)",
			hdr.Name, hdr.Linkname)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return nil, "", fmt.Errorf("bundle entry %s is a device or pipe: bundles hold only regular files and directories", hdr.Name)
	default:
		return nil, "", fmt.Errorf("bundle entry %s has unsupported type %q: bundles hold only regular files and directories", hdr.Name, hdr.Typeflag)
	}
	if name == BundleManifestName && hdr.Typeflag == tar.TypeDir {
		return nil, "", fmt.Errorf("bundle entry %s is a directory: it must be the manifest file", BundleManifestName)
	}
	if name == BundleManifestName && hdr.Size > maxBundleManifest {
		return nil, "", fmt.Errorf("%s is %d bytes, more than %d: is it really the manifest?", BundleManifestName, hdr.Size, maxBundleManifest)
	}
	// The tar reader delivers exactly hdr.Size bytes per entry, so the sum
	// of the sizes bounds what extraction writes.
	b.size += hdr.Size
	if hdr.Size < 0 || b.size > maxBundleSize {
		return nil, "", fmt.Errorf("bundle unpacks to more than %d bytes: ship a smaller application or a single executable", maxBundleSize)
	}
	return hdr, name, nil
}

// bundleEntryName cleans an archive entry's name and refuses one that would
// land outside the extraction directory.
func bundleEntryName(name string) (string, error) {
	if name == "" {
		return "", errors.New("bundle has an entry with an empty name: rebuild it")
	}
	if strings.HasPrefix(name, "/") || filepath.IsAbs(name) {
		return "", fmt.Errorf("bundle entry %s has an absolute path: build the bundle with paths relative to its root (tar -C dir)", name)
	}
	// Refuse ".." anywhere, even where cleaning would resolve it inside:
	// no honest packager writes it.
	if strings.ContainsRune(name, '\\') || strings.ContainsRune(name, 0) || slices.Contains(strings.Split(name, "/"), "..") {
		return "", fmt.Errorf("bundle entry %s leaves the bundle root ('..' or '\\' in its path): rebuild the bundle with plain relative paths", name)
	}
	clean := path.Clean(name)
	if clean != "." && !filepath.IsLocal(filepath.FromSlash(clean)) {
		return "", fmt.Errorf("bundle entry %s is not a plain relative path: rebuild the bundle with plain relative paths", name)
	}
	return clean, nil
}
