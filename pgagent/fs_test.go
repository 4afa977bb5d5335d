package pgagent

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestUnmountForeignNamespaceGone: a namespace whose only process exits
// between the scan and nsenter (a short "ip netns exec" command) took its
// copy of the mount with it; that is success, not "still mounted". CI saw
// the opposite once.
func TestUnmountForeignNamespaceGone(t *testing.T) {
	needRoot(t, "unshare", "nsenter")
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("tmpfs: %v", err)
	}
	defer func() { _ = unix.Unmount(dir, unix.MNT_DETACH) }()
	dev := mountDev(dir)
	if dev == "" {
		t.Fatal("no mountinfo line for the tmpfs")
	}

	holders := []*exec.Cmd{}
	start := func() *exec.Cmd {
		c := exec.Command("unshare", "-m", "--propagation", "private", "sleep", "120")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		holders = append(holders, c)
		for i := 0; ; i++ {
			if holdsCopy(c.Process.Pid, dir) {
				return c
			}
			if i > 100 {
				t.Fatal("unshare's namespace has no copy of the mount")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	defer func() {
		for _, c := range holders {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}()
	gone, kept := start(), start()

	real := nsenter
	defer func() { nsenter = real }()
	var calls []string
	nsenter = func(ctx context.Context, pid string, args ...string) (string, error) {
		calls = append(calls, pid)
		if pid == strconv.Itoa(gone.Process.Pid) {
			_ = gone.Process.Kill()
			_ = gone.Wait()
		}
		return real(ctx, pid, args...)
	}
	r := &resolved{Config: Config{Logger: slog.New(slog.DiscardHandler)}}
	if err := unmountForeign(context.Background(), r, dir, []string{dev}); err != nil {
		t.Fatalf("unmountForeign with a namespace that ended: %v", err)
	}
	if b, _ := os.ReadFile("/proc/" + strconv.Itoa(kept.Process.Pid) + "/mountinfo"); strings.Contains(string(b), dir) {
		t.Fatal("the namespace that lives on still holds the mount")
	}
	if len(calls) < 2 {
		t.Fatalf("nsenter calls %v: both namespaces should have been visited", calls)
	}
	if !mounted(dir) {
		t.Fatal("our own mount was removed")
	}
}

// holdsCopy reports whether pid has entered a mount namespace of its own
// (unshare may not have yet: until then it shows ours) that has dir.
func holdsCopy(pid int, dir string) bool {
	self, _ := os.Readlink("/proc/self/ns/mnt")
	ns, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/mnt")
	if err != nil || ns == self {
		return false
	}
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	return strings.Contains(string(b), dir)
}
