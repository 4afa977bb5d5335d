package blockrep

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// FileDevice is a Device over a regular file or a block device, through the page cache;
// Flush is fdatasync. It is safe for concurrent use.
type FileDevice struct {
	f       *os.File
	fd      int
	size    int64
	isBlock bool
	ro      bool
}

// OpenFile opens path as a Device of the given size (0 = the whole file or device).
func OpenFile(path string, size int64, readOnly bool) (*FileDevice, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	d := &FileDevice{f: f, fd: int(f.Fd()), ro: readOnly}
	full, isBlock, err := deviceSize(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	d.isBlock = isBlock
	if size == 0 {
		size = full
	}
	if size > full {
		f.Close()
		return nil, fmt.Errorf("%s: %d bytes, need %d", path, full, size)
	}
	d.size = size
	return d, nil
}

func deviceSize(f *os.File) (size int64, isBlock bool, err error) {
	st, err := f.Stat()
	if err != nil {
		return 0, false, err
	}
	if st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0 {
		var sz uint64
		if sz, err = unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64); err != nil {
			return 0, true, fmt.Errorf("%s: BLKGETSIZE64: %w", f.Name(), err)
		}
		return int64(sz), true, nil
	}
	if !st.Mode().IsRegular() {
		return 0, false, fmt.Errorf("%s: not a regular file or block device", f.Name())
	}
	return st.Size(), false, nil
}

// DeviceSize returns the size in bytes of the file or block device at path.
func DeviceSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sz, _, err := deviceSize(f)
	return sz, err
}

func (d *FileDevice) Size() int64 { return d.size }

func (d *FileDevice) Caps() Caps {
	return Caps{Flush: true, FUA: true, Trim: true, Zero: true, FastZero: !d.isBlock, MultiConn: true, Cache: true, ReadOnly: d.ro}
}

func (d *FileDevice) ReadAt(p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pread(d.fd, p, off)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("%w: read %s at %d: %v", ErrIO, d.f.Name(), off, err)
		}
		if n == 0 { // a file shorter than its size reads as zeroes
			clear(p)
			return nil
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

func (d *FileDevice) WriteAt(p []byte, off int64, flags ReqFlags) error {
	if d.ro {
		return ErrReadOnly
	}
	for len(p) > 0 {
		var n int
		var err error
		if flags&FlagFUA != 0 {
			// RWF_DSYNC is FUA exactly: this write durable, nothing else waited for.
			n, err = unix.Pwritev2(d.fd, [][]byte{p}, off, unix.RWF_DSYNC)
		} else {
			n, err = unix.Pwrite(d.fd, p, off)
		}
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			if err == unix.ENOSPC {
				return fmt.Errorf("%w: write %s at %d", ErrNoSpace, d.f.Name(), off)
			}
			return fmt.Errorf("%w: write %s at %d: %v", ErrIO, d.f.Name(), off, err)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

func (d *FileDevice) Flush() error {
	if d.ro {
		return nil
	}
	if err := unix.Fdatasync(d.fd); err != nil {
		return fmt.Errorf("%w: fdatasync %s: %v", ErrIO, d.f.Name(), err)
	}
	return nil
}

func (d *FileDevice) Trim(off, n int64) error {
	if d.ro {
		return ErrReadOnly
	}
	if n == 0 {
		return nil
	}
	if d.isBlock {
		// BLKZEROOUT, not BLKDISCARD: we promise trimmed ranges read back as zeroes.
		r := [2]uint64{uint64(off), uint64(n)}
		if err := ioctlRange(d.fd, unix.BLKZEROOUT, &r); err != nil {
			return fmt.Errorf("%w: BLKZEROOUT %s: %v", ErrIO, d.f.Name(), err)
		}
		return nil
	}
	return d.punch(off, n)
}

func (d *FileDevice) punch(off, n int64) error {
	err := unix.Fallocate(d.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == unix.EOPNOTSUPP {
		return d.writeZeroes(off, n)
	}
	if err != nil {
		return fmt.Errorf("%w: punch hole %s: %v", ErrIO, d.f.Name(), err)
	}
	return nil
}

func (d *FileDevice) Zero(off, n int64, flags ReqFlags) error {
	if d.ro {
		return ErrReadOnly
	}
	if n == 0 {
		return nil
	}
	if d.isBlock {
		if flags&FlagFastZero != 0 {
			return ErrNotSupported
		}
		r := [2]uint64{uint64(off), uint64(n)}
		if err := ioctlRange(d.fd, unix.BLKZEROOUT, &r); err != nil {
			return fmt.Errorf("%w: BLKZEROOUT %s: %v", ErrIO, d.f.Name(), err)
		}
		return nil
	}
	if flags&FlagNoHole == 0 {
		return d.punch(off, n)
	}
	err := unix.Fallocate(d.fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == unix.EOPNOTSUPP {
		if flags&FlagFastZero != 0 {
			return ErrNotSupported
		}
		return d.writeZeroes(off, n)
	}
	if err != nil {
		return fmt.Errorf("%w: zero range %s: %v", ErrIO, d.f.Name(), err)
	}
	return nil
}

var zeroBlock = make([]byte, 1<<20)

func (d *FileDevice) writeZeroes(off, n int64) error {
	for n > 0 {
		c := min(n, int64(len(zeroBlock)))
		if err := d.WriteAt(zeroBlock[:c], off, 0); err != nil {
			return err
		}
		off, n = off+c, n-c
	}
	return nil
}

func (d *FileDevice) Close() error { return d.f.Close() }

// Fd exposes the descriptor for SEEK_DATA/SEEK_HOLE queries.
func (d *FileDevice) Fd() int { return d.fd }
