package artifact

import (
	"bytes"
	"compress/bzip2"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/kr/binarydist"
	"github.com/minio/selfupdate"
)

// MakePatch writes a bsdiff (BSDIFF40) patch from the file at oldPath to the
// one at newPath into outPath. The patch appears at outPath only complete
// (temp file beside it, synced, renamed). It is for the operator's machine,
// not an agent: bsdiff holds both files and a suffix array in memory, and on
// a 15 MB peerd binary it takes about 8 s and 500 MB. Applying is cheap.
func MakePatch(oldPath, newPath, outPath string) (err error) {
	oldF, err := os.Open(oldPath)
	if err != nil {
		return fmt.Errorf("make patch: %w", err)
	}
	defer oldF.Close()
	newF, err := os.Open(newPath)
	if err != nil {
		return fmt.Errorf("make patch: %w", err)
	}
	defer newF.Close()
	tmp, err := os.CreateTemp(filepath.Dir(outPath), "."+filepath.Base(outPath)+".tmp-*")
	if err != nil {
		return fmt.Errorf("make patch: %w", err)
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	if err = binarydist.Diff(oldF, newF, tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("make patch from %s to %s: %w", oldPath, newPath, err)
	}
	if err = tmp.Chmod(0o644); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("make patch: %w", err)
	}
	if err = os.Rename(tmp.Name(), outPath); err != nil {
		return fmt.Errorf("make patch: %w", err)
	}
	return nil
}

// Patch is what a plan declares about a patch: the bytes the patch has and
// the bytes its result has (the full artifact's size). A patch is outside
// input, fetched from any peer, and bspatch trusts its header: a 32-byte
// patch claiming a terabyte of control data made the decoder allocate it
// (a fatal out-of-memory, which no recover catches). So the header is
// checked against these sizes before anything is allocated.
type Patch struct {
	// Name identifies the patch in errors (e.g. its digest).
	Name string
	// Size is the patch's declared size: at most this much is read.
	Size int64
	// ResultSize is the declared size of the result, the artifact's.
	ResultSize int64
}

// ErrBadPatch is wrapped by every refusal of a patch's content, so that a
// caller can fall back to the full artifact rather than retry the fetch.
var ErrBadPatch = errors.New("bad patch")

// MaxPatchResult bounds what a patch may build: the result is held in
// memory while it is made. It is the upload limit of the control API.
const MaxPatchResult = 1 << 30

const (
	bsdiffMagic      = "BSDIFF40"
	bsdiffHeaderSize = 32
	bsdiffCtrlSize   = 24
	// maxEmptyControls bounds the control triples that add and copy
	// nothing: bsdiff never needs many, and a patch made of millions of
	// them would keep the decoder busy for nothing.
	maxEmptyControls = 1 << 12
)

// patchHeader is a bsdiff patch's header: the compressed lengths of the
// control and diff blocks (the extra block is the rest) and the result's
// size.
type patchHeader struct {
	ctrlLen, diffLen, newSize int64
}

// offtin decodes bsdiff's 8-byte sign-magnitude little-endian integer.
func offtin(b []byte) int64 {
	y := int64(b[0]) | int64(b[1])<<8 | int64(b[2])<<16 | int64(b[3])<<24 |
		int64(b[4])<<32 | int64(b[5])<<40 | int64(b[6])<<48 | int64(b[7]&0x7f)<<56
	if b[7]&0x80 != 0 {
		y = -y
	}
	return y
}

// CheckPatchHeader checks a patch's first bytes against what the plan
// declares: the bsdiff magic, block lengths that fit in the patch's size,
// and a result of exactly the artifact's size.
func CheckPatchHeader(head []byte, p Patch) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w %s: %s", ErrBadPatch, p.Name, fmt.Sprintf(format, a...))
	}
	_, err := checkPatchHeader(head, p, bad)
	return err
}

