package iscsi

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/blockrep/blockrep/fence/scsi"
)

// Options configure a session. The zero value works against a target without CHAP.
type Options struct {
	// InitiatorName is this initiator's iSCSI name; default
	// "iqn.2024-01.io.blockrep:<hostname>". Targets apply ACLs to it.
	InitiatorName string
	// ISID is the initiator session identifier (48 bits). 0 derives a stable one from
	// InitiatorName, so a restarted process reinstates (replaces) its old session
	// instead of leaving it behind. Two sessions with the same InitiatorName to the
	// same target need distinct ISIDs, or each login kills the other.
	ISID uint64
	// User and Secret enable CHAP (MD5). Credentials in the URL are used when these
	// are empty.
	User, Secret string
	// Timeout bounds connecting and logging in, logout, each keepalive ping and each
	// socket write. Default 10 s.
	Timeout time.Duration
	// KeepaliveInterval is the idle time after which a NOP-Out ping checks the
	// connection. Default 5 s; negative disables keepalives.
	KeepaliveInterval time.Duration
	// ReconnectTimeout is how long commands wait for a broken connection to be
	// re-established before failing with ErrConnectionLost. Reconnecting goes on in
	// the background afterwards. Default 30 s; negative disables reconnecting.
	ReconnectTimeout time.Duration
	// MaxRetries bounds how often one command is re-sent after reconnects (a command
	// that kills the connection every time must not loop forever). Default 5.
	MaxRetries int
	// MaxRecvDataSegmentLength is declared to the target: the largest data segment it
	// may send us. Default 256 KiB.
	MaxRecvDataSegmentLength uint32
	// MaxBurstLength and FirstBurstLength are offered; the target may lower them.
	// Defaults 16 MiB - 512 and 256 KiB.
	MaxBurstLength, FirstBurstLength uint32
	// InitialR2T and NoImmediateData restrict unsolicited write data (both off by
	// default: writes go as immediate data plus unsolicited Data-Out up to
	// FirstBurstLength, as far as the target agrees).
	InitialR2T, NoImmediateData bool
	// OnReconnect runs after every re-login, before commands interrupted by the
	// connection loss are re-sent; ctx admits commands on the session while it is
	// recovering (the hook must use it). Fencing uses it to re-register a key on
	// targets that forget registrations with the session (tgtd) — only after checking
	// the key is still registered, since a missing key means this node was fenced. An
	// error fails the interrupted commands with it; new commands proceed.
	OnReconnect func(ctx context.Context, s *Session) error
	// Dialer opens the TCP connection; default net.Dialer.
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	Logger *slog.Logger
}

