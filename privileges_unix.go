//go:build unix

package supervise

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Privileges a Caddy that runs a process as another user needs: to switch
// to that user (CAP_SETUID, CAP_SETGID: root has them) and to stop the
// process again (CAP_KILL: signalling a process of another user), both in
// Caddy and in the keeper, which kills what Caddy leaves behind if it dies.
// Without them the start would fail, or, worse, a Caddy that cannot signal
// its child would hang at exit and leave it behind: checkPrivileges makes
// that an error at Start, before anything starts.

// switches reports what running as id changes for a process started by
// Caddy: its user, and its groups (the primary group or the supplementary
// ones).
func (id *identity) switches() (uid, groups bool) {
	uid = int(id.uid) != os.Geteuid()
	current, _ := os.Getgroups()
	want := make([]int, len(id.groups))
	for i, g := range id.groups {
		want[i] = int(g)
	}
	slices.Sort(current)
	slices.Sort(want)
	groups = int(id.gid) != os.Getegid() || !slices.Equal(slices.Compact(current), slices.Compact(want))
	return uid, groups
}

// mayRead reports whether id may read a file described by fi, by its
// mode bits (ACLs aside).
func (id *identity) mayRead(fi os.FileInfo) bool { return id.may(fi, 0o4) }

// may reports whether id has the permission bit (4 read, 1 search) on a
// file, as the mode bits say: the owner's, the group's, or the others'.
func (id *identity) may(fi os.FileInfo, bit os.FileMode) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	m := fi.Mode().Perm()
	switch {
	case id.uid == 0:
		return true
	case st.Uid == id.uid:
		return m&(bit<<6) != 0
	case st.Gid == id.gid || slices.Contains(id.groups, st.Gid):
		return m&(bit<<3) != 0
	}
	return m&bit != 0
}

// walkPath follows path from / as the kernel would, symbolic links
// included, calls dir for every directory it goes through (/ first), and
// returns what the path leads to; false if a directory refused, or the
// path leads nowhere.
func walkPath(path string, dir func(os.FileInfo) bool) (os.FileInfo, bool) {
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, false
	}
	cur := "/"
	fi, err := os.Lstat(cur)
	if err != nil || !dir(fi) {
		return nil, false
	}
	comps := strings.Split(path, "/")
	for links := 0; len(comps) > 0; {
		c := comps[0]
		comps = comps[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, c)
		if fi, err = os.Lstat(next); err != nil {
			return nil, false
		}
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(next)
			if links++; err != nil || links > 40 {
				return nil, false
			}
			if filepath.IsAbs(target) {
				cur = "/"
			}
			comps = append(strings.Split(target, "/"), comps...)
		case fi.IsDir():
			if !dir(fi) {
				return nil, false
			}
			cur = next
		case len(comps) > 0:
			return nil, false // a file is not a directory to go through
		default:
			cur = next
		}
	}
	return fi, true
}

// heldDir reports whether a directory belongs to Caddy's user, root, or
// one of also, and no one else may write it (a sticky directory aside).
func heldDir(fi os.FileInfo, also ...int) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && (int(st.Uid) == os.Geteuid() || st.Uid == 0 || slices.Contains(also, int(st.Uid))) &&
		(fi.Mode().Perm()&0o022 == 0 || fi.Mode()&os.ModeSticky != 0)
}

// heldPath reports whether only Caddy's user, root or one of also can
// change what path leads to: every directory it goes through, following
// its symbolic links, is held (heldDir).
func heldPath(path string, also ...int) bool {
	_, ok := walkPath(path, func(fi os.FileInfo) bool { return heldDir(fi, also...) })
	return ok
}

// maySearch reports whether id may go through a directory, by its mode
// bits (ACLs aside).
func (id *identity) maySearch(fi os.FileInfo) bool { return id.may(fi, 0o1) }

// mayReach reports whether id could open path for reading itself: it may
// go through every directory on the way and read the file, by mode bits.
func (id *identity) mayReach(path string) bool {
	fi, ok := walkPath(path, id.maySearch)
	return ok && id.mayRead(fi)
}

// uidOf is the user a process of def runs as.
func (p *Process) uidOf() int {
	if p.id != nil {
		return int(p.id.uid)
	}
	return os.Geteuid()
}

