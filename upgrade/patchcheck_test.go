package upgrade

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/internal/identity"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/peerd/peerd/upgrade/versions"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// builds returns two related byte strings, like two builds of one binary.
func builds(size int) (old, new []byte) {
	r := rand.New(rand.NewPCG(3, 4))
	old = make([]byte, size)
	for i := range old {
		old[i] = byte(r.UintN(256))
	}
	new = bytes.Clone(old)
	for i := 0; i < len(new); i += 1000 {
		new[i] ^= 0x5a
	}
	return old, append(new, "v2"...)
}

func hexSHA(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestOriginChecksThePatch: the origin applies a plan's patch to its own
// binary of the patch's base version (the running one, or one its version
// store keeps) and refuses the trigger unless the result is the artifact;
// where it holds no such binary it still checks the patch's header against
// the plan's sizes. Before this check the origin only reported the patch's
// size, and every node of the base version met the bad patch in prepare.
func TestOriginChecksThePatch(t *testing.T) {
	dir := t.TempDir()
	v1, v2 := builds(64 << 10)
	other := bytes.Clone(v2) // another build of the same size
	other[100] ^= 1
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, b, 0o755))
		return p
	}
	v1Path, v2Path, otherPath := write("v1", v1), write("v2", v2), write("other", other)
	mk := func(from, to string) []byte {
		out := filepath.Join(dir, "patch")
		require.NoError(t, artifact.MakePatch(from, to, out))
		b, err := os.ReadFile(out)
		require.NoError(t, err)
		return b
	}
	good := mk(v1Path, v2Path)
	toOther := mk(v1Path, otherPath)
	huge := append([]byte("BSDIFF40"), make([]byte, 24)...)
	huge[15] = 0x40 // a control block of 2^62 bytes
	huge = append(huge, bytes.Repeat([]byte{0}, 64)...)

	for _, tc := range []struct {
		name    string
		running string // the origin's version
		stored  bool   // its version store keeps 1.0.0
		patch   []byte
		want    string
		wantErr string
	}{
		{name: "runs the base: builds the artifact", running: "1.0.0", patch: good, want: "applied to this node's running binary it builds the artifact"},
		{name: "runs the base: builds something else", running: "1.0.0", patch: toOther, wantErr: "builds sha256"},
		{name: "runs the base: huge header", running: "1.0.0", patch: huge, wantErr: "do not fit"},
		{name: "keeps the base", running: "2.0.0", stored: true, patch: good, want: "applied to this node's stored binary it builds the artifact"},
		{name: "keeps the base: builds something else", running: "2.0.0", stored: true, patch: toOther, wantErr: "builds sha256"},
		{name: "no base here: header checked", running: "1.5.0", patch: good, want: "its header fits the plan; not applied here"},
		{name: "no base here: huge header", running: "1.5.0", patch: huge, wantErr: "do not fit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := t.TempDir()
			running := v1Path
			if tc.running != "1.0.0" {
				running = v2Path
			}
			store := versions.New(filepath.Join(data, "versions"), "peerd", running)
			if tc.stored {
				require.NoError(t, store.Install(v1Path, "1.0.0", running))
				require.NoError(t, store.Install(v2Path, "2.0.0", filepath.Join(data, "versions", "1.0.0", "peerd")))
			}
			e, err := New(Config{DataDir: data, Identity: identity.New(), Target: &Self{Executable: running, Build: buildinfo.Info{Version: tc.running}, Store: store}}, nil)
			require.NoError(t, err)
			psha, psize, err := e.store.Put(bytes.NewReader(tc.patch), "")
			require.NoError(t, err)
			p, err := plan.Compile(plan.Plan{
				Target: TargetPeerd, Version: "2.0.0",
				Artifact: plan.Artifact{SHA256: hexSHA(v2), Size: int64(len(v2))},
				Patch:    &plan.Patch{FromVersion: "1.0.0", Artifact: plan.Artifact{SHA256: psha, Size: psize}},
				Options:  plan.Options{Batch: 1, Deadline: time.Minute},
				Members:  []plan.Member{{Name: "a"}, {Name: "b"}}, Origin: "a",
			})
			require.NoError(t, err)
			line, err := e.checkPatch(p)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				assert.ErrorContains(t, err, short(psha), "the error names the patch")
				return
			}
			require.NoError(t, err)
			assert.Contains(t, line, tc.want)
		})
	}
}