func (o Options) withDefaults(u *URL) Options {
	if o.InitiatorName == "" {
		h, _ := os.Hostname()
		h = strings.Map(func(r rune) rune {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.':
				return r
			case r >= 'A' && r <= 'Z':
				return r + 'a' - 'A'
			}
			return '-'
		}, h)
		if h == "" {
			h = "localhost"
		}
		o.InitiatorName = "iqn.2024-01.io.blockrep:" + h
	}
	if o.User == "" && u != nil {
		o.User, o.Secret = u.User, u.Password
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.KeepaliveInterval == 0 {
		o.KeepaliveInterval = 5 * time.Second
	}
	if o.ReconnectTimeout == 0 {
		o.ReconnectTimeout = 30 * time.Second
	}
	if o.MaxRetries <= 0 {
		o.MaxRetries = 5
	}
	if o.MaxRecvDataSegmentLength == 0 {
		o.MaxRecvDataSegmentLength = 256 << 10
	}
	if o.MaxBurstLength == 0 {
		o.MaxBurstLength = 16<<20 - 512
	}
	if o.FirstBurstLength == 0 {
		o.FirstBurstLength = 256 << 10
	}
	o.MaxRecvDataSegmentLength = clamp(o.MaxRecvDataSegmentLength, 512, 1<<24-1)
	o.MaxBurstLength = clamp(o.MaxBurstLength, 512, 1<<24-1)
	o.FirstBurstLength = clamp(o.FirstBurstLength, 512, o.MaxBurstLength)
	if o.Dialer == nil {
		var d net.Dialer
		o.Dialer = d.DialContext
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

func clamp(v, lo, hi uint32) uint32 { return min(max(v, lo), hi) }

func (o Options) want() Params {
	p := defaultParams()
	p.MaxRecvDataSegmentLength = o.MaxRecvDataSegmentLength
	p.MaxBurstLength = o.MaxBurstLength
	p.FirstBurstLength = o.FirstBurstLength
	p.InitialR2T = o.InitialR2T
	p.ImmediateData = !o.NoImmediateData
	p.DefaultTime2Wait = 0
	p.DefaultTime2Retain = 0 // ERL 0: nothing to retain
	return p
}

// DeriveISID returns the ISID used for an initiator name when Options.ISID is 0: the
// "random" format (T=10b, RFC 7143 section 11.12.5) filled from a hash of the name.
func DeriveISID(initiatorName string) uint64 {
	h := sha256.Sum256([]byte(initiatorName))
	var b [8]byte
	b[2] = 0x80
	copy(b[3:], h[:5])
	return binary.BigEndian.Uint64(b[:])
}

// Stats count session events.
type Stats struct {
	Logins      int    // successful logins, the first included
	Reconnects  int    // re-logins after a lost connection
	Commands    uint64 // SCSI commands sent, re-sends included
	Resent      uint64 // commands re-sent after a reconnect
	Pings       uint64 // NOP-Out pings sent (keepalive and Ping)
	TargetPings uint64 // target NOP-In pings answered
}

type sessState int

const (
	stateUp         sessState = iota
	stateRecovering           // re-login in progress: commands wait
	stateDown                 // re-login failed for ReconnectTimeout: commands fail fast
	stateClosing
	stateClosed
)

// Session is a normal iSCSI session with one connection, in full feature phase. It
// implements scsi.Device for the URL's LUN (LUN returns the others) and is safe for
// concurrent use: commands are pipelined up to the target's command window.
//
// When the connection breaks, the session logs in again with the same ISID (session
// reinstatement at error recovery level 0: the target aborts whatever the old session
// still had) and re-sends, in their original order, the commands that had not
// completed. A command is reported successful only on the target's status for it; one
// that cannot be re-sent fails with ErrConnectionLost.
type Session struct {
	u    URL
	opts Options
	isid [6]byte
	lun  uint64
	log  *slog.Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu           sync.Mutex
	state        sessState
	c            *conn
	connID       uint64
	params       Params
	tsih         uint16
	cmdSN        uint32 // next CmdSN to assign
	expCmdSN     uint32
	maxCmdSN     uint32
	nextITT      uint32
	tasks        map[uint32]*task       // sent on c, not completed
	sendq        []*task                // waiting for a CmdSN; re-sends first
	pings        map[uint32]chan []byte // NOP-Out pings and the logout, by ITT
	order        uint64
	lostAt       time.Time
	downTimer    *time.Timer
	lastErr      error
	reconnecting bool
	stats        Stats
}

var _ scsi.Device = (*Session)(nil)

// task is one SCSI command from Execute until its status arrives.
type task struct {
	lun      [8]byte
	cdb      []byte
	dir      scsi.Direction
	edtl     uint32
	internal bool
	done     chan struct{}
	// cur is the connection the command is outstanding on; nil while it waits to be
	// (re-)sent and once it finished. The reader and writer touch data only while
	// cur is their own connection, so a connection being torn down cannot write into
	// (or read from) a buffer whose command has moved on or completed.
	cur atomic.Pointer[conn]

	// Under Session.mu.
	order     uint64 // submission order: re-sends keep it
	itt       uint32
	cmdSN     uint32
	queued    bool
	sends     int
	abandoned bool
	finished  bool
	res       scsi.Result
	err       error

	// bufMu guards data: the reader fills it (In), the writer sends from it (Out). A
	// caller that stops waiting takes bufMu before returning, so its buffer is never
	// touched afterwards.
	bufMu sync.Mutex
	data  []byte
}

// Dial parses an iscsi:// URL, logs in and checks that the LUN exists.
func Dial(ctx context.Context, rawurl string, opts Options) (*Session, error) {
	u, err := ParseURL(rawurl)
	if err != nil {
		return nil, err
	}
	return DialURL(ctx, u, opts)
}

// DialURL is Dial with a parsed URL.
func DialURL(ctx context.Context, u *URL, opts Options) (*Session, error) {
	o := opts.withDefaults(u)
	s := &Session{
		u:     *u,
		opts:  o,
		lun:   u.LUN,
		log:   o.Logger,
		tasks: map[uint32]*task{},
		pings: map[uint32]chan []byte{},
	}
	isid := o.ISID
	if isid == 0 {
		isid = DeriveISID(o.InitiatorName)
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], isid)
	copy(s.isid[:], b[2:])
	s.ctx, s.cancel = context.WithCancel(context.Background())

	lctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	c, res, err := s.connect(lctx)
	if err != nil {
		s.cancel()
		return nil, fmt.Errorf("iscsi: login to %s at %s: %w", u.Target, u.Addr(), err)
	}
	s.mu.Lock()
	s.installLocked(c, res)
	s.state = stateUp
	s.mu.Unlock()
	c.start()
	s.log.Info("iscsi: logged in", "target", u.Target, "addr", u.Addr(), "isid", s.ISID(), "tsih", res.tsih)

	if err := s.probeLUN(lctx); err != nil {
		s.Close()
		return nil, err
	}
	s.clearUnitAttention(lctx, s.lun)
	return s, nil
}

// ISID is the session's initiator session identifier in hex, as it appears in iSCSI
// TransportIDs ("name,i,0x<ISID>").
func (s *Session) ISID() string { return hex.EncodeToString(s.isid[:]) }

// InitiatorName is the name the session logged in with.
func (s *Session) InitiatorName() string { return s.opts.InitiatorName }

// URL is the session's URL (String redacts the password).
func (s *Session) URL() URL { return s.u }

// Params are the negotiated operational parameters of the current connection.
func (s *Session) Params() Params {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.params
}

// Stats returns the session counters.
func (s *Session) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Execute runs cdb on the URL's LUN.
func (s *Session) Execute(ctx context.Context, cdb []byte, dir scsi.Direction, data []byte) (scsi.Result, error) {
	return s.execute(ctx, s.lun, cdb, dir, data)
}

// LUN returns a scsi.Device for another logical unit of the same target.
func (s *Session) LUN(lun uint64) scsi.Device { return lunDevice{s, lun} }

type lunDevice struct {
	s   *Session
	lun uint64
}

func (d lunDevice) Execute(ctx context.Context, cdb []byte, dir scsi.Direction, data []byte) (scsi.Result, error) {
	return d.s.execute(ctx, d.lun, cdb, dir, data)
}

type internalKey struct{}

func withInternal(ctx context.Context) context.Context {
	return context.WithValue(ctx, internalKey{}, true)
}

func isInternal(ctx context.Context) bool {
	v, _ := ctx.Value(internalKey{}).(bool)
	return v
}

func (s *Session) execute(ctx context.Context, lun uint64, cdb []byte, dir scsi.Direction, data []byte) (scsi.Result, error) {
	if len(cdb) == 0 || len(cdb) > 16 {
		return scsi.Result{}, fmt.Errorf("iscsi: CDB of %d bytes (want 1 to 16)", len(cdb))
	}
	if dir == scsi.None {
		data = nil
	}
	if uint64(len(data)) > math.MaxUint32 {
		return scsi.Result{}, fmt.Errorf("iscsi: transfer of %d bytes is too large", len(data))
	}
	if err := ctx.Err(); err != nil {
		return scsi.Result{}, err
	}
	t := &task{
		lun:      scsi.EncodeLUN(lun),
		cdb:      bytes.Clone(cdb),
		dir:      dir,
		data:     data,
		edtl:     uint32(len(data)),
		internal: isInternal(ctx),
		done:     make(chan struct{}),
	}
	s.mu.Lock()
	err := s.admitLocked(t)
	s.mu.Unlock()
	if err != nil {
		return scsi.Result{}, err
	}
	select {
	case <-t.done:
		// A reader or writer of a dead connection may still hold the buffer for the
		// PDU it is in the middle of; wait for it (it drops the buffer afterwards,
		// since cur is nil now).
		t.bufMu.Lock()
		t.bufMu.Unlock()
		return t.res, t.err
	case <-ctx.Done():
		return s.abandon(t, ctx.Err())
	}
}

func (s *Session) admitLocked(t *task) error {
	switch s.state {
	case stateClosing, stateClosed:
		return ErrSessionClosed
	case stateDown:
		return fmt.Errorf("%w to %s: %v", ErrConnectionLost, s.u.Addr(), s.lastErr)
	}
	s.order++
	t.order = s.order
	t.queued = true
	s.sendq = append(s.sendq, t)
	s.pumpLocked()
	return nil
}

// pumpLocked sends queued commands while the command window allows. While recovering,
// only the recovery's own commands go out; the rest keep their order.
func (s *Session) pumpLocked() {
	if s.c == nil {
		return
	}
	switch s.state {
	case stateUp:
		for len(s.sendq) > 0 && serialLTE(s.cmdSN, s.maxCmdSN) {
			t := s.sendq[0]
			s.sendq[0] = nil
			s.sendq = s.sendq[1:]
			s.sendLocked(t)
		}
	case stateRecovering:
		for i := 0; i < len(s.sendq) && serialLTE(s.cmdSN, s.maxCmdSN); {
			if t := s.sendq[i]; t.internal {
				s.sendq = slices.Delete(s.sendq, i, i+1)
				s.sendLocked(t)
				continue
			}
			i++
		}
	}
}

func (s *Session) allocITTLocked() uint32 {
	for {
		s.nextITT++
		itt := s.nextITT
		if itt == reservedTag || itt == loginITT {
			continue
		}
		if _, busy := s.tasks[itt]; busy {
			continue
		}
		if _, busy := s.pings[itt]; busy {
			continue
		}
		return itt
	}
}

// sendLocked assigns the task an ITT and a CmdSN and queues its SCSI Command PDU, with
// as much write data as may go unsolicited (RFC 7143 section 4.2.5.2): immediate data
// up to min(FirstBurstLength, the target's MaxRecvDataSegmentLength) when
// ImmediateData=Yes, then unsolicited Data-Out up to FirstBurstLength when
// InitialR2T=No. The target asks for the rest with R2Ts.
func (s *Session) sendLocked(t *task) {
	t.queued = false
	t.itt = s.allocITTLocked()
	t.cmdSN = s.cmdSN
	s.cmdSN++
	t.sends++
	t.cur.Store(s.c)
	s.tasks[t.itt] = t
	s.stats.Commands++
	if t.sends > 1 {
		s.stats.Resent++
	}
	p := s.params
	var imm, unsol uint32
	if t.dir == scsi.Out && t.edtl > 0 {
		first := min(t.edtl, p.FirstBurstLength)
		if p.ImmediateData {
			imm = min(first, p.TargetMaxRecvDataSegmentLength)
		}
		if !p.InitialR2T {
			unsol = first - imm
		}
	}
	h := &pdu{}
	h.bhs[0] = byte(opSCSICmd)
	h.bhs[1] = attrSimple
	if unsol == 0 {
		h.bhs[1] |= flagFinal // no unsolicited Data-Out follows
	}
	switch t.dir {
	case scsi.In:
		h.bhs[1] |= flagRead
	case scsi.Out:
		h.bhs[1] |= flagWrite
	}
	h.setLUN(t.lun)
	h.setU32(16, t.itt)
	h.setU32(20, t.edtl)
	h.setU32(24, t.cmdSN)
	copy(h.bhs[32:48], t.cdb)
	s.c.enqueue(outItem{pdu: h, task: t, itt: t.itt, immLen: imm})
	if unsol > 0 {
		s.c.enqueue(outItem{task: t, itt: t.itt, seq: &dataSeq{ttt: reservedTag, off: imm, n: unsol}})
	}
}

func (s *Session) finishLocked(t *task, res scsi.Result, err error) {
	if t.finished {
		return
	}
	t.finished = true
	t.res, t.err = res, err
	t.cur.Store(nil)
	close(t.done)
}

// abandon stops waiting for a command whose context ended. A command not sent yet is
// dropped; one the target may be executing keeps running with a private copy of its
// data, and the caller learns that its outcome is unknown.
func (s *Session) abandon(t *task, cause error) (scsi.Result, error) {
	s.mu.Lock()
	if t.finished {
		s.mu.Unlock()
		return t.res, t.err
	}
	name := cdbName(t.cdb)
	if t.queued {
		if i := slices.Index(s.sendq, t); i >= 0 {
			s.sendq = slices.Delete(s.sendq, i, i+1)
		}
		s.finishLocked(t, scsi.Result{}, cause)
		s.mu.Unlock()
		if t.sends > 0 {
			// Sent on a connection that broke, waiting to be re-sent.
			return scsi.Result{}, fmt.Errorf("iscsi: %s: %w (interrupted by a lost connection: outcome unknown)", name, cause)
		}
		return scsi.Result{}, fmt.Errorf("iscsi: %s not sent: %w", name, cause)
	}
	t.abandoned = true
	s.mu.Unlock()
	t.bufMu.Lock()
	if t.dir == scsi.Out {
		t.data = bytes.Clone(t.data)
	} else {
		t.data = nil
	}
	t.bufMu.Unlock()
	return scsi.Result{}, fmt.Errorf("iscsi: %s: %w (the target may still execute it)", name, cause)
}

func cdbName(cdb []byte) string {
	if len(cdb) == 0 {
		return "empty CDB"
	}
	switch cdb[0] {
	case scsi.OpTestUnitReady:
		return "TEST UNIT READY"
	case scsi.OpInquiry:
		return "INQUIRY"
	case scsi.OpRead16:
		return "READ(16)"
	case scsi.OpWrite16:
		return "WRITE(16)"
	case scsi.OpSynchronizeCache16:
		return "SYNCHRONIZE CACHE(16)"
	case scsi.OpUnmap:
		return "UNMAP"
	case scsi.OpPersistentResIn:
		return "PERSISTENT RESERVE IN"
	case scsi.OpPersistentResOut:
		return "PERSISTENT RESERVE OUT"
	case scsi.OpServiceActionIn16:
		return "SERVICE ACTION IN(16)"
	case scsi.OpReportLUNs:
		return "REPORT LUNS"
	}
	return fmt.Sprintf("opcode 0x%02x", cdb[0])
}

// Sequence number arithmetic (RFC 1982, 32 bits).
func serialLT(a, b uint32) bool  { return int32(a-b) < 0 }
func serialGT(a, b uint32) bool  { return int32(a-b) > 0 }
func serialLTE(a, b uint32) bool { return !serialGT(a, b) }

// statSNLocked acknowledges a StatSN. Status-carrying PDUs advance it; others (R2T,
// NOP-In pings of the target) only say which StatSN comes next.
func (s *Session) statSNLocked(c *conn, statSN uint32, advance bool) {
	next := statSN
	if advance {
		next++
	}
	if serialGT(next, c.expStatSN.Load()) {
		c.expStatSN.Store(next)
	}
}

// windowLocked applies ExpCmdSN/MaxCmdSN from a target PDU (RFC 7143 section 4.2.2.1):
// only newer values count, and a MaxCmdSN below ExpCmdSN-1 is ignored as invalid.
func (s *Session) windowLocked(exp, max uint32) {
	if serialLT(max, exp-1) {
		return
	}
	if serialGT(exp, s.expCmdSN) {
		s.expCmdSN = exp
	}
	if serialGT(max, s.maxCmdSN) {
		s.maxCmdSN = max
		s.pumpLocked()
	}
}

func (s *Session) onResponseLocked(c *conn, h *pdu) error {
	r, err := decodeSCSIResponse(h)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	s.statSNLocked(c, h.statSN(), true)
	s.windowLocked(h.expCmdSN(), h.maxCmdSN())
	t := s.tasks[h.itt()]
	if t == nil {
		s.log.Debug("iscsi: response for unknown task", "itt", h.itt())
		return nil
	}
	delete(s.tasks, h.itt())
	if r.response != 0 {
		s.finishLocked(t, scsi.Result{}, fmt.Errorf("iscsi: %s: target failure (iSCSI response 0x%02x): outcome unknown", cdbName(t.cdb), r.response))
		return nil
	}
	s.finishLocked(t, scsi.Result{Status: scsi.Status(r.status), Sense: bytes.Clone(r.sense), Residual: r.residual}, nil)
	return nil
}

func (s *Session) onR2TLocked(c *conn, h *pdu) error {
	r, err := decodeR2T(h)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	s.statSNLocked(c, h.statSN(), false)
	s.windowLocked(h.expCmdSN(), h.maxCmdSN())
	t := s.tasks[h.itt()]
	if t == nil {
		return nil // completed or abandoned meanwhile
	}
	if t.dir != scsi.Out || uint64(r.offset)+uint64(r.length) > uint64(t.edtl) {
		return fmt.Errorf("%w: R2T for %d bytes at %d of a %v command of %d bytes", ErrProtocol, r.length, r.offset, t.dir, t.edtl)
	}
	c.enqueue(outItem{task: t, itt: h.itt(), seq: &dataSeq{ttt: r.ttt, off: r.offset, n: r.length}})
	return nil
}

func (s *Session) onNOPInLocked(c *conn, h *pdu) error {
	itt, ttt := h.itt(), h.u32(20)
	s.statSNLocked(c, h.statSN(), itt != reservedTag)
	s.windowLocked(h.expCmdSN(), h.maxCmdSN())
	if itt != reservedTag {
		if ch, ok := s.pings[itt]; ok {
			delete(s.pings, itt)
			ch <- h.data
		}
	}
	if ttt != reservedTag {
		// The target pings us: answer with its TTT so it keeps the connection.
		p := &pdu{}
		p.bhs[0] = byte(opNOPOut) | flagImmediate
		p.bhs[1] = flagFinal
		copy(p.bhs[8:16], h.bhs[8:16])
		p.setU32(16, reservedTag)
		p.setU32(20, ttt)
		p.setU32(24, s.cmdSN)
		c.enqueue(outItem{pdu: p})
		s.stats.TargetPings++
	}
	return nil
}

func (s *Session) onAsyncLocked(c *conn, h *pdu) error {
	s.statSNLocked(c, h.statSN(), true)
	s.windowLocked(h.expCmdSN(), h.maxCmdSN())
	event := h.bhs[36]
	switch event {
	case 0:
		sense := h.data
		if len(sense) >= 2 {
			n := int(binary.BigEndian.Uint16(sense[:2]))
			sense = sense[2:min(2+n, len(sense))]
		}
		d, _ := scsi.ParseSense(sense)
		s.log.Info("iscsi: asynchronous SCSI event", "target", s.u.Target, "sense", d.String())
		return nil
	case 1, 2, 3:
		// Logout requested / connection or session about to be dropped: reconnect now
		// rather than wait for the target to cut us off mid-command.
		return fmt.Errorf("target asked to drop the connection (asynchronous event %d)", event)
	}
	s.log.Info("iscsi: asynchronous event ignored", "event", event)
	return nil
}

func (s *Session) onRejectLocked(c *conn, h *pdu) error {
	s.statSNLocked(c, h.statSN(), true)
	s.windowLocked(h.expCmdSN(), h.maxCmdSN())
	rej := &RejectError{Reason: h.bhs[2]}
	if len(h.data) < bhsLen {
		return fmt.Errorf("%w: %v", ErrProtocol, rej)
	}
	var orig pdu
	copy(orig.bhs[:], h.data[:bhsLen])
	switch orig.op() {
	case opNOPOut:
		if ch, ok := s.pings[orig.itt()]; ok {
			delete(s.pings, orig.itt())
			close(ch)
		}
		return nil
	case opSCSICmd, opDataOut:
		if t := s.tasks[orig.itt()]; t != nil {
			delete(s.tasks, orig.itt())
			s.finishLocked(t, scsi.Result{}, fmt.Errorf("%s: %w", cdbName(t.cdb), rej))
		}
		// The CmdSN stream may now have a hole the target will wait on forever:
		// start over on a new connection.
		return rej
	}
	s.log.Warn("iscsi: PDU rejected", "op", orig.op().String(), "err", rej)
	return nil
}

// connLost hands the tasks of a failed connection back for re-sending and starts
// reconnecting.
func (s *Session) connLost(c *conn, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != c {
		return
	}
	s.c = nil
	s.pings = map[uint32]chan []byte{} // their waiters watch c.done
	closing := s.state == stateClosing || s.state == stateClosed
	var requeue []*task
	for _, t := range s.tasks {
		switch {
		case t.abandoned:
			s.finishLocked(t, scsi.Result{}, ErrConnectionLost)
		case closing:
			s.finishLocked(t, scsi.Result{}, fmt.Errorf("%s: %w: outcome unknown", cdbName(t.cdb), ErrSessionClosed))
		case t.internal || s.opts.ReconnectTimeout < 0:
			s.finishLocked(t, scsi.Result{}, fmt.Errorf("%s: %w: %v: outcome unknown", cdbName(t.cdb), ErrConnectionLost, err))
		case t.sends > s.opts.MaxRetries:
			s.finishLocked(t, scsi.Result{}, fmt.Errorf("%s: %w: sent %d times without an answer: outcome unknown", cdbName(t.cdb), ErrConnectionLost, t.sends))
		default:
			requeue = append(requeue, t)
		}
	}
	s.tasks = map[uint32]*task{}
	if closing {
		return
	}
	slices.SortFunc(requeue, func(a, b *task) int { return cmp.Compare(a.order, b.order) })
	for _, t := range requeue {
		t.queued = true
		t.cur.Store(nil)
	}
	s.sendq = append(requeue, s.sendq...)
	s.lastErr = err
	s.log.Warn("iscsi: connection lost", "target", s.u.Target, "addr", s.u.Addr(), "conn", c.id, "err", err, "interrupted", len(requeue))
	if s.opts.ReconnectTimeout < 0 {
		s.goDownLocked()
		return
	}
	if s.state == stateUp {
		s.state = stateRecovering
		s.lostAt = time.Now()
		lostAt := s.lostAt
		if s.downTimer != nil {
			s.downTimer.Stop()
		}
		// Commands wait for the reconnect at most ReconnectTimeout, however long
		// individual login attempts take.
		s.downTimer = time.AfterFunc(s.opts.ReconnectTimeout, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.state == stateRecovering && s.lostAt.Equal(lostAt) {
				s.goDownLocked()
			}
		})
	}
	if !s.reconnecting {
		s.reconnecting = true
		s.wg.Add(1)
		go s.reconnectLoop()
	}
}

