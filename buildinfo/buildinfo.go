// Package buildinfo holds the identity a peerd binary is built with: its
// version, commit and the wire-protocol range it speaks. The values are set
// at link time (see the Makefile) so that one source tree can be built at
// several versions, which is how the integration tests exercise upgrades.
//
// It is a leaf package: everything may import it, it imports nothing of peerd.
package buildinfo

import (
	"fmt"
	"runtime"
	"strconv"
)

// Set with -ldflags "-X github.com/peerd/peerd/buildinfo.Version=..." and so on.
// They are strings because -X can only set strings.
var (
	Version     = "0.0.0-dev"
	Commit      = "unknown"
	ProtocolMin = "1"
	ProtocolMax = "1"
	// HealthFault, when set at link time, makes the agent's own health check
	// fail with this text. It exists to build a "bad release" for tests of
	// the rollout's health gate and rollback; release builds leave it empty.
	HealthFault = ""
)

// Info is what `peerd version --json` prints. Its JSON keys are a contract:
// the rollout engine runs a new binary's `version --json` to check it.
type Info struct {
	Version     string `json:"version"`
	Commit      string `json:"commit"`
	GoVersion   string `json:"go_version"`
	OS          string `json:"os"`
	Arch        string `json:"arch"`
	ProtocolMin int    `json:"protocol_min"`
	ProtocolMax int    `json:"protocol_max"`
}

// Get returns this binary's build identity. It fails only when the binary was
// linked with a malformed protocol range, which `make build` prevents.
func Get() (Info, error) {
	pmin, err := strconv.Atoi(ProtocolMin)
	if err != nil {
		return Info{}, fmt.Errorf("binary built with invalid PROTOCOL_MIN %q: %w", ProtocolMin, err)
	}
	pmax, err := strconv.Atoi(ProtocolMax)
	if err != nil {
		return Info{}, fmt.Errorf("binary built with invalid PROTOCOL_MAX %q: %w", ProtocolMax, err)
	}
	if pmin < 1 || pmax < pmin {
		return Info{}, fmt.Errorf("binary built with invalid protocol range %d-%d: want 1 <= min <= max", pmin, pmax)
	}
	return Info{
		Version:     Version,
		Commit:      Commit,
		GoVersion:   runtime.Version(),
		OS:          runtime.GOOS,
		Arch:        runtime.GOARCH,
		ProtocolMin: pmin,
		ProtocolMax: pmax,
	}, nil
}
