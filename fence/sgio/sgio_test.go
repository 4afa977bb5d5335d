//go:build linux

package sgio

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/blockrep/blockrep/fence/scsi"
)

// TestHeaderLayoutMatchesC pins the offsets of struct sg_io_hdr from <scsi/sg.h>; a
// wrong offset would make the kernel read garbage pointers.
func TestHeaderLayoutMatchesC(t *testing.T) {
	var h sgIoHdr
	p := unsafe.Sizeof(uintptr(0))
	// C: int,int,uchar,uchar,ushort,uint, then three pointers aligned to their size.
	dx := uintptr(16)
	tmo := dx + 3*p
	usr := (tmo + 12 + p - 1) &^ (p - 1)
	st := usr + p
	want := map[string][2]uintptr{
		"interface_id":    {unsafe.Offsetof(h.interfaceID), 0},
		"dxfer_direction": {unsafe.Offsetof(h.dxferDirection), 4},
		"cmd_len":         {unsafe.Offsetof(h.cmdLen), 8},
		"mx_sb_len":       {unsafe.Offsetof(h.mxSbLen), 9},
		"iovec_count":     {unsafe.Offsetof(h.iovecCount), 10},
		"dxfer_len":       {unsafe.Offsetof(h.dxferLen), 12},
		"dxferp":          {unsafe.Offsetof(h.dxferp), dx},
		"cmdp":            {unsafe.Offsetof(h.cmdp), dx + p},
		"sbp":             {unsafe.Offsetof(h.sbp), dx + 2*p},
		"timeout":         {unsafe.Offsetof(h.timeout), tmo},
		"flags":           {unsafe.Offsetof(h.flags), tmo + 4},
		"pack_id":         {unsafe.Offsetof(h.packID), tmo + 8},
		"usr_ptr":         {unsafe.Offsetof(h.usrPtr), usr},
		"status":          {unsafe.Offsetof(h.status), st},
		"masked_status":   {unsafe.Offsetof(h.maskedStatus), st + 1},
		"msg_status":      {unsafe.Offsetof(h.msgStatus), st + 2},
		"sb_len_wr":       {unsafe.Offsetof(h.sbLenWr), st + 3},
		"host_status":     {unsafe.Offsetof(h.hostStatus), st + 4},
		"driver_status":   {unsafe.Offsetof(h.driverStatus), st + 6},
		"resid":           {unsafe.Offsetof(h.resid), st + 8},
		"duration":        {unsafe.Offsetof(h.duration), st + 12},
		"info":            {unsafe.Offsetof(h.info), st + 16},
	}
	for name, w := range want {
		if w[0] != w[1] {
			t.Errorf("%s at offset %d, C has it at %d", name, w[0], w[1])
		}
	}
	if p == 8 && unsafe.Sizeof(h) != 88 {
		t.Errorf("sizeof(sg_io_hdr) = %d, want 88 on 64-bit", unsafe.Sizeof(h))
	}
}

func TestNewHeader(t *testing.T) {
	cdb := scsi.Read16(8, 1, false)
	data := make([]byte, 512)
	sense := make([]byte, senseLen)
	tests := []struct {
		name    string
		dir     scsi.Direction
		data    []byte
		wantDir int32
		wantLen uint32
	}{
		{"read fills from the device", scsi.In, data, sgDxferFromDev, 512},
		{"write sends to the device", scsi.Out, data, sgDxferToDev, 512},
		{"no data phase", scsi.None, nil, sgDxferNone, 0},
		{"an empty buffer means no data phase", scsi.In, nil, sgDxferNone, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := newHdr(cdb, tc.dir, tc.data, sense, 1500*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if h.interfaceID != 'S' || h.dxferDirection != tc.wantDir || h.dxferLen != tc.wantLen ||
				h.cmdLen != 16 || h.mxSbLen != senseLen || h.timeout != 1500 ||
				h.cmdp != unsafe.Pointer(&cdb[0]) || h.sbp != unsafe.Pointer(&sense[0]) {
				t.Fatalf("%+v", h)
			}
			if tc.wantLen > 0 && h.dxferp != unsafe.Pointer(&tc.data[0]) {
				t.Fatal("dxferp does not point at the buffer")
			}
		})
	}
	if _, err := newHdr(make([]byte, 5), scsi.None, nil, sense, time.Second); err == nil {
		t.Error("5-byte CDB accepted")
	}
	if _, err := newHdr(make([]byte, 17), scsi.None, nil, sense, time.Second); err == nil {
		t.Error("17-byte CDB accepted")
	}
	if h, _ := newHdr(scsi.TestUnitReady(), scsi.None, nil, sense, 0); h.timeout != 1 {
		t.Errorf("an expired timeout became %d ms; 0 would mean the driver default", h.timeout)
	}
}

