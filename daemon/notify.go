package daemon

import (
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// Notifier tells a supervisor about the agent's state (systemd's sd_notify
// protocol). Every method is a no-op when there is no supervisor listening.
type Notifier interface {
	Notify(state string) error
	// WatchdogInterval is how often the supervisor expects WATCHDOG=1, or 0.
	WatchdogInterval() time.Duration
}

// SystemdNotifier speaks sd_notify over $NOTIFY_SOCKET.
type SystemdNotifier struct{}

// Notify sends a state such as "READY=1" or "STATUS=...".
func (SystemdNotifier) Notify(state string) error {
	_, err := sd.SdNotify(false, state)
	return err
}

// WatchdogInterval reads $WATCHDOG_USEC (for this PID).
func (SystemdNotifier) WatchdogInterval() time.Duration {
	d, err := sd.SdWatchdogEnabled(false)
	if err != nil {
		return 0
	}
	return d
}
