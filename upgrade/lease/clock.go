package lease

import (
	"sync"
	"time"
)

// Clock tells the time. Grants expire by it, so tests inject a FakeClock
// and never sleep.
type Clock interface{ Now() time.Time }

// RealClock is the wall clock. Expiry is compared against wall time that was
// persisted, so it must survive a restart: a monotonic clock would not.
type RealClock struct{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// FakeClock is a clock tests move by hand. It is safe for concurrent use,
// so one clock can drive a whole in-process cluster.
type FakeClock struct {
	mu  sync.Mutex
	now time.Time
}

// NewFakeClock returns a clock stopped at t.
func NewFakeClock(t time.Time) *FakeClock { return &FakeClock{now: t} }

// Now returns the clock's time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