// goDownLocked fails everything waiting: the target has been unreachable too long.
func (s *Session) goDownLocked() {
	for _, t := range s.sendq {
		outcome := "not sent"
		if t.sends > 0 {
			outcome = "outcome unknown"
		}
		s.finishLocked(t, scsi.Result{}, fmt.Errorf("%s: %w to %s: %v: %s", cdbName(t.cdb), ErrConnectionLost, s.u.Addr(), s.lastErr, outcome))
	}
	s.sendq = nil
	s.state = stateDown
	s.log.Error("iscsi: target unreachable; failing commands until it is back", "target", s.u.Target, "addr", s.u.Addr(), "err", s.lastErr)
}

func (s *Session) reconnectLoop() {
	defer s.wg.Done()
	s.mu.Lock()
	wait := time.Duration(s.params.DefaultTime2Wait) * time.Second
	s.mu.Unlock()
	backoff := 100 * time.Millisecond
	for {
		// DefaultTime2Wait is the minimum wait before the implicit logout that session
		// reinstatement is (RFC 7143 section 13.15); then back off.
		if !sleepCtx(s.ctx, wait) {
			s.stopReconnecting()
			return
		}
		wait = backoff
		backoff = min(backoff*2, 5*time.Second)

		s.mu.Lock()
		if s.state == stateClosing || s.state == stateClosed {
			s.reconnecting = false
			s.mu.Unlock()
			return
		}
		if s.state == stateRecovering && time.Since(s.lostAt) > s.opts.ReconnectTimeout {
			s.goDownLocked()
		}
		s.mu.Unlock()

		ctx, cancel := context.WithTimeout(s.ctx, s.opts.Timeout)
		c, res, err := s.connect(ctx)
		cancel()
		if err != nil {
			s.mu.Lock()
			s.lastErr = err
			s.mu.Unlock()
			s.log.Warn("iscsi: re-login failed", "target", s.u.Target, "addr", s.u.Addr(), "err", err)
			continue
		}
		s.mu.Lock()
		if s.state == stateClosing || s.state == stateClosed {
			s.reconnecting = false
			s.mu.Unlock()
			c.nc.Close()
			return
		}
		s.installLocked(c, res)
		s.state = stateRecovering
		s.stats.Reconnects++
		s.mu.Unlock()
		c.start()
		s.log.Info("iscsi: logged in again", "target", s.u.Target, "conn", c.id, "tsih", res.tsih)

		hookErr := s.recover()
		s.mu.Lock()
		if s.state == stateClosing || s.state == stateClosed {
			s.reconnecting = false
			s.mu.Unlock()
			return // Close owns the connection now
		}
		if s.c != c {
			s.mu.Unlock()
			continue // lost again during recovery
		}
		if hookErr != nil {
			s.log.Error("iscsi: reconnect hook failed; failing interrupted commands", "err", hookErr)
			kept := s.sendq[:0]
			for _, t := range s.sendq {
				if t.sends > 0 {
					s.finishLocked(t, scsi.Result{}, fmt.Errorf("%s: after reconnect: %w", cdbName(t.cdb), hookErr))
				} else {
					kept = append(kept, t)
				}
			}
			s.sendq = kept
		}
		s.state = stateUp
		s.reconnecting = false
		if s.downTimer != nil {
			s.downTimer.Stop()
		}
		s.pumpLocked()
		s.mu.Unlock()
		return
	}
}

