//go:build race

package supervise

func init() { raceEnabled = true }
