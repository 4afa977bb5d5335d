package nbd

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

const testSize = 1 << 20

func TestOptionReplies(t *testing.T) {
	structured := []opt{{optStructuredReply, nil}}
	tests := []struct {
		name   string
		setup  []opt // sent first; each must be acknowledged
		opt    uint32
		data   []byte
		raw    []byte   // sent instead of opt/data
		want   []uint32 // reply types; nil: the server hangs up without a reply
		hangUp bool     // the server hangs up after the replies
		check  func(t *testing.T, rs []optReply)
	}{
		{name: "abort is acknowledged, then the server hangs up",
			opt: optAbort, want: []uint32{repAck}, hangUp: true},
		{name: "abort with data is acknowledged anyway",
			opt: optAbort, data: []byte("x"), want: []uint32{repAck}, hangUp: true},
		{name: "list names every export",
			opt: optList, want: []uint32{repServer, repServer, repAck},
			check: func(t *testing.T, rs []optReply) {
				for i, name := range []string{"disk", "secondary"} {
					d := rs[i].data
					if n := be.Uint32(d); int(n) != len(d)-4 || string(d[4:]) != name {
						t.Errorf("entry %d = %q, want %q", i, d, name)
					}
				}
			}},
		{name: "list with data is invalid", opt: optList, data: []byte{0}, want: []uint32{repErrInvalid}},
		{name: "starttls is refused by policy", opt: optStartTLS, want: []uint32{repErrPolicy}},
		{name: "starttls with data is invalid", opt: optStartTLS, data: []byte{1}, want: []uint32{repErrInvalid}},
		{name: "info on the default export answers every request",
			opt: optInfo, data: infoGoData("", infoName, infoDescription, infoBlockSize),
			want: []uint32{repInfo, repInfo, repInfo, repInfo, repAck},
			check: func(t *testing.T, rs []optReply) {
				want := exportInfo{size: testSize, name: "disk", desc: "test disk", minBS: 1, prefBS: 4096, maxBS: DefaultMaxRequest,
					flags: tfHasFlags | tfSendFlush | tfSendFUA | tfSendTrim | tfSendWriteZeroes | tfSendFastZero | tfCanMultiConn | tfSendCache}
				if got := parseInfos(t, rs); got != want {
					t.Errorf("info = %+v, want %+v", got, want)
				}
			}},
		{name: "info without requests sends the export and block sizes",
			opt: optInfo, data: infoGoData("disk"), want: []uint32{repInfo, repInfo, repAck}},
		{name: "info after structured replies advertises DF",
			setup: structured, opt: optInfo, data: infoGoData("disk"), want: []uint32{repInfo, repInfo, repAck},
			check: func(t *testing.T, rs []optReply) {
				if f := parseInfos(t, rs).flags; f&tfSendDF == 0 {
					t.Errorf("flags %#x lack SEND_DF", f)
				}
			}},
		{name: "info on an unknown export is refused as unknown",
			opt: optInfo, data: infoGoData("nope"), want: []uint32{repErrUnknown},
			check: wantMessage(`"nope": unknown export`)},
		{name: "info refused by policy tells the reason",
			opt: optInfo, data: infoGoData("secondary"), want: []uint32{repErrPolicy},
			check: wantMessage("r0: this node is Secondary; the export is served by the Primary")},
		{name: "info shorter than its fixed part is invalid",
			opt: optInfo, data: []byte{0, 0, 0}, want: []uint32{repErrInvalid}},
		{name: "info whose name length exceeds the option is invalid",
			opt: optInfo, data: []byte{0, 0, 0, 100, 'd', 'i', 's', 'k', 0, 0}, want: []uint32{repErrInvalid}},
		{name: "info whose request count disagrees with its length is invalid",
			opt: optInfo, data: append(infoGoData("disk", infoName)[:8+2], 0, 2, 0, 1), want: []uint32{repErrInvalid}},
		{name: "go on an unknown export fails and stays in the option phase",
			opt: optGo, data: infoGoData("nope"), want: []uint32{repErrUnknown}},
		{name: "go refused by policy stays in the option phase",
			opt: optGo, data: infoGoData("secondary"), want: []uint32{repErrPolicy}},
		{name: "structured reply is acknowledged", opt: optStructuredReply, want: []uint32{repAck}},
		{name: "structured reply with data is invalid",
			opt: optStructuredReply, data: []byte{0}, want: []uint32{repErrInvalid}},
		{name: "list meta context needs structured replies",
			opt: optListMetaContext, data: metaData("disk"), want: []uint32{repErrInvalid}},
		{name: "list meta context without queries lists base:allocation",
			setup: structured, opt: optListMetaContext, data: metaData("disk"),
			want: []uint32{repMetaContext, repAck}, check: wantContext(0)},
		{name: "list meta context expands the base: wildcard",
			setup: structured, opt: optListMetaContext, data: metaData("disk", "base:"),
			want: []uint32{repMetaContext, repAck}, check: wantContext(0)},
		{name: "list meta context ignores unknown namespaces and leaves",
			setup: structured, opt: optListMetaContext, data: metaData("disk", "qemu:dirty-bitmap:b0", "base:nope"),
			want: []uint32{repAck}},
		{name: "meta context query without a namespace is invalid",
			setup: structured, opt: optListMetaContext, data: metaData("disk", "allocation"),
			want: []uint32{repErrInvalid}},
		{name: "meta context query longer than the option is invalid",
			setup: structured, opt: optSetMetaContext, data: metaData("disk", "base:allocation")[:20],
			want: []uint32{repErrInvalid}},
		{name: "meta context query count beyond the option is invalid",
			setup: structured, opt: optSetMetaContext, data: append(metaData("disk")[:8], 0, 0, 0, 3),
			want: []uint32{repErrInvalid}},
		{name: "meta context with trailing bytes is invalid",
			setup: structured, opt: optSetMetaContext, data: append(metaData("disk", "base:allocation"), 0),
			want: []uint32{repErrInvalid}},
		{name: "set meta context selects base:allocation",
			setup: structured, opt: optSetMetaContext, data: metaData("disk", "base:allocation"),
			want: []uint32{repMetaContext, repAck}, check: wantContext(metaID)},
		{name: "set meta context ignores the base: wildcard",
			setup: structured, opt: optSetMetaContext, data: metaData("disk", "base:"), want: []uint32{repAck}},
		{name: "set meta context without queries selects nothing",
			setup: structured, opt: optSetMetaContext, data: metaData("disk"), want: []uint32{repAck}},
		{name: "set meta context needs structured replies",
			opt: optSetMetaContext, data: metaData("disk", "base:allocation"), want: []uint32{repErrInvalid}},
		{name: "unknown option is unsupported", opt: 99, want: []uint32{repErrUnsup}},
		{name: "extended headers are unsupported", opt: 11, data: nil, want: []uint32{repErrUnsup}},
		{name: "peek export is unsupported", opt: 4, want: []uint32{repErrUnsup}},
		{name: "oversized option is skipped unread and refused as too big",
			opt: optInfo, data: make([]byte, 1<<20), want: []uint32{repErrTooBig}},
		{name: "export name of an unknown export hangs up", opt: optExportName, data: []byte("nope")},
		{name: "export name refused by policy hangs up", opt: optExportName, data: []byte("secondary")},
		{name: "oversized export name hangs up", opt: optExportName, data: make([]byte, maxOptionLen+1)},
		{name: "bad option magic hangs up",
			raw: append(be.AppendUint64(nil, optMagic+1), 0, 0, 0, optList, 0, 0, 0, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, _ := newRec(testSize)
			c, done := serve(t, testServer(rec))
			c.greet(clientFixedNewstyle | clientNoZeroes)
			for _, o := range tt.setup {
				c.sendOpt(o.opt, o.data)
				if r := c.readOptReply(); r.typ != repAck {
					t.Fatalf("setup option %d: reply %#x", o.opt, r.typ)
				}
			}
			if tt.raw != nil {
				c.write(tt.raw)
			} else {
				c.sendOpt(tt.opt, tt.data)
			}
			if tt.want == nil {
				c.expectHangUp(done)
				return
			}
			rs := c.optReplies()
			var got []uint32
			for _, r := range rs {
				got = append(got, r.typ)
				if r.opt != tt.opt {
					t.Errorf("reply for option %d, want %d", r.opt, tt.opt)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("reply types %#x, want %#x", got, tt.want)
			}
			if tt.check != nil {
				tt.check(t, rs)
			}
			if tt.hangUp {
				c.expectHangUp(done)
				return
			}
			// Still in step: the next option is parsed and answered.
			c.sendOpt(99, []byte("next"))
			if r := c.readOptReply(); r.typ != repErrUnsup || r.opt != 99 {
				t.Fatalf("follow-up option: reply %#x for %d", r.typ, r.opt)
			}
			if subs, reads := rec.touched(); len(subs)+reads != 0 {
				t.Errorf("backend touched during the handshake: %d submits, %d reads", len(subs), reads)
			}
		})
	}
}

type opt struct {
	opt  uint32
	data []byte
}

func wantMessage(msg string) func(*testing.T, []optReply) {
	return func(t *testing.T, rs []optReply) {
		if got := string(rs[len(rs)-1].data); got != msg {
			t.Errorf("message %q, want %q", got, msg)
		}
	}
}

func wantContext(id uint32) func(*testing.T, []optReply) {
	return func(t *testing.T, rs []optReply) {
		d := rs[0].data
		if be.Uint32(d) != id || string(d[4:]) != metaContext {
			t.Errorf("meta context reply %q (id %d), want %q id %d", d[4:], be.Uint32(d), metaContext, id)
		}
	}
}

func TestClientFlags(t *testing.T) {
	tests := []struct {
		name      string
		flags     uint32
		opt       uint32
		wantZeros bool
		hangUp    bool
	}{
		{name: "unknown client flag hangs up", flags: 1 << 5, hangUp: true},
		{name: "export name without NO_ZEROES gets 124 zero bytes", flags: clientFixedNewstyle, opt: optExportName, wantZeros: true},
		{name: "export name with NO_ZEROES gets none", flags: clientFixedNewstyle | clientNoZeroes, opt: optExportName},
		{name: "plain newstyle client may use export name", flags: 0, opt: optExportName, wantZeros: true},
		{name: "plain newstyle client sending another option hangs up", flags: 0, opt: optList, hangUp: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, m := newRec(testSize)
			m.WriteAt([]byte("hello"), 0, 0)
			c, done := serve(t, testServer(rec))
			c.greet(tt.flags)
			if tt.opt != 0 {
				c.sendOpt(tt.opt, []byte("disk"))
			}
			if tt.hangUp {
				c.expectHangUp(done)
				return
			}
			r := c.readFull(10)
			if size, flags := be.Uint64(r), be.Uint16(r[8:]); size != testSize || flags&tfHasFlags == 0 || flags&tfSendDF != 0 {
				t.Fatalf("export reply size %d flags %#x", size, flags)
			}
			if tt.wantZeros && !bytes.Equal(c.readFull(124), make([]byte, 124)) {
				t.Fatal("padding is not zero")
			}
			if r := c.do(0, cmdRead, 0, 5, nil); r.errno != 0 || string(r.data) != "hello" {
				t.Fatalf("READ after EXPORT_NAME: errno %d data %q", r.errno, r.data)
			}
		})
	}
}

