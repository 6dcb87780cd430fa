//go:build unix && !linux

package shim

// prepare runs just before the exec. The Go runtime of the shim already
// handles SIGPIPE, so the program gets it back at its default; there is no
// parent-death signal to re-arm outside Linux.
func prepare(parentPID int) {}
