package iscsi

import (
	"bytes"
	"context"
	"errors"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		in   string
		want URL
	}{
		{"iscsi://10.0.0.1/iqn.2003-01.org.example:disk1/0",
			URL{Host: "10.0.0.1", Port: 3260, Target: "iqn.2003-01.org.example:disk1"}},
		{"iscsi://host.example.com:3261/iqn.2003-01.org.example:disk1/12",
			URL{Host: "host.example.com", Port: 3261, Target: "iqn.2003-01.org.example:disk1", LUN: 12}},
		{"iscsi://ronnie%secret@[2001:db8::1]:3262/iqn.2003-01.org.example:d/1",
			URL{User: "ronnie", Password: "secret", Host: "2001:db8::1", Port: 3262, Target: "iqn.2003-01.org.example:d", LUN: 1}},
		{"iscsi://u%p@ss%w@rd@h/eui.0123456789abcdef/3",
			URL{User: "u", Password: "p@ss%w@rd", Host: "h", Port: 3260, Target: "eui.0123456789abcdef", LUN: 3}},
		{"iscsi://user@h/naa.6001405abcdef/0",
			URL{User: "user", Host: "h", Port: 3260, Target: "naa.6001405abcdef"}},
	}
	for _, tc := range tests {
		got, err := ParseURL(tc.in)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tc.in, err)
			continue
		}
		if *got != tc.want {
			t.Errorf("ParseURL(%q) = %+v, want %+v", tc.in, *got, tc.want)
		}
	}
	bad := []struct{ in, msg string }{
		{"http://h/iqn.a:b/0", "must start with iscsi://"},
		{"iscsi:///iqn.a:b/0", "missing host"},
		{"iscsi://h", "missing target name"},
		{"iscsi://h/", "missing target name"},
		{"iscsi://h/iqn.a:b", "missing LUN"},
		{"iscsi://h/iqn.a:b/", "missing LUN"},
		{"iscsi://h/iqn.a:b/x", `bad LUN "x"`},
		{"iscsi://h/iqn.a:b/16384", `bad LUN "16384"`},
		{"iscsi://h/iqn.a:b/1/2", "unexpected path after LUN"},
		{"iscsi://h:0/iqn.a:b/1", `bad port "0"`},
		{"iscsi://h:99999/iqn.a:b/1", `bad port "99999"`},
		{"iscsi://h/disk1/1", "not an iqn., eui. or naa. name"},
		{"iscsi://h/iqn.a b/1", "contains"},
		{"iscsi://2001:db8::1/iqn.a:b/1", "IPv6 address must be in brackets"},
		{"iscsi://[2001:db8::1/iqn.a:b/1", "unterminated IPv6 address"},
		{"iscsi://%pw@h/iqn.a:b/1", "empty user name"},
	}
	for _, tc := range bad {
		_, err := ParseURL(tc.in)
		if err == nil {
			t.Errorf("ParseURL(%q) accepted", tc.in)
			continue
		}
		if !strings.Contains(err.Error(), tc.msg) || strings.Contains(err.Error(), "\n") || !strings.HasPrefix(err.Error(), "iscsi URL ") {
			t.Errorf("ParseURL(%q) error %q, want one line mentioning %q", tc.in, err, tc.msg)
		}
	}
	if _, err := ParseURL("iscsi://u%topsecret@h/iqn.a:b"); err == nil || strings.Contains(err.Error(), "topsecret") {
		t.Errorf("error leaks the password: %v", err)
	}
	u, _ := ParseURL("iscsi://u%topsecret@h:3261/iqn.a:b/4")
	if s := u.String(); s != "iscsi://u%***@h:3261/iqn.a:b/4" {
		t.Errorf("String() = %q", s)
	}
}

func TestPDURoundTrip(t *testing.T) {
	p := &pdu{data: []byte("hello")}
	p.bhs[0] = byte(opSCSICmd)
	p.bhs[1] = flagFinal | flagWrite | attrSimple
	p.setU32(16, 0x01020304)
	p.ahs = []byte{0, 1, 2, 3}
	wire := p.marshal()
	if len(wire) != 48+4+8 || wire[4] != 1 || wire[7] != 5 {
		t.Fatalf("wire % x", wire)
	}
	q, err := readPDU(bytes.NewReader(wire), 100)
	if err != nil {
		t.Fatal(err)
	}
	if q.bhs != p.bhs || !bytes.Equal(q.ahs, p.ahs) || string(q.data) != "hello" || q.itt() != 0x01020304 || q.op() != opSCSICmd {
		t.Fatalf("round trip %+v", q)
	}
	if _, err := readPDU(bytes.NewReader(wire), 4); !errors.Is(err, errPDUTooLarge) {
		t.Fatalf("oversized data segment: %v", err)
	}
	if _, err := readPDU(bytes.NewReader(wire[:50]), 100); err == nil {
		t.Fatal("truncated PDU accepted")
	}
}

