package nbd

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"

	"github.com/blockrep/blockrep/blockrep"
)

func withPayload(req []byte, n int) []byte { return append(req, bytes.Repeat([]byte{0xee}, n)...) }

func TestMalformedRequestsNeverReachTheBackend(t *testing.T) {
	noFUA := &blockrep.Caps{Flush: true, Trim: true, Zero: true}
	ro := &blockrep.Caps{ReadOnly: true, Flush: true, Trim: true, Zero: true}
	bare := &blockrep.Caps{}
	slowZero := &blockrep.Caps{Zero: true}
	const small = 64 << 10
	tests := []struct {
		name       string
		structured bool
		meta       bool
		caps       *blockrep.Caps
		maxReq     int
		req        []byte
		want       uint32 // NBD error; 0 means the server hangs up
		closeWrite bool   // the client half-closes after req
	}{
		{name: "bad request magic hangs up", req: append(be.AppendUint32(nil, 0x25609514), request(0, cmdRead, 1, 0, 512)[4:]...)},
		{name: "truncated header ends the connection when the client leaves", req: request(0, cmdRead, 1, 0, 512)[:10], closeWrite: true},
		{name: "unknown command is invalid", req: request(0, 42, 1, 0, 512), want: errInval},
		{name: "resize command is invalid", req: request(0, 8, 1, 0, 512), want: errInval},
		{name: "read beyond the end is invalid", req: request(0, cmdRead, 1, testSize-4095, 4096), want: errInval},
		{name: "read with a wrapping offset is invalid", req: request(0, cmdRead, 1, ^uint64(0)-10, 4096), want: errInval},
		{name: "read beyond the end is invalid with structured replies too", structured: true, req: request(0, cmdRead, 1, testSize, 1), want: errInval},
		{name: "read above the maximum block size is invalid", maxReq: small, req: request(0, cmdRead, 1, 0, small+1), want: errInval},
		{name: "unfragmented read above the maximum overflows", structured: true, maxReq: small, req: request(cmdFlagDF, cmdRead, 1, 0, small+1), want: errOverflow},
		{name: "DF before structured replies is invalid", req: request(cmdFlagDF, cmdRead, 1, 0, 512), want: errInval},
		{name: "read with NO_HOLE is invalid", req: request(cmdFlagNoHole, cmdRead, 1, 0, 512), want: errInval},
		{name: "read with an undefined flag is invalid", req: request(1<<9, cmdRead, 1, 0, 512), want: errInval},
		{name: "FUA is invalid when not advertised", caps: noFUA, req: request(cmdFlagFUA, cmdRead, 1, 0, 512), want: errInval},
		{name: "write beyond the end is out of space", req: withPayload(request(0, cmdWrite, 1, testSize-512, 4096), 4096), want: errNoSpc},
		{name: "write with a wrapping offset is out of space", req: withPayload(request(0, cmdWrite, 1, ^uint64(0), 1), 1), want: errNoSpc},
		{name: "write with NO_HOLE is invalid", req: withPayload(request(cmdFlagNoHole, cmdWrite, 1, 0, 4096), 4096), want: errInval},
		{name: "write with FUA when not advertised is invalid", caps: noFUA, req: withPayload(request(cmdFlagFUA, cmdWrite, 1, 0, 512), 512), want: errInval},
		{name: "write above the maximum but under 32 MiB is skipped and invalid", maxReq: small, req: withPayload(request(0, cmdWrite, 1, 0, 2*small), 2*small), want: errInval},
		{name: "write above 32 MiB hangs up", req: request(0, cmdWrite, 1, 0, 32<<20+1)},
		{name: "write on a read-only export is not permitted", caps: ro, req: withPayload(request(0, cmdWrite, 1, 0, 512), 512), want: errPerm},
		{name: "flush with an offset is invalid", req: request(0, cmdFlush, 1, 512, 0), want: errInval},
		{name: "flush with a length is invalid", req: request(0, cmdFlush, 1, 0, 512), want: errInval},
		{name: "flush when not advertised is invalid", caps: bare, req: request(0, cmdFlush, 1, 0, 0), want: errInval},
		{name: "trim beyond the end is invalid", req: request(0, cmdTrim, 1, testSize, 1), want: errInval},
		{name: "trim with NO_HOLE is invalid", req: request(cmdFlagNoHole, cmdTrim, 1, 0, 512), want: errInval},
		{name: "trim on a read-only export is not permitted", caps: ro, req: request(0, cmdTrim, 1, 0, 512), want: errPerm},
		{name: "trim when not advertised is invalid", caps: bare, req: request(0, cmdTrim, 1, 0, 512), want: errInval},
		{name: "write zeroes beyond the end is out of space", req: request(0, cmdWriteZeroes, 1, testSize-1, 2), want: errNoSpc},
		{name: "fast zero when not advertised is invalid", caps: slowZero, req: request(cmdFlagFastZero, cmdWriteZeroes, 1, 0, 512), want: errInval},
		{name: "write zeroes when not advertised is invalid", caps: bare, req: request(0, cmdWriteZeroes, 1, 0, 512), want: errInval},
		{name: "write zeroes on a read-only export is not permitted", caps: ro, req: request(0, cmdWriteZeroes, 1, 0, 512), want: errPerm},
		{name: "write zeroes with DF is invalid", structured: true, req: request(cmdFlagDF, cmdWriteZeroes, 1, 0, 512), want: errInval},
		{name: "cache beyond the end is invalid", req: request(0, cmdCache, 1, testSize-1, 2), want: errInval},
		{name: "cache with REQ_ONE is invalid", req: request(cmdFlagReqOne, cmdCache, 1, 0, 512), want: errInval},
		{name: "block status without a meta context is invalid", structured: true, req: request(0, cmdBlockStatus, 1, 0, 512), want: errInval},
		{name: "block status of zero length is invalid", structured: true, meta: true, req: request(0, cmdBlockStatus, 1, 0, 0), want: errInval},
		{name: "block status beyond the end is invalid", structured: true, meta: true, req: request(0, cmdBlockStatus, 1, testSize-1, 2), want: errInval},
		{name: "block status with DF is invalid", structured: true, meta: true, req: request(cmdFlagDF, cmdBlockStatus, 1, 0, 512), want: errInval},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, _ := newRec(testSize)
			rec.caps = tt.caps
			srv := testServer(rec)
			srv.MaxRequest = tt.maxReq
			c, done := serve(t, srv)
			c.handshake("disk", tt.structured, tt.meta)
			c.write(tt.req)
			if tt.closeWrite {
				c.nc.(*net.UnixConn).CloseWrite()
			}
			if tt.want == 0 {
				c.expectHangUp(done)
			} else {
				r := c.mustRecv()
				if r.handle != 1 || r.errno != tt.want {
					t.Fatalf("reply handle %d errno %d, want handle 1 errno %d", r.handle, r.errno, tt.want)
				}
				if tt.structured && r.msg == "" {
					t.Error("structured error reply without a message")
				}
			}
			if subs, reads := rec.touched(); len(subs)+reads != 0 {
				t.Fatalf("backend saw %d submits (%+v) and %d reads", len(subs), subs, reads)
			}
			if tt.want != 0 { // the stream is still in step
				if r := c.do(0, cmdRead, 0, 512, nil); r.errno != 0 || len(r.data) != 512 {
					t.Fatalf("READ after the refused request: errno %d, %d bytes", r.errno, len(r.data))
				}
			}
		})
	}
}

