package clock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestOffsetShiftsNowNotTimers(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := NewFake(start)
	c := Offset(f, 365*24*time.Hour)
	assert.Equal(t, start.AddDate(1, 0, 0), c.Now())
	assert.Equal(t, time.Duration(0), c.Since(c.Now()))
	assert.Equal(t, time.Hour, c.Until(c.Now().Add(time.Hour)))

	timer := c.NewTimer(time.Second)
	f.Advance(999 * time.Millisecond)
	select {
	case <-timer.Chan():
		t.Fatal("a skewed clock's timer fired early")
	default:
	}
	f.Advance(time.Millisecond)
	select {
	case <-timer.Chan():
	default:
		t.Fatal("a skewed clock's timer did not fire after its duration")
	}
	assert.Same(t, Clock(f), Offset(f, 0), "no offset: the clock itself")
}