func TestDecodeTargetPDUs(t *testing.T) {
	t.Run("SCSI Response with sense and underflow", func(t *testing.T) {
		p := &pdu{data: append([]byte{0, 4}, 0x70, 0, 6, 0, 0xff)}
		p.bhs[0] = byte(opSCSIResp)
		p.bhs[1] = flagFinal | flagUnderflow
		p.bhs[3] = 0x02
		p.setU32(44, 512)
		r, err := decodeSCSIResponse(p)
		if err != nil || r.status != 2 || r.residual != 512 || !bytes.Equal(r.sense, []byte{0x70, 0, 6, 0}) {
			t.Fatalf("%+v %v", r, err)
		}
		p.data = []byte{0, 9, 1}
		if _, err := decodeSCSIResponse(p); err == nil {
			t.Fatal("sense length beyond the segment accepted")
		}
	})
	t.Run("Data-In with status needs F", func(t *testing.T) {
		p := &pdu{}
		p.bhs[0] = byte(opDataIn)
		p.bhs[1] = flagStatus | flagOverflow
		if _, err := decodeDataIn(p); err == nil {
			t.Fatal("S without F accepted")
		}
		p.bhs[1] |= flagFinal
		p.setU32(44, 7)
		d, err := decodeDataIn(p)
		if err != nil || !d.hasStatus || d.residual != -7 {
			t.Fatalf("%+v %v", d, err)
		}
	})
	t.Run("R2T with the reserved tag is invalid", func(t *testing.T) {
		p := &pdu{}
		p.setU32(20, reservedTag)
		p.setU32(44, 1)
		if _, err := decodeR2T(p); err == nil {
			t.Fatal("accepted")
		}
	})
}

func TestParseText(t *testing.T) {
	kvs, err := parseText([]byte("A=1\x00B=x=y\x00\x00C=\x00D=last"))
	want := []kv{{"A", "1"}, {"B", "x=y"}, {"C", ""}, {"D", "last"}}
	if err != nil || !reflect.DeepEqual(kvs, want) {
		t.Fatalf("%v %v", kvs, err)
	}
	if !bytes.Equal(encodeText(want[:2]), []byte("A=1\x00B=x=y\x00")) {
		t.Fatal("encodeText")
	}
	for _, bad := range []string{"novalue\x00", "=v\x00"} {
		if _, err := parseText([]byte(bad)); err == nil {
			t.Errorf("parseText(%q) accepted", bad)
		}
	}
}

func TestNegotiation(t *testing.T) {
	want := defaultParams()
	want.MaxRecvDataSegmentLength = 262144
	want.MaxBurstLength = 1 << 20
	want.FirstBurstLength = 256 << 10
	want.InitialR2T = false
	want.DefaultTime2Wait = 0
	tests := []struct {
		name   string
		answer []kv
		reply  []kv
		check  func(Params) bool
	}{
		{"the target's lower MaxBurstLength wins (min)",
			[]kv{{"MaxBurstLength", "262144"}}, nil,
			func(p Params) bool { return p.MaxBurstLength == 262144 }},
		{"a target answering above our offer is held to our offer",
			[]kv{{"MaxBurstLength", "16000000"}}, nil,
			func(p Params) bool { return p.MaxBurstLength == 1<<20 }},
		{"InitialR2T is OR: the target's Yes wins",
			[]kv{{"InitialR2T", "Yes"}}, nil,
			func(p Params) bool { return p.InitialR2T }},
		{"ImmediateData is AND: the target's No wins",
			[]kv{{"ImmediateData", "No"}}, nil,
			func(p Params) bool { return !p.ImmediateData }},
		{"DefaultTime2Wait is max",
			[]kv{{"DefaultTime2Wait", "2"}}, nil,
			func(p Params) bool { return p.DefaultTime2Wait == 2 }},
		{"the target's MaxRecvDataSegmentLength is a declaration",
			[]kv{{"MaxRecvDataSegmentLength", "8192"}}, nil,
			func(p Params) bool {
				return p.TargetMaxRecvDataSegmentLength == 8192 && p.MaxRecvDataSegmentLength == 262144
			}},
		{"a rejected proposal keeps the default",
			[]kv{{"FirstBurstLength", "Reject"}}, nil,
			func(p Params) bool { return p.FirstBurstLength == 65536 }},
		{"MaxOutstandingR2T stays at the 1 we offered",
			[]kv{{"MaxOutstandingR2T", "4"}}, nil,
			func(p Params) bool { return p.MaxOutstandingR2T == 1 }},
		{"an unknown key is NotUnderstood",
			[]kv{{"X-com.example.Foo", "bar"}}, []kv{{"X-com.example.Foo", "NotUnderstood"}},
			func(p Params) bool { return true }},
		{"FirstBurstLength is clamped to MaxBurstLength",
			[]kv{{"MaxBurstLength", "65536"}, {"FirstBurstLength", "262144"}}, nil,
			func(p Params) bool { return p.FirstBurstLength == 65536 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := newNegotiation(want, false)
			n.proposals()
			reply, err := n.handle(tc.answer)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(reply, tc.reply) {
				t.Fatalf("reply %v, want %v", reply, tc.reply)
			}
			if p := n.finish(); !tc.check(p) {
				t.Fatalf("result %+v", p)
			}
		})
	}
	t.Run("an unsolicited proposal is answered", func(t *testing.T) {
		n := newNegotiation(want, true) // discovery: session keys are not offered
		n.proposals()
		reply, err := n.handle([]kv{{"MaxBurstLength", "65536"}})
		if err != nil || !reflect.DeepEqual(reply, []kv{{"MaxBurstLength", "65536"}}) {
			t.Fatalf("%v %v", reply, err)
		}
	})
	t.Run("a digest other than None is refused", func(t *testing.T) {
		n := newNegotiation(want, false)
		n.proposals()
		if _, err := n.handle([]kv{{"HeaderDigest", "CRC32C"}}); err == nil {
			t.Fatal("accepted CRC32C")
		}
	})
	t.Run("discovery sessions offer no session-wide keys", func(t *testing.T) {
		n := newNegotiation(want, true)
		for _, p := range n.proposals() {
			if keySpecs[p.k].normal {
				t.Errorf("discovery proposes %s", p.k)
			}
		}
	})
}

