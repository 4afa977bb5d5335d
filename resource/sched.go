package resource

import (
	"os"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchScheduling puts every thread of this process under SCHED_BATCH: the scheduler
// then preempts the daemon's threads less eagerly when a wake-up arrives, which on small
// machines measurably raises replicated IOPS (one wake-up costs tens of µs there; see
// docs/PERFORMANCE.md). Threads created later inherit the policy.
func batchScheduling() error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	attr := unix.SchedAttr{Size: uint32(unsafe.Sizeof(unix.SchedAttr{})), Policy: unix.SCHED_BATCH}
	var first error
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetAttr(tid, &attr, 0); err != nil && first == nil {
			first = err
		}
	}
	return first
}