func TestCommandsReachTheBackend(t *testing.T) {
	tests := []struct {
		name  string
		flags uint16
		typ   uint16
		off   uint64
		n     uint32
		want  []sub // nil: answered without the backend
	}{
		{"write", 0, cmdWrite, 4096, 4096, []sub{{blockrep.OpWrite, 0, 4096, 4096}}},
		{"write with FUA", cmdFlagFUA, cmdWrite, 0, 512, []sub{{blockrep.OpWrite, blockrep.FlagFUA, 0, 512}}},
		{"write larger than the read buffer", 0, cmdWrite, 0, 768 << 10, []sub{{blockrep.OpWrite, 0, 0, 768 << 10}}},
		{"flush", 0, cmdFlush, 0, 0, []sub{{blockrep.OpFlush, 0, 0, 0}}},
		{"flush with FUA", cmdFlagFUA, cmdFlush, 0, 0, []sub{{blockrep.OpFlush, 0, 0, 0}}},
		{"trim", 0, cmdTrim, 8192, 4096, []sub{{blockrep.OpTrim, 0, 8192, 4096}}},
		{"trim with FUA", cmdFlagFUA, cmdTrim, 0, testSize, []sub{{blockrep.OpTrim, blockrep.FlagFUA, 0, testSize}}},
		{"write zeroes", 0, cmdWriteZeroes, 512, 1024, []sub{{blockrep.OpZero, 0, 512, 1024}}},
		{"write zeroes without holes, fast, durable", cmdFlagNoHole | cmdFlagFastZero | cmdFlagFUA, cmdWriteZeroes, 0, 4096,
			[]sub{{blockrep.OpZero, blockrep.FlagNoHole | blockrep.FlagFastZero | blockrep.FlagFUA, 0, 4096}}},
		{"fast zero may exceed the maximum block size", cmdFlagFastZero, cmdWriteZeroes, 0, testSize,
			[]sub{{blockrep.OpZero, blockrep.FlagFastZero, 0, testSize}}},
		{"write zeroes may exceed the maximum block size", 0, cmdWriteZeroes, 0, testSize,
			[]sub{{blockrep.OpZero, 0, 0, testSize}}},
		{"cache may exceed the maximum block size", 0, cmdCache, 0, testSize, nil},
		{"cache", 0, cmdCache, 0, 4096, nil},
		{"zero-length write", 0, cmdWrite, 0, 0, nil},
		{"zero-length trim", 0, cmdTrim, testSize, 0, nil},
		{"zero-length write zeroes", 0, cmdWriteZeroes, 0, 0, nil},
	}
	for _, structured := range []bool{false, true} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/structured=%v", tt.name, structured), func(t *testing.T) {
				rec, m := newRec(testSize)
				srv := testServer(rec)
				srv.MaxRequest = 512 << 10
				if tt.typ == cmdWrite && tt.n > uint32(srv.MaxRequest) {
					srv.MaxRequest = int(tt.n)
				}
				m.WriteAt(bytes.Repeat([]byte{0xaa}, testSize), 0, 0)
				c, _ := serve(t, srv)
				c.handshake("disk", structured, false)
				var payload []byte
				if tt.typ == cmdWrite {
					payload = bytes.Repeat([]byte{0x5c}, int(tt.n))
				}
				if r := c.do(tt.flags, tt.typ, tt.off, tt.n, payload); r.errno != 0 || r.chunks != nil {
					t.Fatalf("reply errno %d chunks %v, want a simple success", r.errno, r.chunks)
				}
				got, reads := rec.touched()
				if !slices.Equal(got, tt.want) || reads != 0 {
					t.Fatalf("backend saw %+v and %d reads, want %+v", got, reads, tt.want)
				}
				// The effect is visible through READ.
				want := m.Bytes()[tt.off : tt.off+uint64(tt.n)]
				if got := c.readBack(tt.off, tt.n, 256<<10); !bytes.Equal(got, want) {
					t.Fatal("READ back: data differs from the device")
				}
				switch {
				case tt.typ == cmdWrite && !bytes.Equal(want, payload):
					t.Error("device does not hold the written payload")
				case (tt.typ == cmdTrim || tt.typ == cmdWriteZeroes) && tt.n > 0 && !bytes.Equal(want, make([]byte, tt.n)):
					t.Error("range does not read as zeroes")
				}
			})
		}
	}
}

