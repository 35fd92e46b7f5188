//go:build race

package main

// raceEnabled builds the kv binaries under test with -race as well, so the
// process tests also check the server's own concurrency.
const raceEnabled = true