func TestGoEntersTransmission(t *testing.T) {
	for _, structured := range []bool{false, true} {
		rec, m := newRec(testSize)
		m.WriteAt([]byte("hello"), 4096, 0)
		srv := testServer(rec)
		c, _ := serve(t, srv)
		info := c.handshake("", structured, false)
		if info.size != testSize || (info.flags&tfSendDF != 0) != structured {
			t.Errorf("structured=%v: size %d flags %#x", structured, info.size, info.flags)
		}
		r := c.do(0, cmdRead, 4096, 5, nil)
		if r.errno != 0 || string(r.data) != "hello" {
			t.Errorf("structured=%v: READ errno %d data %q", structured, r.errno, r.data)
		}
		if structured && !slices.Equal(r.chunks, []uint16{replyTypeOffsetData}) {
			t.Errorf("READ chunks %v, want one OFFSET_DATA", r.chunks)
		}
		if n := srv.Clients("disk"); n != 1 {
			t.Errorf("Clients(disk) = %d after GO to the default export", n)
		}
	}
}

func TestTransmissionFlagsFollowCaps(t *testing.T) {
	tests := []struct {
		name string
		caps blockrep.Caps
		want uint16
	}{
		{"nothing", blockrep.Caps{}, tfHasFlags},
		{"everything", blockrep.Caps{Flush: true, FUA: true, Trim: true, Zero: true, FastZero: true, MultiConn: true, Cache: true, Rotational: true},
			tfHasFlags | tfSendFlush | tfSendFUA | tfSendTrim | tfSendWriteZeroes | tfSendFastZero | tfCanMultiConn | tfSendCache | tfRotational},
		{"fast zero needs zero", blockrep.Caps{FastZero: true}, tfHasFlags},
		{"read-only drops write-class features", blockrep.Caps{ReadOnly: true, Flush: true, FUA: true, Trim: true, Zero: true, FastZero: true, Cache: true},
			tfHasFlags | tfReadOnly | tfSendFlush | tfSendCache},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, _ := newRec(testSize)
			rec.caps = &tt.caps
			c, _ := serve(t, testServer(rec))
			if got := c.handshake("disk", false, false).flags; got != tt.want {
				t.Errorf("flags %#x, want %#x", got, tt.want)
			}
		})
	}
}

