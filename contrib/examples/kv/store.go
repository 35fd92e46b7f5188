package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Entry is the latest write of one key. Its JSON form is a line of the
// write-ahead log; it is the same for every build, so an instance rolled back
// to an older release still reads the data dir a newer one wrote.
type Entry struct {
	Key   string `json:"key"`
	Value string `json:"value"`
	// TS is a hybrid logical clock: wall-clock nanoseconds, but always above
	// every timestamp this instance has seen, so a write made after reading
	// another one wins over it even when clocks disagree.
	TS     int64  `json:"ts"`
	Origin string `json:"origin"` // name of the instance that accepted the write
	Meta   *Meta  `json:"meta,omitempty"`
}

// Meta is what wire protocol 2 adds to a write. v1 instances never see it.
type Meta struct {
	ContentType string `json:"content_type,omitempty"`
}

// newer reports whether a replaces b under last-writer-wins. The order is
// total, so every instance converges on the same entry whatever order writes
// arrive in.
func newer(a, b Entry) bool {
	switch {
	case a.TS != b.TS:
		return a.TS > b.TS
	case a.Origin != b.Origin:
		return a.Origin > b.Origin
	case a.Value != b.Value:
		// Only two instances sharing a name get here; still converge.
		return a.Value > b.Value
	}
	// The same write: a copy relayed through a v1 instance lost its meta,
	// and the copy that still has it must win, or v2 instances would keep
	// whichever copy reached them first.
	am, bm := a.Meta != nil, b.Meta != nil
	if am != bm {
		return am
	}
	return am && a.Meta.ContentType > b.Meta.ContentType
}

// store holds the data in memory and makes every change durable in an
// append-only log (one JSON Entry a line, fsynced) before it is visible.
type store struct {
	dir string

	mu     sync.Mutex
	data   map[string]Entry
	clock  int64    // highest timestamp seen
	log    *os.File // nil once closed
	broken error    // set when a write or fsync failed
}

func openStore(dir string) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	s := &store{dir: dir, data: map[string]Entry{}}
	path := filepath.Join(dir, "kv.log")
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read log: %w", err)
	}
	for i := 1; len(b) > 0; i++ {
		line, rest, complete := bytes.Cut(b, []byte("\n"))
		if !complete {
			// A crash in the middle of an append: that write was never
			// acknowledged, so dropping it loses nothing.
			break
		}
		var e Entry
		if err := json.Unmarshal(line, &e); err != nil {
			return nil, fmt.Errorf("%s line %d is corrupt (move the file away to start empty): %w", path, i, err)
		}
		if cur, ok := s.data[e.Key]; !ok || newer(e, cur) {
			s.data[e.Key] = e
		}
		s.clock = max(s.clock, e.TS)
		b = rest
	}
	// Rewrite the log with one line per key: it stays as small as the data,
	// and a torn last line is gone before anything is appended after it.
	if err := s.compact(path); err != nil {
		return nil, fmt.Errorf("compact log: %w", err)
	}
	if s.log, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0); err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	return s, nil
}

// compact atomically replaces the log with the current data.
func (s *store) compact(path string) error {
	var buf bytes.Buffer
	for _, k := range slices.Sorted(maps.Keys(s.data)) {
		line, err := json.Marshal(s.data[k])
		if err != nil {
			return err
		}
		buf.Write(append(line, '\n'))
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(buf.Bytes())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return err
	}
	// The rename is durable only once the directory is synced.
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Put records a local write, timestamped above everything seen so far.
func (s *store) Put(key, value, origin string, meta *Meta) (Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := Entry{Key: key, Value: value, TS: max(time.Now().UnixNano(), s.clock+1), Origin: origin, Meta: meta}
	_, err := s.applyLocked([]Entry{e})
	return e, err
}

// Apply merges entries from peers by last-writer-wins and reports how many
// changed the data. One fsync covers the whole batch.
func (s *store) Apply(entries []Entry) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applyLocked(entries)
}

func (s *store) applyLocked(entries []Entry) (int, error) {
	if s.broken != nil {
		return 0, s.broken
	}
	if s.log == nil {
		return 0, errors.New("store closed")
	}
	won := map[string]Entry{}
	var buf bytes.Buffer
	for _, e := range entries {
		s.clock = max(s.clock, e.TS)
		cur, ok := won[e.Key]
		if !ok {
			cur, ok = s.data[e.Key]
		}
		if ok && !newer(e, cur) {
			continue
		}
		line, err := json.Marshal(e)
		if err != nil {
			return 0, err
		}
		buf.Write(append(line, '\n'))
		won[e.Key] = e
	}
	if len(won) == 0 {
		return 0, nil
	}
	_, err := s.log.Write(buf.Bytes())
	if err == nil {
		err = s.log.Sync()
	}
	if err != nil {
		// After a failed write or fsync the file's state is unknown, so
		// accepting more writes could acknowledge data that is not on disk.
		s.broken = fmt.Errorf("write-ahead log failed, restart the instance: %w", err)
		return 0, s.broken
	}
	for k, e := range won {
		s.data[k] = e
	}
	return len(won), nil
}

func (s *store) Get(key string) (Entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.data[key]
	return e, ok
}

// All returns every entry, sorted by key.
func (s *store) All() []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	all := make([]Entry, 0, len(s.data))
	for _, e := range s.data {
		all = append(all, e)
	}
	slices.SortFunc(all, func(a, b Entry) int { return strings.Compare(a.Key, b.Key) })
	return all
}

func (s *store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.data)
}

// Err reports a failed log, for /health.
func (s *store) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.broken
}

func (s *store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log == nil {
		return nil
	}
	err := s.log.Close()
	s.log = nil
	return err
}
