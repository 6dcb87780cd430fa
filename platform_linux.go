package supervise

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

const osName = "linux"

// shimPath is the running Caddy binary, even if the file was replaced or
// deleted since Caddy started (a package upgrade).
func shimPath() string { return "/proc/self/exe" }

// sysProcAttr puts the child in a session of its own (setsid: a new
// session is also a new process group, whose ID is the child's PID) with
// no controlling terminal, and arms the parent-death signal: if Caddy dies
// without stopping it (SIGKILL, SIGQUIT, a second SIGINT), the kernel kills
// the child. Without a controlling terminal, a child cannot reach the
// terminal of whoever started Caddy: no /dev/tty, no TIOCSTI to type into
// their shell, no TIOCSPGRP to take the foreground and read what they
// type, no SIGTTOU when it writes; and a terminal's Ctrl-C or hang-up does
// not reach it before the drain.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
}

// openRegular opens the file name, following symbolic links, for reading
// if it is a regular file, without opening anything else: it is first
// opened as a path only (O_PATH: no device driver's open runs, a FIFO does
// not wait for a writer, a terminal cannot become Caddy's), checked, then
// opened for reading through that descriptor, so that what is read is what
// was checked.
func openRegular(name string) (*os.File, fs.FileInfo, error) {
	fd, err := unix.Open(name, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	path := os.NewFile(uintptr(fd), name)
	defer path.Close()
	fi, err := path.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fi, errNotRegular
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", fd), os.O_RDONLY|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, &fs.PathError{Op: "open", Path: name, Err: errors.Unwrap(err)}
	}
	return f, fi, nil
}

// openWriteOnly opens the terminal f is anew, write-only, and without
// making it anyone's controlling terminal (through /proc, which reaches
// the device even where its path is not in this mount namespace).
func openWriteOnly(f *os.File) (*os.File, error) {
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.O_WRONLY|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// waitLeader waits until the child has exited, without reaping it: as long
// as the zombie is there, its PID, which is also its process group's ID,
// cannot be reused, so signalling the group reaches nobody else.
func waitLeader(cmd *exec.Cmd) error {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return err
		}
	}
}

// reap collects the child's status, freeing its PID.
func reap(cmd *exec.Cmd) error { return cmd.Wait() }

// othersInGroup reports whether a live process other than the group's
// leader is in the group pgid. (kill(-pgid, 0) would count the leader's
// zombie.) It reads /proc: the group's members are not our children.
func othersInGroup(pgid int) bool {
	dir, err := os.Open("/proc")
	if err != nil {
		return false
	}
	defer dir.Close()
	names, _ := dir.Readdirnames(-1)
	var buf [512]byte
	for _, name := range names {
		if name[0] < '1' || name[0] > '9' || name == strconv.Itoa(pgid) {
			continue
		}
		f, err := os.Open("/proc/" + name + "/stat")
		if err != nil {
			continue
		}
		n, _ := f.Read(buf[:])
		f.Close()
		// "pid (comm) state ppid pgrp …"; comm may hold spaces and parentheses
		stat := string(buf[:n])
		i := strings.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(stat[i+1:])
		if len(fields) < 3 || fields[0] == "Z" || fields[0] == "X" {
			continue
		}
		if g, _ := strconv.Atoi(fields[2]); g == pgid {
			return true
		}
	}
	return false
}

// ephemeralPorts is the range the kernel picks local ports of outbound
// connections from.
func ephemeralPorts() (lo, hi int, ok bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, false
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	return lo, hi, err1 == nil && err2 == nil && 1024 <= lo && lo <= hi && hi <= 65535
}

// bindPrivately binds a unix socket in tmp, a new directory beside path,
// gives it mode and links it to path (which fails if anything is there).
// The directory is used through a descriptor, checked to be Caddy's own
// and private: whoever can write path's directory may rename tmp, but
// cannot make the bind, the mode or the link act on anything else.
func bindPrivately(tmp, path string, mode fs.FileMode) (net.Listener, fs.FileInfo, error) {
	dirfd, err := unix.Open(tmp, unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	defer unix.Close(dirfd)
	var st unix.Stat_t
	if err := unix.Fstat(dirfd, &st); err != nil || int(st.Uid) != os.Geteuid() || st.Mode&0o077 != 0 {
		return nil, nil, fmt.Errorf("%s changed while the socket was being made", tmp)
	}
	defer unix.Unlinkat(dirfd, "s", 0)
	inDir := fmt.Sprintf("/proc/self/fd/%d/s", dirfd)
	ln, err := net.Listen("unix", inDir)
	if err != nil {
		return nil, nil, err
	}
	node, err := os.Lstat(inDir) // the socket's file, as made: only that one is ever removed
	if err == nil {
		err = unix.Fchmodat(dirfd, "s", uint32(mode), 0)
	}
	if err == nil {
		err = unix.Linkat(dirfd, "s", unix.AT_FDCWD, path, 0)
	}
	if err != nil {
		ln.Close()
		return nil, nil, err
	}
	return ln, node, nil
}

// chmodSocketFile gives the socket file at path mode, if it is still node
// (the file Caddy made): it is opened without following a symlink, checked,
// and changed through that descriptor.
func chmodSocketFile(path string, node fs.FileInfo, mode fs.FileMode) error {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	want, ok := node.Sys().(*syscall.Stat_t)
	if err := unix.Fstat(fd, &st); err != nil || !ok || st.Dev != want.Dev || st.Ino != want.Ino {
		return fmt.Errorf("%s is no longer the socket Caddy made", path)
	}
	return unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), uint32(mode))
}

