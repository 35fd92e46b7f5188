// Package clock is the one source of time for peerd's timing decisions:
// the rollout loop's wakeups, the health gate's dwell, lease expiry and the
// supervisor's backoff. Code that decides by time takes a Clock, so that
// tests step a Fake instead of sleeping, and the fleet harness can give
// each node a clock of its own (skewed by hours, or a year).
//
// It is github.com/jonboulle/clockwork under peerd's names: a well-kept
// fake with timers, tickers and BlockUntil saves writing and testing one.
package clock

import (
	"time"

	"github.com/jonboulle/clockwork"
)

// Clock tells the time and makes timers. Real and Fake implement it.
type Clock = clockwork.Clock

// Timer and Ticker are what Clock makes; their channel is Chan().
type (
	Timer  = clockwork.Timer
	Ticker = clockwork.Ticker
)

// Fake is a clock that moves only when told to (Advance); BlockUntil waits
// until the code under test is waiting on it.
type Fake = clockwork.FakeClock

// Real is the system clock.
func Real() Clock { return clockwork.NewRealClock() }

// NewFake returns a Fake stopped at t.
func NewFake(t time.Time) *Fake { return clockwork.NewFakeClockAt(t) }

// Offset returns c shifted by d: Now is d ahead (behind, when negative);
// timers and tickers run at c's pace. It models a node whose wall clock is
// wrong, which must never break a decision that should not depend on it.
func Offset(c Clock, d time.Duration) Clock {
	if d == 0 {
		return c
	}
	return offset{c, d}
}

type offset struct {
	Clock
	d time.Duration
}

func (o offset) Now() time.Time                  { return o.Clock.Now().Add(o.d) }
func (o offset) Since(t time.Time) time.Duration { return o.Now().Sub(t) }
func (o offset) Until(t time.Time) time.Duration { return t.Sub(o.Now()) }
