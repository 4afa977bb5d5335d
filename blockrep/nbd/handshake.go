package nbd

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

var be = binary.BigEndian

// errHangUp ends the option phase with a hard disconnect (already logged if useful).
var errHangUp = errors.New("hang up")

// negotiate runs the fixed newstyle handshake. It returns nil once the connection has
// entered the transmission phase.
func (c *conn) negotiate() error {
	if d := c.s.handshakeTimeout(); d > 0 {
		c.nc.SetDeadline(time.Now().Add(d))
	}
	var g [18]byte
	be.PutUint64(g[0:], nbdMagic)
	be.PutUint64(g[8:], optMagic)
	be.PutUint16(g[16:], flagFixedNewstyle|flagNoZeroes)
	c.bw.Write(g[:])
	if err := c.bw.Flush(); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return err
	}
	flags := be.Uint32(cf[:])
	if flags&^(clientFixedNewstyle|clientNoZeroes) != 0 {
		return fmt.Errorf("unknown client flags %#x", flags)
	}
	c.fixed = flags&clientFixedNewstyle != 0
	c.noZeroes = flags&clientNoZeroes != 0

	for {
		var h [16]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return err
		}
		if m := be.Uint64(h[0:]); m != optMagic {
			return fmt.Errorf("bad option magic %#x", m)
		}
		opt, n := be.Uint32(h[8:]), be.Uint32(h[12:])
		if !c.fixed && opt != optExportName {
			// Plain newstyle knows no option replies.
			return fmt.Errorf("option %d from a client without fixed newstyle", opt)
		}
		if n > maxOptionLen {
			if opt == optExportName { // cannot be answered with an error
				return fmt.Errorf("export name of %d bytes", n)
			}
			// Skip without buffering it; the handshake deadline bounds a slow sender.
			if _, err := c.br.Discard(int(n)); err != nil {
				return err
			}
			if err := c.optReply(opt, repErrTooBig, "option data too large"); err != nil {
				return err
			}
			continue
		}
		if cap(c.opt) < int(n) {
			c.opt = make([]byte, n, max(n, 512))
		}
		data := c.opt[:n]
		if _, err := io.ReadFull(c.br, data); err != nil {
			return err
		}
		done, err := c.option(opt, data)
		if err != nil || done {
			return err
		}
	}
}

