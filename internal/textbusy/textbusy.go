// Package textbusy runs a binary that was just written despite ETXTBSY.
//
// When another goroutine forks while a file is still open for writing, the
// child holds that descriptor until it execs (golang/go#22315), and exec of
// the file fails with "text file busy" for that brief window. Everything
// peerd runs right after writing it (a staged artifact's preflight, the
// re-exec into an installed binary) goes through Retry.
package textbusy

import (
	"context"
	"errors"
	"syscall"
	"time"
)

// attempts bounds the retries; with the growing pause they span about 2 s.
const attempts = 20

// Retry calls run until it fails with something other than ETXTBSY, ctx
// ends, or the attempts run out, and returns run's last error.
func Retry(ctx context.Context, run func() error) error {
	var err error
	for attempt := 1; ; attempt++ {
		err = run()
		if !errors.Is(err, syscall.ETXTBSY) || attempt == attempts {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt) * 10 * time.Millisecond):
		}
	}
}
