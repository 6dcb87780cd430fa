//go:build !unix

package main

// noteUserSignals: there are no user signals on this platform.
func noteUserSignals(rep *reporter) {}
