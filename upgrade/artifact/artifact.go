package artifact

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"aead.dev/minisign"
	"github.com/kr/binarydist"
	"github.com/minio/selfupdate"
	"github.com/peerd/peerd/buildinfo"
)

// Sentinels for callers that branch.
var (
	ErrBadSignature   = errors.New("bad signature")
	ErrDigestMismatch = errors.New("digest mismatch")
)

// Manifest is what a signature vouches for.
type Manifest struct {
	Target  string
	Version string
	OS      string
	Arch    string
	SHA256  string
	Size    int64
}

const commentPrefix = "peerd-artifact"

// TrustedComment encodes m for minisign's trusted comment.
func (m Manifest) TrustedComment() string {
	return fmt.Sprintf("%s target=%s version=%s os=%s arch=%s sha256=%s size=%d",
		commentPrefix, m.Target, m.Version, m.OS, m.Arch, m.SHA256, m.Size)
}

// ParseTrustedComment is TrustedComment's inverse.
func ParseTrustedComment(s string) (Manifest, error) {
	fields := strings.Fields(s)
	if len(fields) == 0 || fields[0] != commentPrefix {
		return Manifest{}, fmt.Errorf("%w: trusted comment %q is not a peerd artifact manifest (sign with 'peerd sign')", ErrBadSignature, s)
	}
	var m Manifest
	seen := map[string]bool{}
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return Manifest{}, fmt.Errorf("%w: manifest field %q is not key=value", ErrBadSignature, f)
		}
		seen[k] = true
		switch k {
		case "target":
			m.Target = v
		case "version":
			m.Version = v
		case "os":
			m.OS = v
		case "arch":
			m.Arch = v
		case "sha256":
			m.SHA256 = v
		case "size":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return Manifest{}, fmt.Errorf("%w: manifest size %q is not a number", ErrBadSignature, v)
			}
			m.Size = n
		}
	}
	for _, k := range []string{"target", "version", "os", "arch", "sha256"} {
		if !seen[k] {
			return Manifest{}, fmt.Errorf("%w: manifest lacks %s", ErrBadSignature, k)
		}
	}
	return m, nil
}

// Check names each field of m that differs from want; empty fields of want
// are not checked.
func (m Manifest) Check(want Manifest) error {
	var errs []error
	cmp := func(name, got, want string) {
		if want != "" && got != want {
			errs = append(errs, fmt.Errorf("%s is %q, want %q", name, got, want))
		}
	}
	cmp("target", m.Target, want.Target)
	cmp("version", m.Version, want.Version)
	cmp("os", m.OS, want.OS)
	cmp("arch", m.Arch, want.Arch)
	cmp("sha256", m.SHA256, want.SHA256)
	if want.Size != 0 && m.Size != want.Size {
		errs = append(errs, fmt.Errorf("size is %d, want %d", m.Size, want.Size))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrBadSignature, errors.Join(errs...))
	}
	return nil
}

// Digest hashes r.
func Digest(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return "", n, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// DigestFile hashes a file.
func DigestFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	return Digest(f)
}

// Sign signs data, putting m in the trusted comment.
func Sign(key minisign.PrivateKey, data []byte, m Manifest) ([]byte, error) {
	return minisign.SignWithComments(key, data, m.TrustedComment(), "signature from peerd sign"), nil
}

