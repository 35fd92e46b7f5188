package durable

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type doc struct {
	N int `json:"n"`
}

func decodeInto(d *doc) func([]byte) error {
	return func(b []byte) error {
		*d = doc{}
		return json.Unmarshal(b, d)
	}
}

func TestWriteGenerationsKeepsThePrevious(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	for n := 1; n <= 3; n++ {
		require.NoError(t, WriteGenerations(path, []byte(`{"n":`+string(rune('0'+n))+`}`), 0o600))
	}
	cur, err := os.ReadFile(path)
	require.NoError(t, err)
	prev, err := os.ReadFile(path + PrevSuffix)
	require.NoError(t, err)
	assert.JSONEq(t, `{"n":3}`, string(cur))
	assert.JSONEq(t, `{"n":2}`, string(prev))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 2, "the file and its previous generation, no temp file")
	fi, err := os.Stat(path + PrevSuffix)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

// TestReadGenerations is the table of what a reader finds: the current
// generation, the previous one when the current is missing, empty or
// torn, and ErrCorrupt (naming both) when neither decodes.
func TestReadGenerations(t *testing.T) {
	for _, tc := range []struct {
		name       string
		cur, prev  *string // nil: no such file
		wantGen    Generation
		wantN      int
		wantErr    []string
		refusedCur string
	}{
		{name: "neither", wantGen: None},
		{name: "current", cur: ptr(`{"n":2}`), prev: ptr(`{"n":1}`), wantGen: Current, wantN: 2},
		{name: "current, no previous", cur: ptr(`{"n":2}`), wantGen: Current, wantN: 2},
		{name: "empty current", cur: ptr(``), prev: ptr(`{"n":1}`), wantGen: Previous, wantN: 1, refusedCur: "state.json is not usable: the file is empty"},
		{name: "truncated current", cur: ptr(`{"n":`), prev: ptr(`{"n":1}`), wantGen: Previous, wantN: 1, refusedCur: "unexpected end of JSON input"},
		{name: "missing current", prev: ptr(`{"n":1}`), wantGen: Previous, wantN: 1},
		{name: "both bad", cur: ptr(``), prev: ptr(`{`), wantErr: []string{"state.json is not usable: the file is empty", "and so is its previous generation", "state.json.prev is not usable"}},
		{name: "bad, no previous", cur: ptr(`nul`), wantErr: []string{"state.json is not usable", "it has no previous generation"}},
		{name: "missing, bad previous", prev: ptr(`x`), wantErr: []string{"state.json is missing and its previous generation is not usable"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "state.json")
			if tc.cur != nil {
				require.NoError(t, os.WriteFile(path, []byte(*tc.cur), 0o600))
			}
			if tc.prev != nil {
				require.NoError(t, os.WriteFile(path+PrevSuffix, []byte(*tc.prev), 0o600))
			}
			var d doc
			r, err := ReadGenerations(path, decodeInto(&d))
			if len(tc.wantErr) > 0 {
				require.ErrorIs(t, err, ErrCorrupt)
				for _, s := range tc.wantErr {
					assert.ErrorContains(t, err, s)
				}
				moved, err := MoveAside(path)
				require.NoError(t, err)
				assert.NotEmpty(t, moved)
				r, err = ReadGenerations(path, decodeInto(&d))
				require.NoError(t, err, "after MoveAside the file starts afresh")
				assert.Equal(t, None, r.Gen)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantGen, r.Gen)
			assert.Equal(t, tc.wantN, d.N)
			if tc.refusedCur != "" {
				assert.ErrorContains(t, r.Refused, tc.refusedCur)
			} else {
				assert.NoError(t, r.Refused)
			}
		})
	}
	t.Run("an unreadable file is not taken for a corrupt one", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "state.json")
		require.NoError(t, os.Mkdir(path, 0o700)) // reading a directory fails
		_, err := ReadGenerations(path, func([]byte) error { return nil })
		require.Error(t, err)
		assert.False(t, errors.Is(err, ErrCorrupt))
	})
}

func ptr(s string) *string { return &s }
