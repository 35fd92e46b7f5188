// Package artifact handles what a rollout installs (a new peerd binary, or an
// application's): its digest, a content-addressed cache of such blobs, minisign
// signatures that bind a manifest (target, version, platform, digest, size)
// rather than bare bytes, bsdiff patches between versions, the new binary's
// preflight (`version --json`). Installing a verified binary is the version
// store's job (upgrade/versions).
//
// It is the node-local half of a rollout's prepare and apply steps; the rollout
// engine decides when each is called. It holds no state beyond the files it is
// pointed at, starts no goroutines, and logs nothing: every failure is returned.
//
// What it must never do:
//   - write outside the paths and directories it is given (temp files go beside
//     their destination, so that a rename is atomic and never crosses a
//     filesystem);
//   - store, or hand back as verified, bytes whose digest does not match what
//     was asked for — a mismatching download leaves nothing behind;
//   - accept a signature for anything other than what the plan names: a
//     validly signed binary of another version or platform is refused.
//
// Preflight executes the binary it is given; call it only on bytes whose digest
// and signature were verified.
package artifact
