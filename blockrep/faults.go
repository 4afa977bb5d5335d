package blockrep

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// FaultyDevice wraps a Device and fails operations by rule: the disk-error half of the
// fault harness. With no rules it is a transparent pass-through.
type FaultyDevice struct {
	Device
	mu    sync.Mutex
	rules []FaultRule
	// Injected counts the failures produced so far.
	Injected atomic.Int64
}

// FaultRule fails matching operations: Ops is a set of "read", "write", "flush" (writes
// include trim and zero); a range [Off, Off+Len) restricts which operations match (Len 0
// = the whole device); After lets that many matching operations succeed first; Count
// limits the failures (0 = unlimited).
type FaultRule struct {
	Ops   string
	Off   int64
	Len   int64
	After int64
	Count int64
	seen  int64
	fired int64
}

// ParseFaultRule reads "ops=write,off=0,len=1M,after=10,count=1" (all keys optional but
// ops).
func ParseFaultRule(s string) (FaultRule, error) {
	var r FaultRule
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			// "ops=read+write" keeps commas out of the op list.
			return r, fmt.Errorf("fault rule %q: %q is not key=value", s, kv)
		}
		var err error
		switch k {
		case "ops":
			r.Ops = strings.ReplaceAll(v, "+", " ")
		case "off":
			r.Off, err = parseBytes(v)
		case "len":
			r.Len, err = parseBytes(v)
		case "after":
			r.After, err = strconv.ParseInt(v, 10, 64)
		case "count":
			r.Count, err = strconv.ParseInt(v, 10, 64)
		default:
			return r, fmt.Errorf("fault rule %q: unknown key %q", s, k)
		}
		if err != nil {
			return r, fmt.Errorf("fault rule %q: %s: %v", s, k, err)
		}
	}
	if r.Ops == "" {
		return r, fmt.Errorf("fault rule %q: ops missing (read, write, flush)", s)
	}
	return r, nil
}

func parseBytes(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n * mult, err
}

// SetRules replaces the rules (none = healthy).
func (f *FaultyDevice) SetRules(rules ...FaultRule) {
	f.mu.Lock()
	f.rules = append([]FaultRule(nil), rules...)
	f.mu.Unlock()
}

func (f *FaultyDevice) check(op string, off, n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.rules {
		r := &f.rules[i]
		if !strings.Contains(r.Ops, op) {
			continue
		}
		if r.Len > 0 && op != "flush" && (off+n <= r.Off || off >= r.Off+r.Len) {
			continue
		}
		r.seen++
		if r.seen <= r.After || r.Count > 0 && r.fired >= r.Count {
			continue
		}
		r.fired++
		f.Injected.Add(1)
		return fmt.Errorf("%w: injected %s error at %d", ErrIO, op, off)
	}
	return nil
}

func (f *FaultyDevice) ReadAt(p []byte, off int64) error {
	if err := f.check("read", off, int64(len(p))); err != nil {
		return err
	}
	return f.Device.ReadAt(p, off)
}

func (f *FaultyDevice) WriteAt(p []byte, off int64, flags ReqFlags) error {
	if err := f.check("write", off, int64(len(p))); err != nil {
		return err
	}
	return f.Device.WriteAt(p, off, flags)
}

func (f *FaultyDevice) Trim(off, n int64) error {
	if err := f.check("write", off, n); err != nil {
		return err
	}
	return f.Device.Trim(off, n)
}

func (f *FaultyDevice) Zero(off, n int64, flags ReqFlags) error {
	if err := f.check("write", off, n); err != nil {
		return err
	}
	return f.Device.Zero(off, n, flags)
}

func (f *FaultyDevice) Flush() error {
	if err := f.check("flush", 0, 0); err != nil {
		return err
	}
	return f.Device.Flush()
}

// Extents passes block status through when the wrapped device has it.
func (f *FaultyDevice) Extents(off, n int64, fn func(off, n int64, hole bool) bool) error {
	if m, ok := f.Device.(ExtentMapper); ok {
		return m.Extents(off, n, fn)
	}
	fn(off, n, false)
	return nil
}

