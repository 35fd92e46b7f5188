//go:build !testhooks

package main

// testHookDir is empty in a release build, which reads no PEERD_TEST_*
// variable (test builds add -tags testhooks; see hooks_test_build.go).
func testHookDir() string { return "" }
