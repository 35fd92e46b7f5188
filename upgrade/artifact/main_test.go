package artifact

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The test binary doubles as a fake new binary for Preflight: run with
// envVersionJSON set, it answers `version --json` with that text.
const (
	envVersionJSON = "PEERD_ARTIFACT_TEST_VERSION_JSON"
	envExit        = "PEERD_ARTIFACT_TEST_EXIT"  // exit with this code after writing to stderr
	envSleep       = "PEERD_ARTIFACT_TEST_SLEEP" // sleep this long first
)

func TestMain(m *testing.M) {
	if out, ok := os.LookupEnv(envVersionJSON); ok {
		fakeVersion(out)
	}
	goleak.VerifyTestMain(m)
}

func fakeVersion(out string) {
	if args := os.Args[1:]; !slices.Equal(args, []string{"version", "--json"}) {
		fmt.Fprintf(os.Stderr, "fake binary: want arguments [version --json], got %q\n", args)
		os.Exit(2)
	}
	if d, err := time.ParseDuration(os.Getenv(envSleep)); err == nil {
		time.Sleep(d)
	}
	if code, err := strconv.Atoi(os.Getenv(envExit)); err == nil {
		fmt.Fprintln(os.Stderr, "fake binary: refusing to start:\n\n  bad config")
		os.Exit(code)
	}
	fmt.Println(out)
	os.Exit(0)
}