// CrashDevice simulates a disk with a volatile write cache: writes are visible at once
// but durable only after Flush (or with FUA). PowerLoss returns the device as it comes
// back after a power cut: the durable image plus, if keep says so, some of the writes
// that were not yet durable (disks persist a cached write, or not, in any order).
type CrashDevice struct {
	mu      sync.Mutex
	cur     []byte
	durable []byte
	pending []pendingWrite // not yet durable, oldest first
	// Flushes counts Flush calls.
	Flushes atomic.Int64
}

type pendingWrite struct {
	off  int64
	data []byte
}

// NewCrashDevice returns a zeroed device of size bytes.
func NewCrashDevice(size int64) *CrashDevice {
	return &CrashDevice{cur: make([]byte, size), durable: make([]byte, size)}
}

func (c *CrashDevice) Size() int64 { return int64(len(c.cur)) }
func (c *CrashDevice) Caps() Caps {
	return Caps{Flush: true, FUA: true, Trim: true, Zero: true, FastZero: true, MultiConn: true}
}
func (c *CrashDevice) Close() error { return nil }

func (c *CrashDevice) ReadAt(p []byte, off int64) error {
	if err := CheckRange(off, int64(len(p)), c.Size()); err != nil {
		return err
	}
	c.mu.Lock()
	copy(p, c.cur[off:])
	c.mu.Unlock()
	return nil
}

func (c *CrashDevice) write(p []byte, off int64, fua bool) error {
	if err := CheckRange(off, int64(len(p)), c.Size()); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	copy(c.cur[off:], p)
	if fua {
		copy(c.durable[off:], p)
		c.supersede(off, int64(len(p)))
		return nil
	}
	c.pending = append(c.pending, pendingWrite{off, append([]byte(nil), p...)})
	return nil
}

// supersede removes [off, off+n) from cached writes: a durable write cannot be
// overwritten later by an older cached one.
func (c *CrashDevice) supersede(off, n int64) {
	end := off + n
	var out []pendingWrite
	for _, w := range c.pending {
		wend := w.off + int64(len(w.data))
		if wend <= off || w.off >= end {
			out = append(out, w)
			continue
		}
		if w.off < off {
			out = append(out, pendingWrite{w.off, w.data[:off-w.off]})
		}
		if wend > end {
			out = append(out, pendingWrite{end, w.data[end-w.off:]})
		}
	}
	c.pending = out
}

func (c *CrashDevice) WriteAt(p []byte, off int64, flags ReqFlags) error {
	return c.write(p, off, flags&FlagFUA != 0)
}

func (c *CrashDevice) Trim(off, n int64) error { return c.Zero(off, n, 0) }

func (c *CrashDevice) Zero(off, n int64, _ ReqFlags) error {
	if err := CheckRange(off, n, c.Size()); err != nil {
		return err
	}
	return c.write(make([]byte, n), off, false)
}

func (c *CrashDevice) Flush() error {
	c.mu.Lock()
	for _, w := range c.pending {
		copy(c.durable[w.off:], w.data)
	}
	c.pending = nil
	c.mu.Unlock()
	c.Flushes.Add(1)
	return nil
}

// PowerLoss returns the device after a power cut. keep decides, for each write that was
// not durable (index i of n, oldest first), whether it survived anyway.
func (c *CrashDevice) PowerLoss(keep func(i, n int) bool) *CrashDevice {
	c.mu.Lock()
	defer c.mu.Unlock()
	img := append([]byte(nil), c.durable...)
	for i, w := range c.pending {
		if keep != nil && keep(i, len(c.pending)) {
			copy(img[w.off:], w.data)
		}
	}
	return &CrashDevice{cur: img, durable: append([]byte(nil), img...)}
}

// Durable returns a copy of the durable image.
func (c *CrashDevice) Durable() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.durable...)
}
