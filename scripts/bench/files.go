package main

// Backing files (docs/PERFORMANCE.md, "Method"): 1 GiB, the first 256 MiB written with zeros and
// fsync'd, evicted from the page cache with posix_fadvise(DONTNEED) before each run.

import (
	"os"
	"syscall"
	"unsafe"
)

const (
	backingSize = 1 << 30
	spanSize    = 256 << 20
)

func makeBacking(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(backingSize); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < spanSize; off += int64(len(buf)) {
		if _, err := f.WriteAt(buf, off); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return fadviseDontNeed(f)
}

func fadviseDontNeed(f *os.File) error {
	const posixFadvDontneed = 4
	_, _, e := syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, posixFadvDontneed, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// evict writes back the file's dirty pages (DONTNEED drops only clean ones), then drops
// its pages from the page cache. It returns the fraction of pages still resident.
func evict(path string) (float64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		return 0, err
	}
	if err := fadviseDontNeed(f); err != nil {
		return 0, err
	}
	return residentFraction(f)
}

// residentFraction: mincore over the whole file.
func residentFraction(f *os.File) (float64, error) {
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return 0, err
	}
	size := int(fi.Size())
	data, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return 0, err
	}
	defer syscall.Munmap(data)
	page := os.Getpagesize()
	vec := make([]byte, (size+page-1)/page)
	_, _, e := syscall.Syscall(syscall.SYS_MINCORE, uintptr(unsafe.Pointer(&data[0])), uintptr(size), uintptr(unsafe.Pointer(&vec[0])))
	if e != 0 {
		return 0, e
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return float64(n) / float64(len(vec)), nil
}
