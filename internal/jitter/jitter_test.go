package jitter

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// TestBackoffSteps: every wait lies in the upper half of its step, the
// steps double from first and stop at most, and Reset starts over.
func TestBackoffSteps(t *testing.T) {
	const first, most = 40 * time.Millisecond, time.Second
	steps := []time.Duration{40, 80, 160, 320, 640, 1000, 1000}
	for i := range steps {
		steps[i] *= time.Millisecond
	}
	var lowest, highest [7]time.Duration
	for range 500 {
		b := Backoff(first, most)
		for round := range 2 {
			for i, step := range steps {
				d := b.NextBackOff()
				// A nanosecond over: the library rounds its draw up.
				assert.True(t, d >= step/2 && d <= step+time.Nanosecond, "round %d wait %d: %s not in [%s, %s]", round, i, d, step/2, step)
				if lowest[i] == 0 || d < lowest[i] {
					lowest[i] = d
				}
				highest[i] = max(highest[i], d)
			}
			b.Reset()
		}
	}
	for i, step := range steps {
		// Spread over the half: not a constant, not one end of it.
		assert.Less(t, lowest[i], step*6/10, "wait %d", i)
		assert.Greater(t, highest[i], step*9/10, "wait %d", i)
	}
}
