package textbusy

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestRetry(t *testing.T) {
	calls := 0
	err := Retry(context.Background(), func() error {
		calls++
		if calls < 3 {
			return fmt.Errorf("fork/exec x: %w", syscall.ETXTBSY)
		}
		return nil
	})
	assert.NoError(t, err)
	assert.Equal(t, 3, calls, "retried while the file was busy")

	calls = 0
	other := errors.New("exec format error")
	assert.Equal(t, other, Retry(context.Background(), func() error { calls++; return other }))
	assert.Equal(t, 1, calls, "other errors are not retried")

	calls = 0
	err = Retry(context.Background(), func() error { calls++; return syscall.ETXTBSY })
	assert.ErrorIs(t, err, syscall.ETXTBSY)
	assert.Equal(t, attempts, calls, "gives up after its bound")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls = 0
	assert.ErrorIs(t, Retry(ctx, func() error { calls++; return syscall.ETXTBSY }), syscall.ETXTBSY)
	assert.Equal(t, 1, calls, "a cancelled context stops the retries")
}