func (s *Session) stopReconnecting() {
	s.mu.Lock()
	s.reconnecting = false
	s.mu.Unlock()
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// recover runs on a fresh connection before interrupted commands are re-sent: it
// collects the UNIT ATTENTION every new I_T nexus starts with (so re-sent commands are
// not refused with it) and runs the caller's hook.
func (s *Session) recover() error {
	ctx, cancel := context.WithTimeout(withInternal(s.ctx), s.opts.Timeout)
	defer cancel()
	s.clearUnitAttention(ctx, s.lun)
	if s.opts.OnReconnect == nil {
		return nil
	}
	return s.opts.OnReconnect(ctx, s)
}

// clearUnitAttention sends TEST UNIT READY until no UNIT ATTENTION is pending.
func (s *Session) clearUnitAttention(ctx context.Context, lun uint64) {
	for i := 0; i < 8; i++ {
		res, err := s.execute(ctx, lun, scsi.TestUnitReady(), scsi.None, nil)
		if err != nil {
			return
		}
		var cc *scsi.CheckCondition
		if !errors.As(res.Err(), &cc) || !cc.IsUnitAttention() {
			return
		}
		s.log.Debug("iscsi: unit attention cleared", "lun", lun, "sense", cc.Sense.String())
	}
}

func (s *Session) installLocked(c *conn, res *loginResult) {
	s.c = c
	s.params = res.params
	s.tsih = res.tsih
	s.cmdSN = res.expCmdSN
	s.expCmdSN = res.expCmdSN
	s.maxCmdSN = res.maxCmdSN
	c.expStatSN.Store(res.expStatSN)
	s.stats.Logins++
}

// connect dials and logs in, following login redirections.
func (s *Session) connect(ctx context.Context) (*conn, *loginResult, error) {
	addr := s.u.Addr()
	for hop := 0; ; hop++ {
		nc, err := s.opts.Dialer(ctx, "tcp", addr)
		if err != nil {
			return nil, nil, err
		}
		s.mu.Lock()
		s.connID++
		id := s.connID
		s.mu.Unlock()
		cfg := loginConfig{
			initiatorName: s.opts.InitiatorName,
			targetName:    s.u.Target,
			isid:          s.isid,
			cmdSN:         1,
			user:          s.opts.User,
			secret:        s.opts.Secret,
			want:          s.opts.want(),
		}
		res, err := loginOn(ctx, nc, cfg, s.opts.Timeout)
		var le *LoginError
		if errors.As(err, &le) && le.Class == 1 && le.Redirect != "" && hop < 3 {
			nc.Close()
			addr = redirectAddr(le.Redirect)
			s.log.Info("iscsi: login redirected", "to", addr)
			continue
		}
		if err != nil {
			nc.Close()
			return nil, nil, err
		}
		return newConn(s, nc, res.params, id), res, nil
	}
}

// redirectAddr turns a TargetAddress value ("host:port,tpgt", "[v6]:port,tpgt") into a
// dial address.
func redirectAddr(v string) string {
	if i := strings.LastIndex(v, ","); i >= 0 {
		v = v[:i]
	}
	if _, _, err := net.SplitHostPort(v); err != nil {
		return net.JoinHostPort(strings.Trim(v, "[]"), strconv.Itoa(DefaultPort))
	}
	return v
}

var errTargetHungUp = errors.New("target closed the connection")

// hungUp: a target that closes without reading our request makes the kernel send a
// reset, so ECONNRESET/EPIPE mean the same as a clean EOF here.
func hungUp(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// syncExchanger runs the login (and discovery) request/response exchange directly on
// the socket, before the reader and writer goroutines exist.
type syncExchanger struct {
	nc net.Conn
}

func (x syncExchanger) exchange(req *pdu) (*pdu, error) {
	if _, err := x.nc.Write(req.marshal()); err != nil {
		if hungUp(err) {
			return nil, errTargetHungUp
		}
		return nil, err
	}
	for {
		p, err := readPDU(x.nc, 1<<20)
		if errors.Is(err, errNotPDU) {
			return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, errLoginTimeout
			}
			if hungUp(err) {
				return nil, errTargetHungUp
			}
			return nil, err
		}
		if p.op() == opNOPIn { // a target ping during a long exchange: not an answer
			continue
		}
		return p, nil
	}
}

func loginOn(ctx context.Context, nc net.Conn, cfg loginConfig, timeout time.Duration) (*loginResult, error) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(timeout)
	}
	nc.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	res, err := login(syncExchanger{nc}, cfg)
	if err != nil {
		if errors.Is(err, errLoginTimeout) || ctx.Err() != nil {
			if errors.Is(ctx.Err(), context.Canceled) {
				return nil, ctx.Err()
			}
			// Either the socket deadline or the context fired first: same story.
			return nil, fmt.Errorf("no answer to the login: %w", context.DeadlineExceeded)
		}
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return res, nil
}

