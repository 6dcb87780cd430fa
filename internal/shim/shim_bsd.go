//go:build unix && !linux

package shim

// prepare runs just before the exec. The Go runtime of the shim already
// handles SIGPIPE, so the program gets it back at its default; there is no
// parent-death signal to re-arm, and there are no capabilities or
// no_new_privs bit outside Linux (a process that switched users has only
// that user's rights).
func prepare(parentPID int, noNewPrivs bool) error { return nil }