// LoadTrustedKeys reads minisign public key files (minisign -G's format, or
// a bare base64 key line).
func LoadTrustedKeys(paths ...string) ([]minisign.PublicKey, error) {
	var keys []minisign.PublicKey
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read trusted key: %w", err)
		}
		var k minisign.PublicKey
		text := strings.TrimSpace(string(b))
		if lines := strings.Split(text, "\n"); len(lines) > 1 {
			text = strings.TrimSpace(lines[len(lines)-1])
		}
		if err := k.UnmarshalText([]byte(text)); err != nil {
			return nil, fmt.Errorf("trusted key %s is not a minisign public key: %w", p, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// VerifySignature checks sig over data against keys and returns the
// manifest its trusted comment carries.
func VerifySignature(keys []minisign.PublicKey, data []byte, sig []byte) (Manifest, error) {
	if len(keys) == 0 {
		return Manifest{}, fmt.Errorf("%w: no trusted keys", ErrBadSignature)
	}
	var s minisign.Signature
	if err := s.UnmarshalText(sig); err != nil {
		return Manifest{}, fmt.Errorf("%w: malformed minisign signature: %v", ErrBadSignature, err)
	}
	var key *minisign.PublicKey
	for i := range keys {
		if keys[i].ID() == s.KeyID {
			key = &keys[i]
		}
	}
	if key == nil {
		return Manifest{}, fmt.Errorf("%w: signed by key %X, which this agent does not trust (--trust-key)", ErrBadSignature, s.KeyID)
	}
	if !minisign.Verify(*key, data, sig) {
		return Manifest{}, fmt.Errorf("%w: the signature does not match the artifact's bytes or its trusted comment", ErrBadSignature)
	}
	return ParseTrustedComment(s.TrustedComment)
}

// Store is a content-addressed cache of blobs named by their sha256.
type Store struct {
	dir string
	mu  sync.Mutex // serialises renames into the store
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// NewStore opens (creating) the store at dir.
func NewStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create artifact store: %w", err)
	}
	return &Store{dir: dir}, nil
}

// Put copies r into the store, hashing as it writes. With wantSHA256 set, a
// different digest stores nothing and returns an error naming both.
func (s *Store) Put(r io.Reader, wantSHA256 string) (string, int64, error) {
	f, err := os.CreateTemp(s.dir, ".put-*")
	if err != nil {
		return "", 0, fmt.Errorf("store artifact: %w", err)
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", n, fmt.Errorf("store artifact: %w", err)
	}
	sha := hex.EncodeToString(h.Sum(nil))
	if wantSHA256 != "" && sha != wantSHA256 {
		return "", n, fmt.Errorf("%w: got sha256 %s, want %s", ErrDigestMismatch, sha, wantSHA256)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.Rename(f.Name(), s.Path(sha)); err != nil {
		return "", n, fmt.Errorf("store artifact: %w", err)
	}
	return sha, n, nil
}

// Has reports whether the store holds the blob.
func (s *Store) Has(sha string) bool {
	if !hex64.MatchString(sha) {
		return false
	}
	_, err := os.Stat(s.Path(sha))
	return err == nil
}

// Path is where a blob lives.
func (s *Store) Path(sha string) string { return filepath.Join(s.dir, sha) }

// Open opens a blob.
func (s *Store) Open(sha string) (*os.File, error) {
	if !hex64.MatchString(sha) {
		return nil, fmt.Errorf("artifact %q: not a sha256", sha)
	}
	return os.Open(s.Path(sha))
}

// MakePatch writes a BSDIFF40 patch from oldPath to newPath into outPath.
func MakePatch(oldPath, newPath, outPath string) error {
	oldF, err := os.Open(oldPath)
	if err != nil {
		return fmt.Errorf("open old binary: %w", err)
	}
	defer oldF.Close()
	newF, err := os.Open(newPath)
	if err != nil {
		return fmt.Errorf("open new binary: %w", err)
	}
	defer newF.Close()
	tmp, err := os.CreateTemp(filepath.Dir(outPath), ".patch-*")
	if err != nil {
		return fmt.Errorf("create patch: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := binarydist.Diff(oldF, newF, tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("diff %s %s: %w", oldPath, newPath, err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), outPath)
}

// ApplyPatch applies a bsdiff patch to the file at oldPath, writing the result to w.
func ApplyPatch(oldPath string, patch io.Reader, w io.Writer) error {
	old, err := os.Open(oldPath)
	if err != nil {
		return err
	}
	defer old.Close()
	return selfupdate.NewBSDiffPatcher().Patch(old, w, patch)
}

// Preflight runs `binaryPath version --json` and decodes the answer.
func Preflight(ctx context.Context, binaryPath string) (buildinfo.Info, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, binaryPath, "version", "--json")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return buildinfo.Info{}, fmt.Errorf("run new binary's 'version --json': %w: %.300s", err, strings.TrimSpace(stderr.String()))
	}
	var info buildinfo.Info
	if err := json.Unmarshal(stdout.Bytes(), &info); err != nil || info.Version == "" {
		return buildinfo.Info{}, fmt.Errorf("new binary's 'version --json' printed no peerd build info: %.200q", stdout.String())
	}
	return info, nil
}

// CheckBuild verifies a preflight answer against the plan and the cluster.
func CheckBuild(info buildinfo.Info, wantVersion, wantOS, wantArch string, activeProtocol int) error {
	if info.Version != wantVersion {
		return fmt.Errorf("the new binary reports version %s, not %s: check --to and --artifact", info.Version, wantVersion)
	}
	if info.OS != wantOS || info.Arch != wantArch {
		return fmt.Errorf("the new binary is for %s/%s, this node is %s/%s: use the artifact built for %s/%s", info.OS, info.Arch, wantOS, wantArch, wantOS, wantArch)
	}
	if activeProtocol > 0 && (activeProtocol < info.ProtocolMin || activeProtocol > info.ProtocolMax) {
		return fmt.Errorf("the new binary speaks protocol %d-%d, which does not include the cluster's active protocol %d: upgrade through a version that speaks both", info.ProtocolMin, info.ProtocolMax, activeProtocol)
	}
	return nil
}

// Install atomically replaces targetPath with newPath's content, keeping the
// previous binary at keepPath. targetPath is always a complete binary: the
// new one is written beside it and renamed over it.
func Install(newPath, targetPath, keepPath string) error {
	src, err := os.Open(newPath)
	if err != nil {
		return fmt.Errorf("open new binary: %w", err)
	}
	defer src.Close()
	opts := selfupdate.Options{TargetPath: targetPath, OldSavePath: keepPath, TargetMode: 0o755}
	if err := selfupdate.Apply(src, opts); err != nil {
		if rerr := selfupdate.RollbackError(err); rerr != nil {
			return fmt.Errorf("install %s: %w; restoring the old binary failed too: %v", targetPath, err, rerr)
		}
		return fmt.Errorf("install %s: %w", targetPath, err)
	}
	syncDir(filepath.Dir(targetPath))
	return nil
}

// Restore puts the kept binary back at targetPath (rollback).
func Restore(targetPath, keepPath string) error {
	if _, err := os.Stat(keepPath); errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(targetPath); err == nil {
			return nil
		}
	}
	if err := os.Rename(keepPath, targetPath); err != nil {
		return fmt.Errorf("restore %s from %s: %w", targetPath, keepPath, err)
	}
	syncDir(filepath.Dir(targetPath))
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
