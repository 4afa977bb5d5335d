package config

import (
	"bytes"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"
)

// Dump writes the resource in DRBD syntax, normalized: common merged in,
// options printed only where they differ from the default (the protocol
// always), every on section in full, connections only where they differ
// from the implicit full mesh. Parse reads the output back to an equal
// Resource (positions aside). Ignored options are not kept, so not printed.
func (r *Resource) Dump(w io.Writer) error {
	d := &dumper{}
	d.line(0, "resource %s {", d.word(r.Name))

	defOpts, defDisk := DefaultOptions(), DefaultDiskOptions()
	d.section(1, "options", diffOptions(optionsTable, &r.Options, &defOpts, false))
	defNet := DefaultNetOptions()
	net := diffOptions(netTable, &r.Net, &defNet, false)
	if len(net) == 0 || net[0][0] != "protocol" {
		net = append([][2]string{{"protocol", r.Net.Protocol.String()}}, net...)
	}
	d.section(1, "net", net)
	d.section(1, "disk", diffOptions(diskTable, &r.Disk, &defDisk, false))
	d.mapSection(1, "handlers", r.Handlers, true)
	d.mapSection(1, "startup", r.Startup, false)
	if r.Promoter != nil {
		def := DefaultPromoter()
		d.promoter(1, r.Promoter, &def)
	}

	for _, h := range r.Hosts {
		d.line(1, "on %s {", d.word(h.Name))
		d.line(2, "node-id %d;", h.NodeID)
		if h.Address != "" {
			d.line(2, "address %s;", d.addr(h.Address))
		}
		depth := 2
		if r.Volume != 0 {
			d.line(2, "volume %d {", r.Volume)
			depth = 3
		}
		if h.Device != "" {
			words := strings.Fields(h.Device) // parseDevice rejects blanks inside a path
			for i, w := range words {
				words[i] = d.word(w)
			}
			d.line(depth, "device %s;", strings.Join(words, " "))
		}
		d.line(depth, "disk %s;", d.word(h.Disk))
		if h.MetaIndex >= 0 {
			d.line(depth, "meta-disk %s [%d];", d.word(h.MetaDisk), h.MetaIndex)
		} else {
			d.line(depth, "meta-disk %s;", d.word(h.MetaDisk))
		}
		if r.Volume != 0 {
			d.line(2, "}")
		}
		if h.DiskOptions != nil {
			// Printed even when empty: the host then has its own disk options.
			d.line(2, "disk {")
			for _, o := range diffOptions(diskTable, h.DiskOptions, &r.Disk, false) {
				d.line(3, "%s %s;", o[0], d.word(o[1]))
			}
			d.line(2, "}")
		}
		if h.TLSCertificate != "" {
			d.line(2, "tls-certificate %s;", d.word(h.TLSCertificate))
		}
		if h.TLSKey != "" {
			d.line(2, "tls-key %s;", d.word(h.TLSKey))
		}
		if h.ExportTLS != "" {
			d.line(2, "export-tls %s;", h.ExportTLS)
		}
		if h.ExportAllowAny {
			d.line(2, "export-allow-any yes;")
		}
		if h.Export != "" {
			d.line(2, "export %s;", d.addr(h.Export))
		}
		if h.InitiatorName != "" {
			d.line(2, "initiator-name %s;", d.word(h.InitiatorName))
		}
		if h.Promoter != nil {
			d.promoter(2, h.Promoter, nil)
		}
		d.line(1, "}")
	}

	if !r.implicitConns() {
		for _, c := range r.Conns {
			d.line(1, "connection {")
			for _, e := range []struct{ name, addr, outside string }{{c.A.Name, c.AddrA, c.OutsideA}, {c.B.Name, c.AddrB, c.OutsideB}} {
				if e.outside != "" {
					d.line(2, "host %s address %s via outside-address %s;", d.word(e.name), d.addr(e.addr), d.addr(e.outside))
				} else {
					d.line(2, "host %s address %s;", d.word(e.name), d.addr(e.addr))
				}
			}
			d.section(2, "net", diffOptions(netTable, &c.Net, &r.Net, false))
			d.section(2, "disk", diffOptions(diskTable, &c.Disk, &r.Disk, true))
			d.line(1, "}")
		}
	}
	d.line(0, "}")
	if d.err != nil {
		return d.err
	}
	_, err := w.Write(d.buf.Bytes())
	return err
}

// implicitConns reports whether the connections are exactly what the
// implicit mesh would give, so Dump can leave them out.
func (r *Resource) implicitConns() bool {
	mesh, err := implicitMesh(r)
	if err != nil || len(mesh) != len(r.Conns) {
		return false
	}
	for i, m := range mesh {
		c := *r.Conns[i]
		c.Pos = m.Pos
		if !reflect.DeepEqual(&c, m) {
			return false
		}
	}
	return true
}

// diffOptions lists the options whose value in o differs from base, in table order.
func diffOptions[T any](table []option[T], o, base *T, peerOnly bool) [][2]string {
	var out [][2]string
	for _, opt := range table {
		if peerOnly && !opt.peer {
			continue
		}
		if v := opt.format(o); v != opt.format(base) {
			out = append(out, [2]string{opt.name, v})
		}
	}
	return out
}

// addr prints an address the way DRBD wants IPv6 ones: with the family.
// An IPv6 zone may hold anything, hence word.
func (d *dumper) addr(a string) string {
	if strings.HasPrefix(a, "[") {
		return "ipv6 " + d.word(a)
	}
	return d.word(a)
}

type dumper struct {
	buf bytes.Buffer
	err error
}

func (d *dumper) line(depth int, format string, args ...any) {
	d.buf.WriteString(strings.Repeat("    ", depth))
	fmt.Fprintf(&d.buf, format, args...)
	d.buf.WriteByte('\n')
}

func (d *dumper) section(depth int, name string, opts [][2]string) {
	if len(opts) == 0 {
		return
	}
	d.line(depth, "%s {", name)
	for _, o := range opts {
		d.line(depth+1, "%s %s;", o[0], d.word(o[1]))
	}
	d.line(depth, "}")
}

func (d *dumper) mapSection(depth int, name string, m map[string]string, quoted bool) {
	if len(m) == 0 {
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	d.line(depth, "%s {", name)
	for _, k := range keys {
		switch v := m[k]; {
		case quoted:
			d.line(depth+1, "%s %s;", k, d.quote(v))
		case v == "":
			d.line(depth+1, "%s;", k) // a bare startup flag
		default:
			d.line(depth+1, "%s %s;", k, d.word(v))
		}
	}
	d.line(depth, "}")
}

// word prints s as a bare word when the lexer would read it back as one.
func (d *dumper) word(s string) string {
	if s != "" && s[0] != '#' && !strings.ContainsAny(s, " \t\n\r\f\v{};\"") {
		return s
	}
	return d.quote(s)
}

func (d *dumper) quote(s string) string {
	if strings.ContainsRune(s, '\n') {
		d.err = fmt.Errorf("cannot write %q: DRBD syntax has no newline in values", s)
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
