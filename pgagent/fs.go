package pgagent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// mounts returns the mount points in /proc/self/mountinfo.
func mounts() []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			out = append(out, UnescapeMount(f[4]))
		}
	}
	return out
}

// UnescapeMount undoes mountinfo's octal escapes (\040 for a space) in a mount point.
func UnescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// foreignMounts returns one pid for each other mount namespace in which
// dir is mounted from one of devs (major:minor as in mountinfo). A namespace
// created while our filesystem was mounted (ip netns exec, unshare, a
// container) holds a copy of the mount unless propagation takes our unmount
// there, keeping the filesystem, the loop device and the FUSE file in use
// after we unmounted. Matching the device as well as the path leaves alone
// a container's own mount that happens to have the same path.
func foreignMounts(dir string, devs []string) []int {
	self, _ := os.Readlink("/proc/self/ns/mnt")
	seen := map[string]bool{self: true}
	var out []int
	for _, pid := range pids() {
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
		if err != nil || seen[ns] {
			continue
		}
		seen[ns] = true
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 4 && UnescapeMount(f[4]) == dir && slices.Contains(devs, f[2]) {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// unmountForeign removes the copies of dir's mount from other mount
// namespaces (lazily where they are busy there), so that the volume is
// really released. Only our own mounts are touched in them.
func unmountForeign(ctx context.Context, r *resolved, dir string, devs []string) error {
	if len(devs) == 0 {
		return nil
	}
	// A namespace's processes may exit while we work on it (a short-lived
	// "ip netns exec" command): its copy then goes with it, and another
	// process may still hold the same namespace. So scan again after each
	// pass, and judge a failure only by a namespace that still holds the
	// mount.
	var lastErr error
	for pass := 0; pass < 5; pass++ {
		holders := foreignMounts(dir, devs)
		if len(holders) == 0 {
			return nil
		}
		lastErr = nil
		for _, pid := range holders {
			ns := strconv.Itoa(pid)
			r.Logger.Warn("pgagent: unmounting a copy in another mount namespace", "dir", dir, "pid", pid, "comm", comm(pid))
			if _, err := nsenter(ctx, ns, "umount", dir); err == nil {
				continue
			}
			if _, err := nsenter(ctx, ns, "umount", "-l", dir); err != nil {
				lastErr = fmt.Errorf("%s still mounted in the mount namespace of pid %d: %v", dir, pid, err)
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	if holders := foreignMounts(dir, devs); len(holders) == 0 {
		return nil
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("%s still mounted in other mount namespaces", dir)
	}
	return lastErr
}

// nsenter runs a command in the mount namespace of pid; a variable so that a
// test can end the namespace's last process just before it.
var nsenter = func(ctx context.Context, pid string, args ...string) (string, error) {
	return run(ctx, "nsenter", append([]string{"-t", pid, "-m"}, args...)...)
}

// mountDev returns the major:minor of dir's mount in our namespace, or "".
func mountDev(dir string) string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && UnescapeMount(f[4]) == dir {
			return f[2]
		}
	}
	return ""
}

func mounted(dir string) bool {
	for _, m := range mounts() {
		if m == dir {
			return true
		}
	}
	return false
}

// filesystem checks and mounts the device at the mount point.
type filesystem struct {
	r     *resolved
	dev   func() string
	loops func() []string // loop devices on our export, also a previous run's
}

func (f *filesystem) up(ctx context.Context) error {
	if mounted(f.r.MountPoint) {
		return nil
	}
	fi, err := os.Stat(f.r.MountPoint)
	if err != nil {
		return fmt.Errorf("mount point: %v", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("mount point %s is not a directory", f.r.MountPoint)
	}
	if err := f.check(ctx); err != nil {
		return err
	}
	return f.mount()
}

func (f *filesystem) mount() error {
	if err := unix.Mount(f.dev(), f.r.MountPoint, f.r.FSType, 0, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %v", f.dev(), f.r.MountPoint, err)
	}
	f.r.Logger.Info("pgagent: filesystem mounted", "device", f.dev(), "mountpoint", f.r.MountPoint, "fstype", f.r.FSType)
	return nil
}

// check replays the ext4 journal and repairs what -p may repair. XFS has no
// fsck to run: mount replays its log.
func (f *filesystem) check(ctx context.Context) error {
	if f.r.FSType != "ext4" {
		return nil
	}
	out, err := run(ctx, "fsck", "-t", "ext4", "-p", f.dev())
	switch code := exitCode(err); {
	case err == nil:
	case code == 1 || code == 2 || code == 3: // errors corrected (2: "reboot", meaningless for a data volume)
		f.r.Logger.Warn("pgagent: fsck corrected errors", "device", f.dev(), "exit", code, "output", strings.TrimSpace(out))
	default:
		return err
	}
	return nil
}

// down unmounts the mount point, killing the processes holding it when it
// is busy (SIGTERM, then SIGKILL after a grace period).
func (f *filesystem) down(ctx context.Context) error {
	grace := f.r.StepTimeout / 3
	// Our filesystem is on one of these, mounted here or not any more.
	var devs []string
	if d := mountDev(f.r.MountPoint); d != "" {
		devs = append(devs, d)
	}
	for _, l := range f.loops() {
		if b, err := os.ReadFile("/sys/class/block/" + filepath.Base(l) + "/dev"); err == nil {
			devs = append(devs, strings.TrimSpace(string(b)))
		}
	}
	for mounted(f.r.MountPoint) {
		err := unix.Unmount(f.r.MountPoint, 0)
		if err == nil {
			f.r.Logger.Info("pgagent: filesystem unmounted", "mountpoint", f.r.MountPoint)
			continue
		}
		if err != unix.EBUSY {
			return fmt.Errorf("unmount %s: %v", f.r.MountPoint, err)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("unmount %s: busy: %w", f.r.MountPoint, ctx.Err())
		}
		if hs := holders(f.r.MountPoint); len(hs) > 0 {
			f.r.Logger.Warn("pgagent: mount point busy, killing holders", "mountpoint", f.r.MountPoint, "pids", hs)
			killAndWait(ctx, hs, grace)
		} else {
			time.Sleep(100 * time.Millisecond)
		}
	}
	return unmountForeign(ctx, f.r, f.r.MountPoint, devs)
}
