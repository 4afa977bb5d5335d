package blockrep

import "sync"

// MemDevice is an in-memory Device for tests. It is safe for concurrent use.
type MemDevice struct {
	mu   sync.RWMutex
	data []byte
	// Flushes counts Flush calls and FUA writes, so tests can see durability requests.
	Flushes int
}

// NewMemDevice returns a zeroed device of size bytes.
func NewMemDevice(size int64) *MemDevice { return &MemDevice{data: make([]byte, size)} }

func (m *MemDevice) Size() int64 { return int64(len(m.data)) }

func (m *MemDevice) Caps() Caps {
	return Caps{Flush: true, FUA: true, Trim: true, Zero: true, FastZero: true, MultiConn: true, Cache: true}
}

func (m *MemDevice) ReadAt(p []byte, off int64) error {
	if err := CheckRange(off, int64(len(p)), m.Size()); err != nil {
		return err
	}
	m.mu.RLock()
	copy(p, m.data[off:])
	m.mu.RUnlock()
	return nil
}

func (m *MemDevice) WriteAt(p []byte, off int64, flags ReqFlags) error {
	if err := CheckRange(off, int64(len(p)), m.Size()); err != nil {
		return err
	}
	m.mu.Lock()
	copy(m.data[off:], p)
	if flags&FlagFUA != 0 {
		m.Flushes++
	}
	m.mu.Unlock()
	return nil
}

func (m *MemDevice) Trim(off, n int64) error { return m.Zero(off, n, 0) }

func (m *MemDevice) Zero(off, n int64, _ ReqFlags) error {
	if err := CheckRange(off, n, m.Size()); err != nil {
		return err
	}
	m.mu.Lock()
	clear(m.data[off : off+n])
	m.mu.Unlock()
	return nil
}

func (m *MemDevice) Flush() error {
	m.mu.Lock()
	m.Flushes++
	m.mu.Unlock()
	return nil
}

func (m *MemDevice) Close() error { return nil }

// Bytes returns a copy of the contents.
func (m *MemDevice) Bytes() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data...)
}
