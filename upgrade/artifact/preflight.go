package artifact

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/internal/textbusy"
)

// preflightTimeout bounds `version --json` whatever the caller's context: a
// binary that cannot print its version in this long is not one to install.
const preflightTimeout = 10 * time.Second

// Output beyond these is dropped: a broken binary must not fill our memory.
const (
	maxPreflightStdout = 64 << 10
	maxPreflightStderr = 4 << 10
)

// Preflight runs `binaryPath version --json`, bounded by ctx and by a 10 s
// timeout of its own (and as long again for its output), and decodes the buildinfo.Info it prints. Errors include
// the command's stderr. It executes binaryPath: call it only on a binary whose
// digest and signature were verified.
func Preflight(ctx context.Context, binaryPath string) (buildinfo.Info, error) {
	ctx, cancel := context.WithTimeout(ctx, preflightTimeout)
	defer cancel()
	var stdout, stderr *capWriter
	err := textbusy.Retry(ctx, func() error {
		stdout = &capWriter{max: maxPreflightStdout}
		stderr = &capWriter{max: maxPreflightStderr}
		cmd := exec.CommandContext(ctx, binaryPath, "version", "--json")
		cmd.Stdout, cmd.Stderr = stdout, stderr
		// A child that leaves a grandchild holding our pipes must not hang
		// us; but on a starved machine the goroutines that drain the pipes
		// may wait seconds for a core after the child exited, and at 1 s
		// one of 100 agents on two cores failed its preflight with
		// ErrWaitDelay and halted the rollout.
		cmd.WaitDelay = preflightTimeout
		return cmd.Run()
	})
	if err != nil {
		what := err.Error()
		if ctx.Err() != nil {
			what = fmt.Sprintf("did not finish: %v", context.Cause(ctx))
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				what = "did not finish in time"
			}
		}
		return buildinfo.Info{}, fmt.Errorf("preflight: %s version --json: %s%s", binaryPath, what, stderrTail(stderr))
	}
	var info buildinfo.Info
	if err := json.Unmarshal(stdout.buf.Bytes(), &info); err != nil {
		return buildinfo.Info{}, fmt.Errorf("preflight: %s version --json printed %.120q, not peerd build info (%v)%s: is it a peerd binary?",
			binaryPath, stdout.buf.String(), err, stderrTail(stderr))
	}
	if info.Version == "" {
		return buildinfo.Info{}, fmt.Errorf("preflight: %s version --json printed %.120q, which names no version: is it a peerd binary?",
			binaryPath, stdout.buf.String())
	}
	return info, nil
}

// stderrTail returns the command's stderr for an error message, on one line.
func stderrTail(w *capWriter) string {
	var lines []string
	for _, l := range strings.Split(w.buf.String(), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return ""
	}
	return ": " + strings.Join(lines, " | ")
}

// capWriter keeps the first max bytes written and drops the rest, without
// failing the writer (which would kill the child with SIGPIPE and hide the
// real error).
type capWriter struct {
	buf bytes.Buffer
	max int
}

func (w *capWriter) Write(p []byte) (int, error) {
	if room := w.max - w.buf.Len(); room > 0 {
		w.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// CheckBuild verifies a preflight result against what the plan and the node
// expect: the version the plan names, this node's OS and architecture, and a
// protocol range that contains the cluster's active protocol (activeProtocol
// <= 0 skips that check, for a cluster that has none yet). The error names
// every problem found and what the operator can do about it.
func CheckBuild(info buildinfo.Info, wantVersion, wantOS, wantArch string, activeProtocol int) error {
	// One line, problems separated by "; ": it is shown to the operator as is.
	var problems []string
	if info.Version != wantVersion {
		problems = append(problems, fmt.Sprintf("the new binary reports version %s, not %s: check that --artifact is the build of --to", info.Version, wantVersion))
	}
	if info.OS != wantOS || info.Arch != wantArch {
		problems = append(problems, fmt.Sprintf("the new binary is for %s/%s, this node is %s/%s: use the artifact built for %s/%s",
			info.OS, info.Arch, wantOS, wantArch, wantOS, wantArch))
	}
	switch {
	case info.ProtocolMin < 1 || info.ProtocolMax < info.ProtocolMin:
		problems = append(problems, fmt.Sprintf("the new binary reports an invalid protocol range %d-%d: it was built wrongly; rebuild it with 'make build'",
			info.ProtocolMin, info.ProtocolMax))
	case activeProtocol > 0 && (activeProtocol < info.ProtocolMin || activeProtocol > info.ProtocolMax):
		problems = append(problems, fmt.Sprintf("the new binary speaks protocol %d-%d, which does not include the cluster's active protocol %d: upgrade through a version that speaks both",
			info.ProtocolMin, info.ProtocolMax, activeProtocol))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}
