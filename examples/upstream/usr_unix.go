//go:build unix

package main

import (
	"log"
	"os"
	"os/signal"
	"syscall"
)

// noteUserSignals reports SIGUSR1 and SIGUSR2 and goes on serving, as Puma
// does with its phased-restart signals.
func noteUserSignals(rep *reporter) {
	usr := make(chan os.Signal, 1)
	signal.Notify(usr, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		for sig := range usr {
			log.Printf("upstream got %s", sig)
			rep.send(map[string]any{"ev": "usr", "sig": sig.String()})
		}
	}()
}