// probeLUN checks with INQUIRY that a logical unit exists at the URL's LUN.
func (s *Session) probeLUN(ctx context.Context) error {
	buf := make([]byte, 96)
	res, err := s.Execute(ctx, scsi.Inquiry(false, 0, uint16(len(buf))), scsi.In, buf)
	if err == nil {
		err = res.Err()
	}
	missing := errors.Is(err, scsi.ASCLUNotSupported)
	if err == nil {
		inq, perr := scsi.ParseInquiry(buf[:len(buf)-max(res.Residual, 0)])
		if perr != nil {
			return fmt.Errorf("iscsi: %s: INQUIRY: %w", s.u.String(), perr)
		}
		missing = !inq.Present()
	}
	if missing {
		return fmt.Errorf("%s: %w: target %s has %s", s.u.String(), ErrNoSuchLUN, s.u.Target, s.describeLUNs(ctx))
	}
	if err != nil {
		return fmt.Errorf("iscsi: %s: INQUIRY: %w", s.u.String(), err)
	}
	return nil
}

func (s *Session) describeLUNs(ctx context.Context) string {
	buf := make([]byte, 1024)
	n, err := scsi.Exec(ctx, s.LUN(0), scsi.ReportLUNs(uint32(len(buf))), scsi.In, buf, 3, nil)
	if err != nil {
		return "LUNs that REPORT LUNS did not list (" + err.Error() + ")"
	}
	luns, err := scsi.ParseReportLUNs(buf[:n])
	if err != nil || len(luns) == 0 {
		return "no LUNs"
	}
	ls := make([]string, len(luns))
	for i, l := range luns {
		ls[i] = strconv.FormatUint(l, 10)
	}
	return "LUNs " + strings.Join(ls, ", ")
}