func TestReads(t *testing.T) {
	tests := []struct {
		name       string
		structured bool
		flags      uint16
		off        uint64
		n          uint32
		chunks     []uint16
	}{
		{"simple", false, 0, 100, 4000, nil},
		{"simple, zero length", false, 0, testSize, 0, nil},
		{"simple with FUA (ignored)", false, cmdFlagFUA, 0, 512, nil},
		{"structured", true, 0, 100, 4000, []uint16{replyTypeOffsetData}},
		{"structured unfragmented", true, cmdFlagDF, 0, testSize, []uint16{replyTypeOffsetData}},
		{"structured, zero length", true, 0, 0, 0, []uint16{replyTypeNone}},
		{"whole export", false, 0, 0, testSize, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, m := newRec(testSize)
			content := make([]byte, testSize)
			for i := range content {
				content[i] = byte(i * 7 / 3)
			}
			m.WriteAt(content, 0, 0)
			c, _ := serve(t, testServer(rec))
			c.handshake("disk", tt.structured, false)
			r := c.do(tt.flags, cmdRead, tt.off, tt.n, nil)
			if r.errno != 0 || !bytes.Equal(r.data, content[tt.off:tt.off+uint64(tt.n)]) || !slices.Equal(r.chunks, tt.chunks) {
				t.Fatalf("READ: errno %d, %d bytes, chunks %v (want %v)", r.errno, len(r.data), r.chunks, tt.chunks)
			}
			if subs, _ := rec.touched(); len(subs) != 0 {
				t.Fatalf("READ submitted %+v", subs)
			}
		})
	}
}

