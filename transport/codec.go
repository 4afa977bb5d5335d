package transport

import (
	"encoding/binary"
	"math"
)

// Enc appends big-endian fields to a buffer.
type Enc struct{ B []byte }

func (e *Enc) U8(v uint8)   { e.B = append(e.B, v) }
func (e *Enc) U16(v uint16) { e.B = binary.BigEndian.AppendUint16(e.B, v) }
func (e *Enc) U32(v uint32) { e.B = binary.BigEndian.AppendUint32(e.B, v) }
func (e *Enc) U64(v uint64) { e.B = binary.BigEndian.AppendUint64(e.B, v) }
func (e *Enc) Bool(v bool) {
	if v {
		e.U8(1)
	} else {
		e.U8(0)
	}
}

// Str appends a string of at most 64 KiB - 1 bytes (longer strings are cut).
func (e *Enc) Str(s string) {
	if len(s) > math.MaxUint16 {
		s = s[:math.MaxUint16]
	}
	e.U16(uint16(len(s)))
	e.B = append(e.B, s...)
}

// Bytes appends a length-prefixed byte string.
func (e *Enc) Bytes(b []byte) {
	e.U32(uint32(len(b)))
	e.B = append(e.B, b...)
}

// Dec reads big-endian fields; the first short read sets Err and every later read
// returns zero values, so a decoder checks Err once at the end.
type Dec struct {
	B   []byte
	Err error
}

func (d *Dec) take(n int) []byte {
	if d.Err != nil {
		return nil
	}
	if n < 0 || n > len(d.B) {
		d.Err = protoErr("message truncated")
		return nil
	}
	b := d.B[:n]
	d.B = d.B[n:]
	return b
}

func (d *Dec) U8() uint8 {
	if b := d.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *Dec) U16() uint16 {
	if b := d.take(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (d *Dec) U32() uint32 {
	if b := d.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (d *Dec) U64() uint64 {
	if b := d.take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (d *Dec) Bool() bool { return d.U8() != 0 }

func (d *Dec) Str() string { return string(d.take(int(d.U16()))) }

// Bytes returns a length-prefixed byte string aliasing the message.
func (d *Dec) Bytes() []byte { return d.take(int(d.U32())) }

// Rest returns the remaining bytes.
func (d *Dec) Rest() []byte {
	if d.Err != nil {
		return nil
	}
	b := d.B
	d.B = nil
	return b
}

// End reports Err, or an error if bytes are left over.
func (d *Dec) End() error {
	if d.Err == nil && len(d.B) != 0 {
		d.Err = protoErr("%d trailing bytes", len(d.B))
	}
	return d.Err
}
