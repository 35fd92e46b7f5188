// Package artifact handles what a rollout installs: digests, a
// content-addressed cache, minisign signatures that bind a manifest
// (target, version, platform, digest) rather than bare bytes, bsdiff
// patches, the new binary's preflight, and the atomic binary swap that keeps
// the old binary for rollback.
//
// It never writes outside the paths it is given, and never trusts bytes
// before their digest matched.
package artifact
