package blockrep

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

func ioctlRange(fd int, req uint, r *[2]uint64) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(r)))
	if e != 0 {
		return e
	}
	return nil
}