func TestResultMapping(t *testing.T) {
	sense := make([]byte, senseLen)
	copy(sense, []byte{0x70, 0, 0x06, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x2a, 0x03})
	tests := []struct {
		name     string
		hdr      sgIoHdr
		wantErr  error
		wantStat scsi.Status
		wantUA   bool
		timeout  bool
	}{
		{name: "GOOD with residual", hdr: sgIoHdr{info: 0, resid: 12}, wantStat: scsi.StatusGood},
		{name: "CHECK CONDITION carries the sense written", hdr: sgIoHdr{info: 1, status: 0x02, driverStatus: driverSense, sbLenWr: 18},
			wantStat: scsi.StatusCheckCondition, wantUA: true},
		{name: "RESERVATION CONFLICT is a status", hdr: sgIoHdr{info: 1, status: 0x18}, wantStat: scsi.StatusReservationConflict},
		{name: "nexus failure is a reservation conflict", hdr: sgIoHdr{info: 1, hostStatus: didNexusFailure}, wantErr: scsi.ErrReservationConflict},
		{name: "host timeout is an error", hdr: sgIoHdr{info: 1, hostStatus: didTimeOut}, timeout: true},
		{name: "driver timeout is an error", hdr: sgIoHdr{info: 1, driverStatus: driverTimeout}, timeout: true},
		{name: "transport disrupted is an error", hdr: sgIoHdr{info: 1, hostStatus: didTransportDisrupted}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := result(&tc.hdr, sense)
			var he *HostError
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err %v", err)
				}
			case tc.hdr.hostStatus != 0 || tc.hdr.driverStatus&driverStatusMask == driverTimeout:
				if !errors.As(err, &he) || he.Timeout() != tc.timeout {
					t.Fatalf("err %v", err)
				}
			default:
				if err != nil || res.Status != tc.wantStat || res.Residual != int(tc.hdr.resid) {
					t.Fatalf("%+v %v", res, err)
				}
				var cc *scsi.CheckCondition
				if got := errors.As(res.Err(), &cc) && cc.IsUnitAttention(); got != tc.wantUA {
					t.Fatalf("unit attention %v, want %v (%v)", got, tc.wantUA, res.Err())
				}
			}
		})
	}
}

func TestOpenRejectsNonSCSI(t *testing.T) {
	f := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(f, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{f, "/dev/null", filepath.Join(t.TempDir(), "missing")} {
		_, err := Open(p)
		if err == nil {
			t.Fatalf("Open(%s) succeeded", p)
		}
		if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), p) {
			t.Errorf("unclear error for %s: %q", p, err)
		}
	}
}

// TestRealDevice runs TEST UNIT READY, INQUIRY and READ KEYS on the first /dev/sg*. It
// needs a SCSI device; containers and VMs without one skip it.
func TestRealDevice(t *testing.T) {
	devs, _ := filepath.Glob("/dev/sg*")
	if len(devs) == 0 {
		t.Skip("no /dev/sg* here: this kernel has no SCSI devices, so the SG_IO path cannot run")
	}
	d, err := Open(devs[0])
	if err != nil {
		t.Skipf("cannot open %s: %v", devs[0], err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := scsi.Exec(ctx, d, scsi.TestUnitReady(), scsi.None, nil, 3, nil); err != nil {
		t.Logf("TEST UNIT READY: %v", err)
	}
	buf := make([]byte, 96)
	n, err := scsi.Exec(ctx, d, scsi.Inquiry(false, 0, 96), scsi.In, buf, 3, nil)
	if err != nil {
		t.Fatalf("INQUIRY: %v", err)
	}
	inq, err := scsi.ParseInquiry(buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %s %s %s type %d", devs[0], inq.Vendor, inq.Product, inq.Revision, inq.DeviceType)
	if inq.DeviceType == scsi.DeviceTypeDisk {
		if _, err := scsi.NewPR(d).ReadKeys(ctx); err != nil {
			t.Logf("READ KEYS: %v", err)
		}
	}
}