// Ping sends a NOP-Out and waits for the target's NOP-In echo.
func (s *Session) Ping(ctx context.Context) error {
	s.mu.Lock()
	c := s.c
	st := s.state
	s.mu.Unlock()
	if st == stateClosing || st == stateClosed {
		return ErrSessionClosed
	}
	if c == nil || st != stateUp {
		return fmt.Errorf("%w: not connected", ErrConnectionLost)
	}
	data := make([]byte, 8)
	binary.BigEndian.PutUint64(data, uint64(time.Now().UnixNano()))
	return s.pingOn(ctx, c, data)
}

func (s *Session) pingOn(ctx context.Context, c *conn, data []byte) error {
	s.mu.Lock()
	if s.c != c {
		s.mu.Unlock()
		return errStale
	}
	itt := s.allocITTLocked()
	ch := make(chan []byte, 1)
	s.pings[itt] = ch
	p := &pdu{data: data}
	p.bhs[0] = byte(opNOPOut) | flagImmediate
	p.bhs[1] = flagFinal
	p.setU32(16, itt)
	p.setU32(20, reservedTag)
	p.setU32(24, s.cmdSN)
	c.enqueue(outItem{pdu: p})
	s.stats.Pings++
	s.mu.Unlock()
	select {
	case echo, ok := <-ch:
		if !ok {
			return errors.New("NOP-Out rejected")
		}
		if !bytes.Equal(echo, data) {
			return fmt.Errorf("%w: NOP-In echoed %d bytes of %d", ErrProtocol, len(echo), len(data))
		}
		return nil
	case <-c.done:
		return fmt.Errorf("%w: %v", ErrConnectionLost, c.err)
	case <-ctx.Done():
		s.mu.Lock()
		delete(s.pings, itt)
		s.mu.Unlock()
		return fmt.Errorf("no NOP-In: %w", ctx.Err())
	}
}

