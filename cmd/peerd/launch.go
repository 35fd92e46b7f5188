package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"syscall"

	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/daemon"
	"github.com/peerd/peerd/internal/textbusy"
	"github.com/peerd/peerd/upgrade/versions"
)

// envLauncher tells a binary started from the version store which binary
// launched it; that is the one a restart starts again. It is removed from
// the environment at once, so that nothing the agent runs inherits it.
const envLauncher = "PEERD_LAUNCHER"

// envActivated names the version a self-upgrade activated in the version
// store just before the agent re-executed its launcher: the launcher takes
// its stored bytes as verified when they were staged (see
// versions.Store.SelectTrusting), so that the restart does not hash the
// binary again while the node is offline. Only restart sets it; it is
// removed from the environment at once.
const envActivated = "PEERD_ACTIVATED"

// launch hands this process over to the version store's current binary
// when it is newer than this one (it then does not return). Otherwise it
// returns the launcher (the binary a restart starts) and this executable.
//
// A self-upgrade installs into DATA_DIR/versions, never over the file the
// package manager owns; this is how the package's /usr/bin/peerd comes
// back up at the upgraded version after a restart, while a package upgrade
// to a still newer version runs the package's binary. A stored version
// handed over to versions.MaxStarts times without the agent coming up is
// rolled back, so that a binary that cannot start does not keep the node
// down.
func launch(cfg daemon.Config, logger *slog.Logger) (launcher, self string, err error) {
	self, err = os.Executable()
	if err != nil {
		return "", "", fmt.Errorf("find own executable: %w", err)
	}
	if l := os.Getenv(envLauncher); l != "" {
		os.Unsetenv(envLauncher)
		return l, self, nil
	}
	activated := os.Getenv(envActivated)
	os.Unsetenv(envActivated)
	store := daemon.VersionStore(cfg.DataDir, self)
	// Each round either hands over or rolls the store back one version, so
	// this ends: with a version that has starts left, or with the launcher.
	for {
		b, why, err := store.SelectTrusting(buildinfo.Version, activated)
		activated = "" // a version rolled back to below is hashed
		switch {
		case err != nil:
			logger.Warn("running the launcher's own version", "version", buildinfo.Version, "err", err)
			return self, self, nil
		case b.Base:
			if why != "" {
				logger.Info("running the launcher's own version", "version", buildinfo.Version, "why", why)
			}
			return self, self, nil
		}
		n, err := store.NoteStart(b.Version)
		if err != nil {
			logger.Warn("count the start of the stored version", "err", err)
		}
		if n > versions.MaxStarts {
			logger.Error("the stored version was started without coming up too often; rolling back to what ran before",
				"version", b.Version, "starts", n-1)
			if err := store.Rollback(b.Version); err != nil {
				logger.Error("roll back the version store; running the launcher's own version", "err", err)
				return self, self, nil
			}
			_ = store.Started(b.Version)
			continue
		}
		logger.Info("starting the newer version from the version store", "version", b.Version, "path", b.Path, "launcher", buildinfo.Version)
		env := append(os.Environ(), envLauncher+"="+self)
		err = textbusy.Retry(context.Background(), func() error {
			return syscall.Exec(b.Path, os.Args, env)
		})
		logger.Error("could not start the stored version; running the launcher's own", "path", b.Path, "err", err)
		return self, self, nil
	}
}