// otherUser reports whether a child run as id is another user than Caddy.
func (id *identity) otherUser() bool { return int(id.uid) != os.Geteuid() }

// credential is what os/exec needs to start a child as id: nil when id is
// Caddy's own user and groups (a non-root Caddy may name its own user), no
// supplementary groups when only the user changes.
func (id *identity) credential() *syscall.Credential {
	uid, groups := id.switches()
	if !uid && !groups {
		return nil
	}
	return &syscall.Credential{Uid: id.uid, Gid: id.gid, Groups: id.groups, NoSetGroups: !groups}
}

// checkPrivileges reports why Caddy could not start p as its user and stop
// it again, if it cannot; it starts the keeper to check it too.
func (p *Process) checkPrivileges() error {
	if p.id == nil {
		return nil
	}
	current, _ := os.Getgroups()
	rootGroup := os.Getegid() == 0 || slices.Contains(current, 0) // a Caddy in group 0 (OpenShift) keeps it
	if os.Geteuid() != 0 && (p.id.uid == 0 || !rootGroup && (p.id.gid == 0 || slices.Contains(p.id.groups, 0))) {
		// with CAP_SETUID a non-root Caddy could, and so could anyone who
		// reaches its admin endpoint or runs its binary
		return fmt.Errorf("process %q: %s: a Caddy that does not run as root does not start processes as root (uid 0, or group 0)", p.Name, p.identityName())
	}
	uid, groups := p.id.switches()
	var need []int
	if uid {
		need = append(need, capSetuid)
	}
	if groups {
		need = append(need, capSetgid)
	}
	missing, err := missingCaps(0, need...)
	if err != nil {
		return fmt.Errorf("process %q: reading Caddy's capabilities: %v", p.Name, err)
	}
	if len(missing) > 0 {
		return fmt.Errorf("process %q: Caddy (uid %d) cannot switch to %s: it must run as root or with CAP_SETUID and CAP_SETGID (it lacks %s)",
			p.Name, os.Geteuid(), p.identityName(), strings.Join(missing, ", "))
	}
	if !uid {
		return nil // a process of Caddy's own user: Caddy and the keeper may signal it
	}
	if missing, err = missingCaps(0, capKill); err == nil && len(missing) > 0 {
		return fmt.Errorf("process %q: Caddy (uid %d) could not stop %s (uid %d): signalling a process of another user needs CAP_KILL; run Caddy as root or give it CAP_KILL too",
			p.Name, os.Geteuid(), p.identityName(), p.id.uid)
	}
	pid, err := startedKeeper()
	if err != nil {
		return fmt.Errorf("process %q: starting the keeper process: %v", p.Name, err)
	}
	if missing, err = missingCaps(pid, capKill); err == nil && len(missing) > 0 {
		return fmt.Errorf("process %q: the keeper (pid %d, started from Caddy's binary %s) lacks CAP_KILL and could not kill %s's processes if Caddy died: "+
			"the kernel drops ambient capabilities when it runs a binary that has file capabilities; give Caddy CAP_KILL as an ambient capability and use a binary without file capabilities",
			p.Name, pid, shimPath(), p.identityName())
	}
	return err
}

// isPrivateDir reports whether path is a directory of Caddy's user that
// no one else may enter (mode 0700, or stricter).
func isPrivateDir(path string) bool {
	fi, err := os.Lstat(path)
	if err != nil || !fi.IsDir() || fi.Mode().Perm()&0o077 != 0 {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Geteuid()
}

// ownedPath reports whether path is a directory (not a symlink) that,
// with every directory above it, belongs to Caddy's user or to root (or
// to one of also) and that no one else may write (a sticky directory,
// such as /tmp, aside): no one else can move it away or put something in
// its place.
func ownedPath(path string, also ...int) bool {
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		fi, err := os.Lstat(p)
		if err != nil || !fi.IsDir() {
			return false
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || (int(st.Uid) != os.Geteuid() && st.Uid != 0 && !slices.Contains(also, int(st.Uid))) || (fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0) {
			return false
		}
		if p == filepath.Dir(p) {
			return true
		}
	}
}
