package blockrep

// Device is the small block interface every storage layer implements: a local file or
// block device, a fault-injecting or crash-simulating wrapper, an iSCSI LUN. Offsets and
// lengths are in bytes; callers check ranges (see CheckRange) before calling.
type Device interface {
	ReadAt(p []byte, off int64) error
	// WriteAt writes p at off; with FlagFUA the data is durable when it returns.
	WriteAt(p []byte, off int64, flags ReqFlags) error
	// Trim discards a range; it reads back as zeroes afterwards.
	Trim(off, n int64) error
	// Zero writes zeroes; FlagNoHole forbids deallocation, FlagFastZero forbids a slow path.
	Zero(off, n int64, flags ReqFlags) error
	// Flush makes every write that completed before it durable.
	Flush() error
	Size() int64
	Caps() Caps
	Close() error
}

// CheckRange reports ErrOutOfRange unless [off, off+n) lies within size.
func CheckRange(off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return ErrOutOfRange
	}
	return nil
}

// DeviceBackend exports a Device directly, completing every request inline: the
// unreplicated path, and the reference for tests.
type DeviceBackend struct {
	Dev Device
}

func (d DeviceBackend) Size() int64                      { return d.Dev.Size() }
func (d DeviceBackend) Caps() Caps                       { return d.Dev.Caps() }
func (d DeviceBackend) ReadAt(p []byte, off int64) error { return d.Dev.ReadAt(p, off) }

func (d DeviceBackend) Submit(r *Request, b *Batch) {
	r.Owner.Complete(r, ApplyTo(d.Dev, r), b)
}

// ApplyTo performs a write-class request on a device synchronously.
func ApplyTo(dev Device, r *Request) error {
	if r.Op != OpFlush {
		if err := CheckRange(r.Off, r.Len, dev.Size()); err != nil {
			return err
		}
	}
	switch r.Op {
	case OpWrite:
		return dev.WriteAt(r.Data, r.Off, r.Flags)
	case OpTrim:
		if err := dev.Trim(r.Off, r.Len); err != nil {
			return err
		}
	case OpZero:
		if err := dev.Zero(r.Off, r.Len, r.Flags); err != nil {
			return err
		}
	case OpFlush:
		return dev.Flush()
	default:
		return ErrNotSupported
	}
	if r.Flags&FlagFUA != 0 {
		return dev.Flush()
	}
	return nil
}
