package supervise

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Linux capabilities this module needs to run a process as another user
// and to stop it again (capabilities(7)).
const (
	capKill   = 5
	capSetgid = 6
	capSetuid = 7
)

var capNames = map[int]string{capKill: "CAP_KILL", capSetgid: "CAP_SETGID", capSetuid: "CAP_SETUID"}

// effectiveCaps reads the effective capability set of process pid (0:
// Caddy itself) from /proc.
func effectiveCaps(pid int) (uint64, error) {
	path := "/proc/self/status"
	if pid != 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/status"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("%s has no CapEff line", path)
}

// missingCaps names the capabilities of want that Caddy's effective set
// lacks.
func missingCaps(pid int, want ...int) ([]string, error) {
	have, err := effectiveCaps(pid)
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, c := range want {
		if have&(1<<c) == 0 {
			missing = append(missing, capNames[c])
		}
	}
	return missing, nil
}