func TestBackendErrorsMapToNBDErrors(t *testing.T) {
	tests := []struct {
		err  error
		typ  uint16
		fl   uint16
		want uint32
	}{
		{blockrep.ErrOutOfRange, cmdWrite, 0, errInval},
		{blockrep.ErrNoSpace, cmdWrite, 0, errNoSpc},
		{fmt.Errorf("%w: write /x at 0", blockrep.ErrNoSpace), cmdWrite, 0, errNoSpc},
		{blockrep.ErrNotSupported, cmdTrim, 0, errInval},
		{blockrep.ErrNotSupported, cmdWriteZeroes, 0, errInval},
		{blockrep.ErrNotSupported, cmdWriteZeroes, cmdFlagFastZero, errNotSup},
		{blockrep.ErrReadOnly, cmdWrite, 0, errPerm},
		{blockrep.ErrNotPrimary, cmdWrite, 0, errShutdown},
		{blockrep.ErrShuttingDown, cmdFlush, 0, errShutdown},
		{blockrep.ErrFenced, cmdWrite, 0, errShutdown},
		{blockrep.ErrIO, cmdFlush, 0, errIO},
		{errors.New("disk on fire"), cmdWrite, 0, errIO},
		{blockrep.ErrNotPrimary, cmdRead, 0, errShutdown},
		{errors.New("bad sector"), cmdRead, 0, errIO},
	}
	for _, structured := range []bool{false, true} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s %v/structured=%v", cmdName(tt.typ), tt.err, structured), func(t *testing.T) {
				rec, _ := newRec(testSize)
				rec.failSub, rec.failRead = tt.err, tt.err
				c, _ := serve(t, testServer(rec))
				c.handshake("disk", structured, false)
				var n uint32 = 512
				var payload []byte
				switch tt.typ {
				case cmdWrite:
					payload = make([]byte, n)
				case cmdFlush:
					n = 0
				}
				r := c.do(tt.fl, tt.typ, 0, n, payload)
				if r.errno != tt.want || r.data != nil {
					t.Fatalf("errno %d (%d data bytes), want %d", r.errno, len(r.data), tt.want)
				}
				if structured && r.msg != tt.err.Error() {
					t.Errorf("message %q, want %q", r.msg, tt.err.Error())
				}
				if r := c.do(0, cmdCache, 0, 512, nil); r.errno != 0 { // still in step
					t.Fatalf("CACHE after a failed request: errno %d", r.errno)
				}
			})
		}
	}
}

func TestBlockStatus(t *testing.T) {
	holes := [][2]int64{{8192, 16384}, {65536, testSize}}
	const hz = stateHole | stateZero
	tests := []struct {
		name    string
		mapper  bool
		err     error
		flags   uint16
		off     uint64
		n       uint32
		want    []uint32
		wantErr uint32
	}{
		{name: "holes and data of the whole export", mapper: true, off: 0, n: testSize,
			want: []uint32{8192, 0, 8192, hz, 49152, 0, testSize - 65536, hz}},
		{name: "one extent with REQ_ONE", mapper: true, flags: cmdFlagReqOne, off: 0, n: testSize, want: []uint32{8192, 0}},
		{name: "REQ_ONE never exceeds the request", mapper: true, flags: cmdFlagReqOne, off: 9000, n: 100, want: []uint32{100, hz}},
		{name: "range inside data", mapper: true, off: 100, n: 1000, want: []uint32{1000, 0}},
		{name: "unaligned range across a hole", mapper: true, off: 8000, n: 9000, want: []uint32{192, 0, 8192, hz, 616, 0}},
		{name: "without a mapper everything is data", off: 4096, n: 12345, want: []uint32{12345, 0}},
		{name: "mapper failure is an error", mapper: true, err: blockrep.ErrIO, off: 0, n: 4096, wantErr: errIO},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, _ := newRec(testSize)
			var b blockrep.Backend = rec
			if tt.mapper {
				b = &mappedBackend{recBackend: rec, holes: holes, err: tt.err}
			}
			c, _ := serve(t, testServer(b))
			c.handshake("disk", true, true)
			r := c.do(tt.flags, cmdBlockStatus, tt.off, tt.n, nil)
			if r.errno != tt.wantErr {
				t.Fatalf("errno %d (%q), want %d", r.errno, r.msg, tt.wantErr)
			}
			if tt.wantErr != 0 {
				return
			}
			if r.ctxID != metaID || !slices.Equal(r.extents, tt.want) {
				t.Fatalf("context %d extents %v, want %v", r.ctxID, r.extents, tt.want)
			}
		})
	}
}

func TestBlockStatusOnFileHoles(t *testing.T) {
	path := t.TempDir() + "/sparse.img"
	dev := sparseFile(t, path, testSize, [][2]int64{{0, 4096}, {512 << 10, 4096}})
	c, _ := serve(t, testServer(blockrep.DeviceBackend{Dev: dev}))
	c.handshake("disk", true, true)
	r := c.do(0, cmdBlockStatus, 0, testSize, nil)
	if r.errno != 0 || len(r.extents) < 4 || r.extents[1] != 0 || r.extents[3] != stateHole|stateZero {
		t.Fatalf("errno %d extents %v: want data, hole, ...", r.errno, r.extents)
	}
	var sum uint32
	for i := 0; i < len(r.extents); i += 2 {
		sum += r.extents[i]
	}
	if sum != testSize {
		t.Fatalf("extents cover %d bytes, want %d", sum, testSize)
	}
}