func TestCHAPResponse(t *testing.T) {
	// MD5(0x2a || "secret" || 0102030405060708), computed independently.
	got := chapResponse(0x2a, "secret", []byte{1, 2, 3, 4, 5, 6, 7, 8})
	if encodeHex(got) != "0x0fcb39b8dbe0235c15c9f9ed09403d37" {
		t.Fatalf("%x", got)
	}
	ans, err := chapAnswer([]kv{{"CHAP_A", "5"}, {"CHAP_I", "42"}, {"CHAP_C", "0b" + "AQIDBAUGBwg="}}, "user", "secret")
	if err != nil || !reflect.DeepEqual(ans, []kv{{"CHAP_N", "user"}, {"CHAP_R", "0x0fcb39b8dbe0235c15c9f9ed09403d37"}}) {
		t.Fatalf("%v %v", ans, err)
	}
	if _, err := chapAnswer([]kv{{"CHAP_A", "7"}}, "u", "s"); err == nil {
		t.Fatal("SHA algorithms are not offered, so not accepted")
	}
}

func TestDeriveISIDIsStableAndRandomFormat(t *testing.T) {
	a, b := DeriveISID("iqn.a"), DeriveISID("iqn.b")
	if a != DeriveISID("iqn.a") || a == b {
		t.Fatal("not stable or not distinct")
	}
	if a>>46 != 0b10 || a>>48 != 0 {
		t.Fatalf("ISID %012x is not the random format", a)
	}
}

func TestSerialArithmetic(t *testing.T) {
	if !serialLT(0xfffffffe, 1) || serialGT(0xfffffffe, 1) || !serialLTE(5, 5) || !serialGT(1, 0xffffffff) {
		t.Fatal("serial comparison across the wrap")
	}
}

// TestDialToNonISCSIPeers: a portal that accepts and says nothing, or answers with
// something that is not iSCSI, gives one clear error within the timeout.
func TestDialToNonISCSIPeers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		serve func(net.Conn)
		want  string
	}{
		{"silent", func(c net.Conn) { time.Sleep(3 * time.Second) }, "deadline exceeded"},
		{"garbage", func(c net.Conn) {
			c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" + strings.Repeat("x", 64)))
			time.Sleep(time.Second)
		}, "protocol error"},
		{"hang up", func(c net.Conn) {}, "closed the connection"},
		// A target that reads part of the login and hangs up with unread data sends a
		// reset; linger 0 makes that certain.
		{"reset", func(c net.Conn) {
			c.Read(make([]byte, 1))
			c.(*net.TCPConn).SetLinger(0)
		}, "closed the connection"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				c, err := l.Accept()
				if err != nil {
					return
				}
				tc.serve(c)
				c.Close()
			}()
			start := time.Now()
			_, err = Dial(context.Background(), "iscsi://"+l.Addr().String()+"/iqn.2024-01.test:t/0", Options{Timeout: 500 * time.Millisecond})
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err %v, want one line mentioning %q", err, tc.want)
			}
			if time.Since(start) > 2*time.Second {
				t.Fatalf("took %v", time.Since(start))
			}
			t.Logf("error: %v", err)
		})
	}
}
