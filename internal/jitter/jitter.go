// Package jitter is peerd's one retry pace: waits that double from a first
// to a most, each drawn at random from the upper half of its step, so that
// nodes that failed together (a restarted fleet rejoining, requesters racing
// for one wave's lease, an application's crash on every node) do not retry
// in lockstep.
//
// It is github.com/cenkalti/backoff/v5's ExponentialBackOff, set up so; it
// only computes waits and never reads the time, so whoever waits does it
// with its own clock (an injected Fake, or a synctest bubble's).
package jitter

import (
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Backoff returns waits whose steps are first, 2·first, 4·first, … up to
// most; each wait is drawn uniformly from [step/2, step]. Reset starts over
// at first. Like the library's, it is not safe for concurrent use.
func Backoff(first, most time.Duration) *backoff.ExponentialBackOff {
	// The library draws from step·(1±f) around a step that doubles from
	// InitialInterval to MaxInterval: centred on 3/4 of our step with
	// f = 1/3, that is [step/2, step].
	return &backoff.ExponentialBackOff{
		InitialInterval:     first * 3 / 4,
		RandomizationFactor: 1.0 / 3,
		Multiplier:          2,
		MaxInterval:         most * 3 / 4,
	}
}
