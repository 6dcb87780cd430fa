//go:build unix && !linux

package supervise

import "os"

// Outside Linux there are no capabilities: root may switch users and
// signal anyone, another user neither.
const (
	capKill = iota
	capSetgid
	capSetuid
)

var capNames = map[int]string{capKill: "root (to signal another user's process)", capSetgid: "root (to set groups)", capSetuid: "root (to switch users)"}

// missingCaps names the privileges of want that the process lacks: all of
// them unless it runs as root.
func missingCaps(pid int, want ...int) ([]string, error) {
	if os.Geteuid() == 0 {
		return nil, nil
	}
	var missing []string
	for _, c := range want {
		missing = append(missing, capNames[c])
	}
	return missing, nil
}