// Close waits (up to Options.Timeout) for commands in flight, logs out and closes the
// connection. Commands still waiting fail with ErrSessionClosed.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.state == stateClosing || s.state == stateClosed {
		s.mu.Unlock()
		return nil
	}
	s.state = stateClosing
	for _, t := range s.sendq {
		s.finishLocked(t, scsi.Result{}, ErrSessionClosed)
	}
	s.sendq = nil
	c := s.c
	if s.downTimer != nil {
		s.downTimer.Stop()
	}
	s.mu.Unlock()
	s.cancel() // stops reconnecting

	if c != nil {
		deadline := time.Now().Add(s.opts.Timeout)
		for {
			s.mu.Lock()
			busy := len(s.tasks)
			s.mu.Unlock()
			if busy == 0 || time.Now().After(deadline) {
				break
			}
			select {
			case <-c.done:
			case <-time.After(5 * time.Millisecond):
			}
		}
		s.logout(c, time.Until(deadline))
		c.fail(ErrSessionClosed)
	}
	s.mu.Lock()
	s.state = stateClosed
	for _, t := range s.tasks {
		s.finishLocked(t, scsi.Result{}, ErrSessionClosed)
	}
	s.tasks = map[uint32]*task{}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Session) logout(c *conn, timeout time.Duration) {
	if timeout < time.Second {
		timeout = time.Second
	}
	s.mu.Lock()
	if s.c != c {
		s.mu.Unlock()
		return
	}
	itt := s.allocITTLocked()
	ch := make(chan []byte, 1)
	s.pings[itt] = ch
	p := &pdu{}
	p.bhs[0] = byte(opLogoutReq) | flagImmediate
	p.bhs[1] = flagFinal | 0 // reason 0: close the session
	p.setU32(16, itt)
	p.setU32(24, s.cmdSN)
	c.enqueue(outItem{pdu: p})
	s.mu.Unlock()
	select {
	case <-ch:
	case <-c.done:
	case <-time.After(timeout):
		s.log.Warn("iscsi: no logout response", "target", s.u.Target)
	}
}
