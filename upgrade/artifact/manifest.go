package artifact

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode"
)

// ErrBadSignature is wrapped by every error that means "this signature does
// not vouch for these bytes as this artifact": no trusted keys, a malformed
// signature or manifest, an unknown key, bytes or trusted comment that do not
// match, or a manifest naming another artifact. Callers branch on it to refuse
// the artifact rather than retry the fetch.
var ErrBadSignature = errors.New("bad signature")

// commentPrefix opens every peerd manifest, so that a signature made for some
// other purpose with the same key is never mistaken for one.
const commentPrefix = "peerd-artifact"

// Manifest is what a signature vouches for: more than the bytes, so that a
// validly signed binary of another version or platform cannot be substituted.
// It travels in the minisign signature's trusted comment.
type Manifest struct {
	Target  string // "peerd" or an application name
	Version string
	OS      string
	Arch    string
	SHA256  string // lowercase hex of the artifact bytes
	Size    int64
	// Rollback makes the signature a rollback statement: the release key's
	// consent that nodes running a newer version go back to this one. A
	// plain release signature (which anyone can replay from a public
	// release) never allows a node to go down in version.
	Rollback bool
	// PieceRoot and PieceSize, when set, bind the artifact's piece list
	// (piece.List.Root) into the signature, so that a node can tell the
	// plan's list is the release's before it fetches a piece. Older
	// signatures have neither, and still verify.
	PieceRoot string
	PieceSize int64
}

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// TrustedComment encodes m as a minisign trusted comment, e.g.
// "peerd-artifact target=peerd version=2.0.0 os=linux arch=amd64 sha256=<hex> size=123".
// Fields are space-separated key=value pairs, so values must not contain
// white space; Sign refuses a manifest whose comment would not parse back.
func (m Manifest) TrustedComment() string {
	s := fmt.Sprintf("%s target=%s version=%s os=%s arch=%s sha256=%s size=%d",
		commentPrefix, m.Target, m.Version, m.OS, m.Arch, m.SHA256, m.Size)
	if m.Rollback {
		s += " rollback=1"
	}
	if m.PieceRoot != "" {
		s += fmt.Sprintf(" pieces=%s piece_size=%d", m.PieceRoot, m.PieceSize)
	}
	return s
}

// manifestKeys are the fields every manifest must carry, in TrustedComment's order.
var manifestKeys = []string{"target", "version", "os", "arch", "sha256", "size"}

// ParseTrustedComment is TrustedComment's inverse. Errors wrap ErrBadSignature
// and name what is malformed. Keys it does not know are ignored, so that a
// newer signer may add fields without older agents refusing its artifacts;
// a repeated key is refused, since it would make the manifest ambiguous.
func ParseTrustedComment(s string) (Manifest, error) {
	fields := strings.Fields(s)
	if len(fields) == 0 || fields[0] != commentPrefix {
		return Manifest{}, fmt.Errorf("%w: trusted comment %.120q is not a peerd artifact manifest (it must start with %q; sign with 'peerd sign')",
			ErrBadSignature, s, commentPrefix)
	}
	var m Manifest
	seen := map[string]bool{}
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return Manifest{}, fmt.Errorf("%w: manifest field %q is not key=value", ErrBadSignature, f)
		}
		if seen[k] {
			return Manifest{}, fmt.Errorf("%w: manifest names %s twice", ErrBadSignature, k)
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
			if err != nil || n < 0 {
				return Manifest{}, fmt.Errorf("%w: manifest size %q is not a byte count", ErrBadSignature, v)
			}
			m.Size = n
		case "rollback":
			if v != "1" {
				return Manifest{}, fmt.Errorf("%w: manifest rollback %q: want 1", ErrBadSignature, v)
			}
			m.Rollback = true
		case "pieces":
			m.PieceRoot = v
		case "piece_size":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				return Manifest{}, fmt.Errorf("%w: manifest piece_size %q is not a byte count", ErrBadSignature, v)
			}
			m.PieceSize = n
		}
	}
	var missing []string
	for _, k := range manifestKeys {
		if !seen[k] {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return Manifest{}, fmt.Errorf("%w: manifest lacks %s", ErrBadSignature, strings.Join(missing, ", "))
	}
	if err := m.validate(); err != nil {
		return Manifest{}, fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	return m, nil
}

// validate reports every field that is empty or would not survive the round
// trip through TrustedComment, in one line.
func (m Manifest) validate() error {
	var errs []string
	for _, f := range []struct{ name, v string }{
		{"target", m.Target}, {"version", m.Version}, {"os", m.OS}, {"arch", m.Arch},
	} {
		switch {
		case f.v == "":
			errs = append(errs, fmt.Sprintf("manifest %s is empty", f.name))
		case strings.IndexFunc(f.v, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
			errs = append(errs, fmt.Sprintf("manifest %s %q contains white space", f.name, f.v))
		}
	}
	if !sha256Hex.MatchString(m.SHA256) {
		errs = append(errs, fmt.Sprintf("manifest sha256 %q is not 64 lowercase hex digits", m.SHA256))
	}
	if m.Size < 0 {
		errs = append(errs, fmt.Sprintf("manifest size %d is negative", m.Size))
	}
	switch {
	case m.PieceRoot == "" && m.PieceSize != 0:
		errs = append(errs, "manifest has a piece_size but no pieces root")
	case m.PieceRoot != "" && !sha256Hex.MatchString(m.PieceRoot):
		errs = append(errs, fmt.Sprintf("manifest pieces root %q is not 64 lowercase hex digits", m.PieceRoot))
	case m.PieceRoot != "" && m.PieceSize <= 0:
		errs = append(errs, "manifest has a pieces root but no piece_size")
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// Check returns an error naming each field of m that differs from want; empty
// fields (and a zero Size) in want are not checked. The error wraps
// ErrBadSignature: a signature over another artifact vouches for nothing here.
func (m Manifest) Check(want Manifest) error {
	var diffs []string
	cmp := func(name, got, want string) {
		if want != "" && got != want {
			diffs = append(diffs, fmt.Sprintf("signed %s is %q, want %q", name, got, want))
		}
	}
	cmp("target", m.Target, want.Target)
	cmp("version", m.Version, want.Version)
	cmp("os", m.OS, want.OS)
	cmp("arch", m.Arch, want.Arch)
	cmp("sha256", m.SHA256, want.SHA256)
	if want.Size != 0 && m.Size != want.Size {
		diffs = append(diffs, fmt.Sprintf("signed size is %d, want %d", m.Size, want.Size))
	}
	// A signature without a piece list vouches for the bytes alone (the
	// plan's list is then the origin's word, checked piece by piece and by
	// the final sha256); one with a list must name the plan's.
	if m.PieceRoot != "" && want.PieceRoot != "" && (m.PieceRoot != want.PieceRoot || m.PieceSize != want.PieceSize) {
		diffs = append(diffs, fmt.Sprintf("signed piece list is %.12s (pieces of %d), the plan's is %.12s (pieces of %d)", m.PieceRoot, m.PieceSize, want.PieceRoot, want.PieceSize))
	}
	if len(diffs) > 0 {
		// One line: operators see it as the reason a rollout was refused.
		return fmt.Errorf("%w: %s", ErrBadSignature, strings.Join(diffs, "; "))
	}
	return nil
}
