package artifact

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/peerd/peerd/buildinfo"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPreflight(t *testing.T) {
	self, err := os.Executable()
	require.NoError(t, err)
	want := buildinfo.Info{Version: "2.0.0", Commit: "abc123", GoVersion: "go1.26.0", OS: "linux", Arch: "amd64", ProtocolMin: 1, ProtocolMax: 2}
	goodJSON, err := json.Marshal(want)
	require.NoError(t, err)

	for _, tc := range []struct {
		name      string
		env       map[string]string
		timeout   time.Duration
		wantErr   []string // substrings; none means success
		wantQuick bool
	}{
		{name: "prints build info", env: map[string]string{envVersionJSON: string(goodJSON)}},
		{name: "exits non-zero", env: map[string]string{envVersionJSON: string(goodJSON), envExit: "3"},
			wantErr: []string{"exit status 3", "refusing to start: | bad config"}},
		{name: "prints garbage", env: map[string]string{envVersionJSON: "Usage: peerd [flags]"},
			wantErr: []string{"not peerd build info", "Usage: peerd"}},
		{name: "prints other JSON", env: map[string]string{envVersionJSON: `{"name":"something else"}`},
			wantErr: []string{"names no version"}},
		{name: "hangs past the context", env: map[string]string{envVersionJSON: string(goodJSON), envSleep: "1m"},
			timeout: 200 * time.Millisecond, wantErr: []string{"did not finish in time"}, wantQuick: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			ctx := t.Context()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			start := time.Now()
			got, err := Preflight(ctx, self)
			if tc.wantQuick {
				assert.Less(t, time.Since(start), 5*time.Second, "preflight should stop when its context ends")
			}
			if len(tc.wantErr) == 0 {
				require.NoError(t, err)
				assert.Equal(t, want, got)
				return
			}
			require.Error(t, err)
			for _, s := range tc.wantErr {
				assert.Contains(t, err.Error(), s)
			}
			assert.NotContains(t, err.Error(), "\n", "one line for the operator")
		})
	}

	t.Run("not executable", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "peerd")
		require.NoError(t, os.WriteFile(p, []byte("not a program"), 0o644))
		_, err := Preflight(t.Context(), p)
		assert.ErrorContains(t, err, "permission denied")
		_, err = Preflight(t.Context(), filepath.Join(t.TempDir(), "missing"))
		assert.ErrorContains(t, err, "no such file")
	})
}

func TestCheckBuild(t *testing.T) {
	good := buildinfo.Info{Version: "2.0.0", OS: "linux", Arch: "amd64", ProtocolMin: 2, ProtocolMax: 3}
	for _, tc := range []struct {
		name    string
		edit    func(*buildinfo.Info)
		active  int
		wantErr []string
	}{
		{name: "matches", active: 2},
		{name: "matches top of range", active: 3},
		{name: "no active protocol yet", active: 0},
		{name: "other version", edit: func(i *buildinfo.Info) { i.Version = "1.9.0" }, active: 2,
			wantErr: []string{"reports version 1.9.0, not 2.0.0", "check that --artifact"}},
		{name: "other arch", edit: func(i *buildinfo.Info) { i.Arch = "arm64" }, active: 2,
			wantErr: []string{"is for linux/arm64, this node is linux/amd64", "use the artifact built for linux/amd64"}},
		{name: "other os", edit: func(i *buildinfo.Info) { i.OS = "darwin" }, active: 2,
			wantErr: []string{"is for darwin/amd64"}},
		{name: "drops the active protocol", active: 1,
			wantErr: []string{"speaks protocol 2-3, which does not include the cluster's active protocol 1", "upgrade through a version that speaks both"}},
		{name: "too new for the cluster", active: 4, wantErr: []string{"active protocol 4"}},
		{name: "invalid range", edit: func(i *buildinfo.Info) { i.ProtocolMin, i.ProtocolMax = 3, 2 }, active: 2,
			wantErr: []string{"invalid protocol range 3-2"}},
		{name: "everything wrong at once", edit: allWrong, active: 2,
			wantErr: []string{"version 0.1", "windows/386", "active protocol 2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info := good
			if tc.edit != nil {
				tc.edit(&info)
			}
			err := CheckBuild(info, "2.0.0", "linux", "amd64", tc.active)
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

func allWrong(i *buildinfo.Info) {
	*i = buildinfo.Info{Version: "0.1", OS: "windows", Arch: "386", ProtocolMin: 1, ProtocolMax: 1}
}

// TestPreflightThisBuild checks the fake against the real contract: what
// buildinfo.Get reports for this platform passes CheckBuild.
func TestPreflightThisBuild(t *testing.T) {
	info, err := buildinfo.Get()
	require.NoError(t, err)
	b, err := json.Marshal(info)
	require.NoError(t, err)
	t.Setenv(envVersionJSON, string(b))
	self, err := os.Executable()
	require.NoError(t, err)
	got, err := Preflight(t.Context(), self)
	require.NoError(t, err)
	assert.NoError(t, CheckBuild(got, info.Version, runtime.GOOS, runtime.GOARCH, info.ProtocolMax))
}
