//go:build testhooks

package main

import "os"

// testHookDir is compiled only into test builds (-tags testhooks): it lets
// a test pause the rollout at a step (see upgrade.Config.HookDir).
func testHookDir() string { return os.Getenv("PEERD_TEST_HOOK_DIR") }