// listeningAddrs lists where the processes of group pgid listen: TCP
// addresses ("127.0.0.1:9292", "[::]:3000") and unix sockets
// ("unix//run/app.sock"), read from /proc (the sockets the group's
// processes hold, and the kernel's tables of listening sockets). known is
// false when a process's descriptors could not be read (another user's, or
// not dumpable).
func listeningAddrs(pgid int) (addrs []string, known bool) {
	known = true
	inodes := make(map[string]bool)
	for _, pid := range groupMembers(pgid) {
		dir := "/proc/" + strconv.Itoa(pid) + "/fd"
		entries, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			known = false
		}
		for _, e := range entries {
			if l, err := os.Readlink(dir + "/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:[") {
				inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
			}
		}
	}
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, _ := os.ReadFile(file)
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
				continue
			}
			if a := hexAddr(f[1]); a != "" && !slices.Contains(addrs, a) {
				addrs = append(addrs, a)
			}
		}
	}
	b, _ := os.ReadFile("/proc/net/unix")
	for _, line := range strings.Split(string(b), "\n")[1:] {
		// Num RefCount Protocol Flags Type St Inode Path (which may hold spaces); flags 00010000: listening
		f := strings.Fields(line)
		if len(f) >= 8 && f[3] == "00010000" && inodes[f[6]] {
			_, path, _ := strings.Cut(line, " "+f[6]+" ")
			if a := "unix/" + strings.TrimSpace(path); !slices.Contains(addrs, a) {
				addrs = append(addrs, a)
			}
		}
	}
	return addrs, known
}

// groupMembers lists the live processes of group pgid.
func groupMembers(pgid int) []int {
	var pids []int
	forGroup(pgid, func(pid int, _ []string) { pids = append(pids, pid) })
	return pids
}

// groupMemory is the resident memory of group pgid's processes, in bytes
// (the sum of their RSS: pages they share count once per process).
func groupMemory(pgid int) int64 {
	var pages int64
	forGroup(pgid, func(_ int, f []string) {
		if len(f) > 21 { // field 24 of stat, rss in pages
			n, _ := strconv.ParseInt(f[21], 10, 64)
			pages += n
		}
	})
	return pages * int64(os.Getpagesize())
}

// forGroup calls f for each process of group pgid with the fields of its
// /proc/PID/stat after the command's name (state first).
func forGroup(pgid int, f func(pid int, fields []string)) {
	entries, _ := os.ReadDir("/proc")
	want := strconv.Itoa(pgid)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		i := bytes.LastIndexByte(stat, ')')
		if err != nil || i < 0 {
			continue
		}
		if fields := strings.Fields(string(stat[i+1:])); len(fields) > 2 && fields[2] == want {
			f(pid, fields)
		}
	}
}

// hexAddr reads an address of /proc/net/tcp{,6}: the IP as 32-bit words in
// the host's byte order, then the port.
func hexAddr(s string) string {
	ipHex, portHex, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(portHex, 16, 16)
	raw, err2 := hex.DecodeString(ipHex)
	if !ok || err != nil || err2 != nil || (len(raw) != 4 && len(raw) != 16) {
		return ""
	}
	ip := make(net.IP, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(ip[i:], binary.NativeEndian.Uint32(raw[i:]))
	}
	return net.JoinHostPort(ip.String(), strconv.FormatUint(port, 10))
}

// statCtime is a file's change time.
func statCtime(st *syscall.Stat_t) (sec, nsec int64) { return int64(st.Ctim.Sec), int64(st.Ctim.Nsec) }

// usableCPUs is what `instances auto` means: the CPUs this process may run
// on (its affinity), fewer if its cgroup (or a parent's, cgroup v2) has a
// CPU quota, rounded up.
func usableCPUs() int {
	n := runtime.NumCPU()
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return n
	}
	path := ""
	for _, line := range strings.Split(string(own), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			path = p
		}
	}
	for dir := filepath.Join("/sys/fs/cgroup", filepath.Clean("/"+path)); strings.HasPrefix(dir, "/sys/fs/cgroup"); dir = filepath.Dir(dir) {
		if b, err := os.ReadFile(filepath.Join(dir, "cpu.max")); err == nil {
			if q := cpuQuota(string(b)); q > 0 && q < n {
				n = q
			}
		}
		if dir == "/sys/fs/cgroup" {
			break
		}
	}
	return max(n, 1)
}