func TestOptionLengthLieEndsWhenClientLeaves(t *testing.T) {
	rec, _ := newRec(testSize)
	c, done := serve(t, testServer(rec))
	c.greet(clientFixedNewstyle)
	b := be.AppendUint64(nil, optMagic)
	b = be.AppendUint32(b, optGo)
	b = be.AppendUint32(b, 100)
	c.write(append(b, infoGoData("disk")...)) // 10 of the 100 bytes promised
	c.nc.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("server still waiting for option data after the client left")
	}
}

func TestHandshakeTimeoutDropsIdleClient(t *testing.T) {
	rec, _ := newRec(testSize)
	srv := testServer(rec)
	srv.HandshakeTimeout = 100 * time.Millisecond
	c, done := serve(t, srv)
	c.greet(clientFixedNewstyle)
	c.expectHangUp(done)
}

func TestDisconnectDuringLookupRefusesGo(t *testing.T) {
	rec, _ := newRec(testSize)
	srv := testServer(rec)
	inner := srv.Lookup
	srv.Lookup = func(name string) (*Export, error) {
		e, err := inner(name)
		srv.Disconnect("disk") // the operator demotes while the client is attaching
		return e, err
	}
	c, _ := serve(t, srv)
	c.greet(clientFixedNewstyle)
	c.sendOpt(optGo, infoGoData("disk"))
	rs := c.optReplies()
	if last := rs[len(rs)-1]; last.typ != repErrPolicy || !strings.Contains(string(last.data), "disconnected") {
		t.Fatalf("GO racing Disconnect: final reply %#x %q", last.typ, last.data)
	}
	if n := srv.Clients("disk"); n != 0 {
		t.Fatalf("Clients = %d", n)
	}
}

func TestMetaContextForAnotherExportIsDropped(t *testing.T) {
	rec, _ := newRec(testSize)
	c, _ := serve(t, testServer(rec))
	c.greet(clientFixedNewstyle | clientNoZeroes)
	c.sendOpt(optStructuredReply, nil)
	c.readOptReply()
	c.structured = true
	c.sendOpt(optSetMetaContext, metaData("other", metaContext))
	c.optReplies()
	c.sendOpt(optGo, infoGoData("disk"))
	c.optReplies()
	if r := c.do(0, cmdBlockStatus, 0, 4096, nil); r.errno != errInval {
		t.Fatalf("BLOCK_STATUS after selecting contexts for another export: errno %d", r.errno)
	}
}