func checkPatchHeader(head []byte, p Patch, bad func(string, ...any) error) (patchHeader, error) {
	switch {
	case p.Size < bsdiffHeaderSize:
		return patchHeader{}, bad("the plan declares %d bytes, less than a bsdiff header (%d): make it again with 'peerd mkpatch'", p.Size, bsdiffHeaderSize)
	case p.ResultSize <= 0 || p.ResultSize > MaxPatchResult:
		return patchHeader{}, bad("the plan declares a result of %d bytes: want 1 to %d", p.ResultSize, MaxPatchResult)
	case p.Size > p.ResultSize:
		return patchHeader{}, bad("the patch (%d bytes) is larger than the artifact it builds (%d bytes): ship the full artifact instead", p.Size, p.ResultSize)
	case len(head) < bsdiffHeaderSize:
		return patchHeader{}, bad("only %d bytes, less than a bsdiff header (%d): is it complete?", len(head), bsdiffHeaderSize)
	case string(head[:8]) != bsdiffMagic:
		return patchHeader{}, bad("it does not start with %q: it is not a bsdiff patch (make one with 'peerd mkpatch')", bsdiffMagic)
	}
	h := patchHeader{ctrlLen: offtin(head[8:16]), diffLen: offtin(head[16:24]), newSize: offtin(head[24:32])}
	room := p.Size - bsdiffHeaderSize
	switch {
	case h.ctrlLen < 0 || h.diffLen < 0 || h.ctrlLen > room || h.diffLen > room-h.ctrlLen:
		return patchHeader{}, bad("its header claims blocks of %d and %d bytes, which do not fit in its %d bytes: it is corrupt or not the plan's patch", h.ctrlLen, h.diffLen, p.Size)
	case h.newSize != p.ResultSize:
		return patchHeader{}, bad("its header claims a result of %d bytes, but the plan's artifact has %d: it is not a patch to this artifact", h.newSize, p.ResultSize)
	}
	return h, nil
}

// checkControls decodes a patch's control block, as bspatch will, and
// refuses what would make bspatch panic or spin: negative or overflowing
// lengths, lengths past the result's end, and runs of triples that make no
// progress. It reads no more of the block than bspatch would.
func checkControls(ctrl []byte, h patchHeader, bad func(string, ...any) error) error {
	r := bzip2.NewReader(bytes.NewReader(ctrl))
	var buf [bsdiffCtrlSize]byte
	empty := 0
	for newpos := int64(0); newpos < h.newSize; {
		if _, err := io.ReadFull(r, buf[:]); err != nil {
			return bad("its control block ends before the result is complete (%d of %d bytes): %v", newpos, h.newSize, err)
		}
		add, cp := offtin(buf[0:8]), offtin(buf[8:16])
		if add < 0 || cp < 0 || add > h.newSize-newpos || cp > h.newSize-newpos-add {
			return bad("a control entry (add %d, copy %d at byte %d) runs outside the %d-byte result: it is corrupt", add, cp, newpos, h.newSize)
		}
		if add == 0 && cp == 0 {
			if empty++; empty > maxEmptyControls {
				return bad("more than %d control entries make no progress: it is corrupt", maxEmptyControls)
			}
		}
		newpos += add + cp
	}
	return nil
}

// ApplyPatch applies a bsdiff patch to the file at oldPath and writes the
// result to w. It reads at most p.Size bytes of patch, refuses a patch
// whose header or control entries do not fit the declared sizes before
// allocating anything for it, and turns a panic of the decoder into an
// error naming the patch. Every refusal wraps ErrBadPatch. The result is
// untrusted until its digest is checked: write it through Store.Put with
// the full artifact's digest.
func ApplyPatch(oldPath string, patch io.Reader, w io.Writer, p Patch) (err error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("apply patch %s to %s: %w: %s", p.Name, oldPath, ErrBadPatch, fmt.Sprintf(format, a...))
	}
	// Patches are small next to what they build; reading one whole (never
	// more than declared) lets every length be checked before bspatch
	// trusts it.
	var head [bsdiffHeaderSize]byte
	n, err := io.ReadFull(patch, head[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return fmt.Errorf("apply patch %s: read: %w", p.Name, err)
	}
	h, err := checkPatchHeader(head[:n], p, bad)
	if err != nil {
		return err
	}
	data := make([]byte, bsdiffHeaderSize, p.Size)
	copy(data, head[:])
	rest, err := io.ReadAll(io.LimitReader(patch, p.Size-bsdiffHeaderSize))
	if err != nil {
		return fmt.Errorf("apply patch %s: read: %w", p.Name, err)
	}
	data = append(data, rest...)
	if int64(len(data)) != p.Size {
		return bad("it has %d bytes, the plan declares %d: is it complete?", len(data), p.Size)
	}
	if err := checkControls(data[bsdiffHeaderSize:bsdiffHeaderSize+h.ctrlLen], h, bad); err != nil {
		return err
	}
	old, err := os.Open(oldPath)
	if err != nil {
		return fmt.Errorf("apply patch %s: %w", p.Name, err)
	}
	defer old.Close()
	defer func() {
		if r := recover(); r != nil {
			err = bad("the bsdiff decoder failed on it (%v): it is corrupt; nodes fall back to the full artifact", r)
		}
	}()
	if err := selfupdate.NewBSDiffPatcher().Patch(old, w, bytes.NewReader(data)); err != nil {
		return bad("%v", err)
	}
	return nil
}