// option handles one option; done reports entry into the transmission phase.
func (c *conn) option(opt uint32, data []byte) (done bool, err error) {
	if c.tls.Require && !c.tlsOn && opt != optStartTLS && opt != optAbort {
		if opt == optExportName { // cannot be answered: hang up, as proto.md says
			return false, errors.New("NBD_OPT_EXPORT_NAME before TLS on a TLS-only export")
		}
		return false, c.optReply(opt, repErrTLSReqd, "TLS is required: send NBD_OPT_STARTTLS first")
	}
	switch opt {
	case optExportName:
		return true, c.exportName(string(data))
	case optAbort:
		c.optReply(opt, repAck, "")
		return false, errHangUp
	case optList:
		return false, c.list(data)
	case optStartTLS:
		if len(data) != 0 {
			return false, c.optReply(opt, repErrInvalid, "NBD_OPT_STARTTLS carries no data")
		}
		return false, c.startTLS()
	case optInfo, optGo:
		return c.infoGo(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			return false, c.optReply(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY carries no data")
		}
		c.structured = true
		return false, c.optReply(opt, repAck, "")
	case optListMetaContext, optSetMetaContext:
		return false, c.metaContext(opt, data)
	}
	return false, c.optReply(opt, repErrUnsup, fmt.Sprintf("option %d is not supported", opt))
}

// optReply sends a final option reply; for errors msg becomes the reply's data.
func (c *conn) optReply(opt, typ uint32, msg string) error {
	c.optHeader(opt, typ, len(msg))
	c.bw.WriteString(msg)
	return c.bw.Flush()
}

// optHeader starts an option reply of n data bytes; the caller writes the data.
func (c *conn) optHeader(opt, typ uint32, n int) {
	var h [20]byte
	be.PutUint64(h[0:], optReplyMagic)
	be.PutUint32(h[8:], opt)
	be.PutUint32(h[12:], typ)
	be.PutUint32(h[16:], uint32(n))
	c.bw.Write(h[:])
}

func (c *conn) refusal(opt uint32, err error) error {
	typ := uint32(repErrPolicy)
	switch {
	case errors.Is(err, ErrUnknownExport):
		typ = repErrUnknown
	case errors.Is(err, blockrep.ErrShuttingDown):
		typ = repErrShutdown
	}
	return c.optReply(opt, typ, truncate(err.Error()))
}

func truncate(s string) string {
	if len(s) > maxString {
		return s[:maxString]
	}
	return s
}

func (c *conn) exportName(name string) error {
	exp, seq, err := c.s.lookup(name)
	if err == nil {
		err = c.s.attach(c, canonical(exp, name), seq)
	}
	if err != nil {
		// NBD_OPT_EXPORT_NAME cannot fail politely.
		c.log.Info("nbd: refusing export", "export", name, "err", err)
		return errHangUp
	}
	c.setExport(exp, name)
	var r [10 + 124]byte
	be.PutUint64(r[0:], uint64(c.size))
	be.PutUint16(r[8:], c.tflags)
	if c.noZeroes {
		c.bw.Write(r[:10])
	} else {
		c.bw.Write(r[:])
	}
	return c.bw.Flush()
}

func canonical(exp *Export, requested string) string {
	if exp.Name != "" {
		return exp.Name
	}
	return requested
}

func (c *conn) list(data []byte) error {
	if len(data) != 0 {
		return c.optReply(optList, repErrInvalid, "NBD_OPT_LIST carries no data")
	}
	if c.s.List == nil {
		return c.optReply(optList, repErrPolicy, "listing exports is disabled")
	}
	for _, name := range c.s.List() {
		if len(name) > maxString {
			continue
		}
		c.optHeader(optList, repServer, 4+len(name))
		var l [4]byte
		be.PutUint32(l[:], uint32(len(name)))
		c.bw.Write(l[:])
		c.bw.WriteString(name)
	}
	return c.optReply(optList, repAck, "")
}

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO (same request and reply layout).
func (c *conn) infoGo(opt uint32, data []byte) (done bool, err error) {
	if len(data) < 6 {
		return false, c.optReply(opt, repErrInvalid, "option data too short")
	}
	nl := be.Uint32(data)
	if nl > uint32(len(data)-6) {
		return false, c.optReply(opt, repErrInvalid, "export name length exceeds the option")
	}
	if nl > maxString {
		return false, c.optReply(opt, repErrInvalid, "export name too long")
	}
	name := string(data[4 : 4+nl])
	rest := data[4+nl:]
	nreq := int(be.Uint16(rest))
	if len(rest) != 2+2*nreq {
		return false, c.optReply(opt, repErrInvalid, "information request count does not match the option length")
	}
	var wantName, wantDesc bool
	for i := range nreq {
		switch be.Uint16(rest[2+2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}

	exp, seq, err := c.s.lookup(name)
	if err != nil {
		c.log.Debug("nbd: refusing export", "export", name, "err", err)
		return false, c.refusal(opt, err)
	}
	cname := canonical(exp, name)
	size := exp.Backend.Size()
	tflags := transmissionFlags(exp.Backend.Caps(), c.structured)

	var b [14]byte
	be.PutUint16(b[0:], infoExport)
	be.PutUint64(b[2:], uint64(size))
	be.PutUint16(b[10:], tflags)
	c.optHeader(opt, repInfo, 12)
	c.bw.Write(b[:12])
	if wantName {
		c.optHeader(opt, repInfo, 2+len(cname))
		be.PutUint16(b[0:], infoName)
		c.bw.Write(b[:2])
		c.bw.WriteString(cname)
	}
	if desc := truncate(exp.Description); wantDesc && desc != "" {
		c.optHeader(opt, repInfo, 2+len(desc))
		be.PutUint16(b[0:], infoDescription)
		c.bw.Write(b[:2])
		c.bw.WriteString(desc)
	}
	// Always sent: our maximum is below the spec's default of "unlimited".
	be.PutUint16(b[0:], infoBlockSize)
	be.PutUint32(b[2:], 1)
	be.PutUint32(b[6:], 4096)
	be.PutUint32(b[10:], uint32(c.s.maxRequest()))
	c.optHeader(opt, repInfo, 14)
	c.bw.Write(b[:14])

	if opt == optInfo {
		return false, c.optReply(opt, repAck, "")
	}
	if err := c.s.attach(c, cname, seq); err != nil {
		return false, c.refusal(opt, err)
	}
	if c.metaExport != name {
		c.meta = false // contexts were selected for another export
	}
	c.setExport(exp, name)
	return true, c.optReply(opt, repAck, "")
}

// metaContext answers NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT; we know
// one context, base:allocation.
func (c *conn) metaContext(opt uint32, data []byte) error {
	set := opt == optSetMetaContext
	if set {
		c.meta = false // replaced even when the option fails
	}
	if !c.structured {
		return c.optReply(opt, repErrInvalid, "structured replies must be negotiated first")
	}
	if len(data) < 8 {
		return c.optReply(opt, repErrInvalid, "option data too short")
	}
	nl := be.Uint32(data)
	if nl > uint32(len(data)-8) || nl > maxString {
		return c.optReply(opt, repErrInvalid, "bad export name length")
	}
	name := string(data[4 : 4+nl])
	rest := data[4+nl:]
	nq := be.Uint32(rest)
	rest = rest[4:]
	found := nq == 0 && !set // an empty list asks for everything we have
	for range nq {
		if len(rest) < 4 {
			return c.optReply(opt, repErrInvalid, "query count exceeds the option")
		}
		ql := be.Uint32(rest)
		if ql > uint32(len(rest)-4) || ql > maxString {
			return c.optReply(opt, repErrInvalid, "bad query length")
		}
		q := string(rest[4 : 4+ql])
		rest = rest[4+ql:]
		ns, leaf, ok := strings.Cut(q, ":")
		if !ok || ns == "" {
			return c.optReply(opt, repErrInvalid, "query lacks a namespace")
		}
		// Unknown namespaces and leaves are ignored; "base:" lists but never selects.
		if ns == "base" && (leaf == "allocation" || leaf == "" && !set) {
			found = true
		}
	}
	if len(rest) != 0 {
		return c.optReply(opt, repErrInvalid, "trailing data after the queries")
	}
	if found {
		id := uint32(0) // reserved in LIST replies
		if set {
			id = metaID
			c.meta, c.metaExport = true, name
		}
		c.optHeader(opt, repMetaContext, 4+len(metaContext))
		var b [4]byte
		be.PutUint32(b[:], id)
		c.bw.Write(b[:])
		c.bw.WriteString(metaContext)
	}
	return c.optReply(opt, repAck, "")
}

func transmissionFlags(cp blockrep.Caps, structured bool) uint16 {
	f := uint16(tfHasFlags)
	if cp.Flush {
		f |= tfSendFlush
	}
	if cp.ReadOnly {
		f |= tfReadOnly
	} else {
		if cp.FUA {
			f |= tfSendFUA
		}
		if cp.Trim {
			f |= tfSendTrim
		}
		if cp.Zero {
			f |= tfSendWriteZeroes
			if cp.FastZero {
				f |= tfSendFastZero
			}
		}
	}
	if cp.MultiConn {
		f |= tfCanMultiConn
	}
	if cp.Cache {
		f |= tfSendCache
	}
	if cp.Rotational {
		f |= tfRotational
	}
	if structured {
		f |= tfSendDF // every read is answered with one chunk anyway
	}
	return f
}

// startTLS answers NBD_OPT_STARTTLS: acknowledge, then the rest of the connection runs
// over TLS (the client waits for the acknowledgement before its TLS handshake).
func (c *conn) startTLS() error {
	switch {
	case c.tls.Config == nil:
		return c.optReply(optStartTLS, repErrPolicy, "TLS is not offered on this socket")
	case c.tlsOn:
		return c.optReply(optStartTLS, repErrInvalid, "TLS is already in use")
	case c.br.Buffered() > 0:
		return errors.New("data sent after NBD_OPT_STARTTLS before its reply")
	}
	if err := c.optReply(optStartTLS, repAck, ""); err != nil {
		return err
	}
	tc := tls.Server(c.nc, c.tls.Config)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.nc, c.tlsOn = tc, true
	c.br = bufio.NewReaderSize(tc, bufSize)
	c.bw = bufio.NewWriterSize(tc, bufSize)
	c.log.Debug("nbd: TLS established", "version", tls.VersionName(tc.ConnectionState().Version))
	return nil
}
