package config

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

// Pos is a position in a configuration file.
type Pos struct {
	File string
	Line int
}

func (p Pos) String() string { return p.File + ":" + strconv.Itoa(p.Line) }

// Warning reports something accepted but without effect, such as a DRBD
// option blockrep ignores.
type Warning struct {
	Pos Pos
	Msg string
}

func (w Warning) String() string { return w.Pos.String() + ": " + w.Msg }

// Error is a configuration error at a position. Load and Parse return it for
// every problem found in a file's content (use errors.As); I/O errors of the
// files Load lists itself are returned as they are.
type Error struct {
	Pos Pos
	Msg string
}

func (e *Error) Error() string { return e.Pos.String() + ": " + e.Msg }

func errorf(p Pos, format string, args ...any) error {
	return &Error{Pos: p, Msg: fmt.Sprintf(format, args...)}
}

// Config is everything read from a configuration directory or file.
type Config struct {
	Resources []*Resource // in file order
	Warnings  []Warning   // accepted-and-ignored DRBD options etc.
}

// Resource returns the resource called name.
func (c *Config) Resource(name string) (*Resource, error) {
	for _, r := range c.Resources {
		if r.Name == name {
			return r, nil
		}
	}
	if len(c.Resources) == 0 {
		return nil, fmt.Errorf("unknown resource %q (no resources defined)", name)
	}
	return nil, fmt.Errorf("unknown resource %q (defined: %s)", name, strings.Join(c.Names(), ", "))
}

// Names returns the resource names in file order.
func (c *Config) Names() []string {
	names := make([]string, len(c.Resources))
	for i, r := range c.Resources {
		names[i] = r.Name
	}
	return names
}

// Resource is one replicated volume as every node sees it.
type Resource struct {
	Name     string
	Pos      Pos
	Hosts    []*Host // "on" sections, file order
	Options  Options
	Disk     DiskOptions
	Net      NetOptions        // resource-level (common merged in), defaults applied
	Handlers map[string]string // handler name -> command
	Startup  map[string]string // startup options kept verbatim ("" for a bare flag)
	// Conns are explicit connection / connection-mesh sections expanded to
	// pairs, or the implicit full mesh when there are none.
	Conns []*Connection
	// Volume is the DRBD volume number of the resource's one volume (0
	// unless its volume sections say otherwise).
	Volume int
	// Promoter is the resource-level promoter section (blockrep extension),
	// defaults applied; nil when absent. PromoterFor gives a node's settings.
	Promoter *Promoter
}

// Host returns the "on node" section. Names match as drbdadm matches them:
// case-insensitively, and a short name matches a fully qualified one with
// the same first label (but two fully qualified names must be equal).
func (r *Resource) Host(node string) (*Host, error) {
	for _, h := range r.Hosts {
		if h.Name == node {
			return h, nil
		}
	}
	var found []*Host
	for _, h := range r.Hosts {
		if hostnamesEqual(h.Name, node) {
			found = append(found, h)
		}
	}
	names := make([]string, len(r.Hosts))
	for i, h := range r.Hosts {
		names[i] = h.Name
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return nil, fmt.Errorf("resource %s has no \"on %s\" section (hosts: %s)", r.Name, node, strings.Join(names, ", "))
	}
	return nil, fmt.Errorf("resource %s: %s matches several hosts (hosts: %s)", r.Name, node, strings.Join(names, ", "))
}

// hostnamesEqual is drbdadm's rule: two fully qualified names must be
// equal; otherwise the first labels must be. DNS names ignore case.
func hostnamesEqual(a, b string) bool {
	ia, ib := strings.IndexByte(a, '.'), strings.IndexByte(b, '.')
	if ia >= 0 && ib >= 0 {
		return strings.EqualFold(a, b)
	}
	if ia < 0 {
		ia = len(a)
	}
	if ib < 0 {
		ib = len(b)
	}
	return strings.EqualFold(a[:ia], b[:ib])
}

// Peers returns every connection that involves node, seen from node, in
// connection order. node is matched as Host matches it.
func (r *Resource) Peers(node string) ([]*Peer, error) {
	me, err := r.Host(node)
	if err != nil {
		return nil, err
	}
	var peers []*Peer
	for _, c := range r.Conns {
		outA, outB := c.AddrA, c.AddrB
		if c.OutsideA != "" {
			outA = c.OutsideA
		}
		if c.OutsideB != "" {
			outB = c.OutsideB
		}
		switch me {
		case c.A:
			peers = append(peers, &Peer{Host: c.B, LocalAddress: c.AddrA, PeerAddress: outB, Net: c.Net, Disk: c.peerDisk(me), Pos: c.Pos})
		case c.B:
			peers = append(peers, &Peer{Host: c.A, LocalAddress: c.AddrB, PeerAddress: outA, Net: c.Net, Disk: c.peerDisk(me), Pos: c.Pos})
		}
	}
	return peers, nil
}

// peerDisk is the connection's disk options seen from host me: its own
// disk options, when it has any, with the connection's peer-device options
// applied.
func (c *Connection) peerDisk(me *Host) DiskOptions {
	if me.DiskOptions == nil {
		return c.Disk
	}
	d := *me.DiskOptions
	for _, s := range c.peerSecs {
		_ = applySection(&d, s, diskTable, secPeerDisk, nil) // checked when built
	}
	return d
}

// Host is one node's "on" section, with resource-level volume settings
// merged in.
type Host struct {
	Name      string
	Pos       Pos
	NodeID    int
	Address   string // "IP:PORT" (IPv6 as "[::1]:7789"); "" if none
	Disk      string // backing path; "none" = diskless
	MetaDisk  string // "internal" (the default) or a path
	MetaIndex int    // -1 = internal or flexible external; DRBD "meta-disk /dev/x [N]" index otherwise
	Device    string // "/dev/drbd0", "minor 0", "/dev/drbd0 minor 0" or "/dev/nbd0"; "" if unset
	Export    string // blockrep extension: TCP address "IP:PORT" for the NBD export; "" if unset
	// TLSCertificate and TLSKey (blockrep extensions in an on section): this node's
	// certificate and key for TLS peer links, overriding the net section's.
	TLSCertificate, TLSKey string
	// ExportTLS (blockrep extension export-tls yes|require): the TCP export offers NBD's
	// STARTTLS, or requires it; "" = no TLS. Certificates as for peer links.
	ExportTLS string
	// ExportAllowAny (blockrep extension export-allow-any): the operator chose to serve
	// the export on a wildcard address (0.0.0.0, ::).
	ExportAllowAny bool
	InitiatorName  string // blockrep extension (future iSCSI): initiator IQN; "" if unset
	// DiskOptions are this host's effective disk options when its on
	// section (or its volume) has a disk section: the resource's Disk with
	// them applied. nil means the resource's Disk.
	DiskOptions *DiskOptions
	// Promoter (blockrep extension) holds the statements of the on section's
	// promoter section only (zero where not given), overriding the resource's
	// for this node; nil when it has none. Resource.PromoterFor merges them.
	Promoter *Promoter
}

// Connection is one pair of hosts that replicate to each other.
type Connection struct {
	Pos          Pos // of the connection, connection-mesh or (implicit mesh) resource section
	A, B         *Host
	AddrA, AddrB string // each host's own address on this connection
	// OutsideA and OutsideB are the addresses the peer connects to when a
	// host is behind NAT ("via outside-address"); "" means AddrA / AddrB.
	OutsideA, OutsideB string
	Net                NetOptions  // effective: common < resource net < connection(-mesh) net
	Disk               DiskOptions // resource disk options with this connection's peer-device options applied
	peerSecs           []*stmt     // the connection's peer-device disk sections, for hosts with their own disk options
}

// Peer is a connection seen from one of its hosts.
type Peer struct {
	Host         *Host // the peer
	LocalAddress string
	PeerAddress  string      // where to reach the peer: its outside-address behind NAT, else its address
	Net          NetOptions  // effective: common < resource net < connection(-mesh) net
	Disk         DiskOptions // effective peer-device options (resync-rate, c-*)
	Pos          Pos
}

// NetOptions are a connection's options. Durations and sizes are converted
// from DRBD's units.
type NetOptions struct {
	Protocol          blockrep.Protocol
	SharedSecret      string
	CramHMACAlg       string        // "" or sha1|sha256|sha512
	Timeout           time.Duration // DRBD unit 0.1 s, default 6 s
	PingInt           time.Duration // default 10 s
	PingTimeout       time.Duration // DRBD unit 0.1 s, default 500 ms
	ConnectInt        time.Duration // default 10 s
	KoCount           int           // default 7
	MaxBuffers        int           // default 2048
	SndBufSize        int64         // bytes, 0 = auto
	RcvBufSize        int64         // bytes, 0 = auto
	AfterSB0Pri       string        // default "disconnect"
	AfterSB1Pri       string        // default "disconnect"
	AfterSB2Pri       string        // default "disconnect"
	AlwaysASBP        bool
	RRConflict        string // default "disconnect"
	OnCongestion      string // block (default) | pull-ahead
	CongestionFill    int64  // bytes (DRBD unit sectors), 0 = off
	CongestionExtents int    // default 1237
	Fencing           string // dont-care (default) | resource-only | resource-and-stonith
	CsumsAlg          string // "" = off
	VerifyAlg         string
	DataIntegrityAlg  string
	Compression       string // blockrep extension: none (default) | zstd | s2
	// TLS (DRBD 9.2's tls yes): peer links run over TLS 1.3 with mutual certificates.
	// TLSCertificate, TLSKey and TLSCA (blockrep extensions) name PEM files: this
	// node's certificate and key (an on section may give its own) and the CA both
	// sides' certificates must be signed by.
	TLS                           bool
	TLSCertificate, TLSKey, TLSCA string
	// AllowUnauthenticated (blockrep extension allow-unauthenticated): the operator
	// accepts peers on non-loopback addresses without a shared-secret.
	AllowUnauthenticated bool
	AllowTwoPrimaries    bool // always false: "yes" is rejected
}

// DiskOptions are a resource's disk options; the resync controller ones
// (resync-rate, c-*) may be overridden per connection.
type DiskOptions struct {
	OnIOError    string        // detach (default) | pass_on | call-local-io-error
	ALExtents    int           // default 1237, 67..65534
	ALUpdates    bool          // default true
	DiskFlushes  bool          // default true
	MDFlushes    bool          // default true
	ResyncRate   int64         // bytes/s; DRBD unit KiB/s, default 250 KiB/s
	CPlanAhead   time.Duration // DRBD unit 0.1 s, default 2 s; 0 = fixed resync-rate
	CFillTarget  int64         // bytes; DRBD unit sectors, default 100 sectors
	CDelayTarget time.Duration // DRBD unit 0.1 s, default 1 s
	CMaxRate     int64         // bytes/s; DRBD unit KiB/s, default 100 MiB/s
	CMinRate     int64         // bytes/s; DRBD unit KiB/s, default 250 KiB/s
	DiskTimeout  time.Duration // DRBD unit 0.1 s, default 0 = off
	Reservation  string        // blockrep extension for shared storage: "" | write-exclusive | write-exclusive-registrants-only | exclusive-access
}

// Options are a resource's "options" section.
type Options struct {
	Quorum                  string // off (default) | majority | all | N
	QuorumMinimumRedundancy string // off (default) | majority | all | N
	OnNoQuorum              string // suspend-io (default) | io-error
	OnNoDataAccessible      string // io-error (default) | suspend-io
	AutoPromote             bool   // default true
	Storage                 string // blockrep extension: replicated (default) | shared
	// HandlerTimeout (blockrep extension handler-timeout, seconds): a handler still
	// running then is killed and counts as failed. Default 60 s.
	HandlerTimeout time.Duration
}

// DefaultNetOptions returns DRBD's defaults (drbd_limits.h).
func DefaultNetOptions() NetOptions {
	return NetOptions{
		Protocol:          blockrep.ProtocolC,
		Timeout:           6 * time.Second,
		PingInt:           10 * time.Second,
		PingTimeout:       500 * time.Millisecond,
		ConnectInt:        10 * time.Second,
		KoCount:           7,
		MaxBuffers:        2048,
		AfterSB0Pri:       "disconnect",
		AfterSB1Pri:       "disconnect",
		AfterSB2Pri:       "disconnect",
		RRConflict:        "disconnect",
		OnCongestion:      "block",
		CongestionExtents: 1237,
		Fencing:           "dont-care",
		Compression:       "none",
	}
}

// DefaultDiskOptions returns DRBD's defaults (drbd_limits.h).
func DefaultDiskOptions() DiskOptions {
	return DiskOptions{
		OnIOError:    "detach",
		ALExtents:    1237,
		ALUpdates:    true,
		DiskFlushes:  true,
		MDFlushes:    true,
		ResyncRate:   250 << 10,
		CPlanAhead:   2 * time.Second,
		CFillTarget:  100 * 512,
		CDelayTarget: time.Second,
		CMaxRate:     102400 << 10,
		CMinRate:     250 << 10,
	}
}

// DefaultOptions returns DRBD's defaults plus blockrep's storage default.
func DefaultOptions() Options {
	return Options{
		Quorum:                  "off",
		QuorumMinimumRedundancy: "off",
		OnNoQuorum:              "suspend-io",
		OnNoDataAccessible:      "io-error",
		AutoPromote:             true,
		Storage:                 "replicated",
		HandlerTimeout:          60 * time.Second,
	}
}

// section identifies where a statement sits, for the tables and messages.
type section uint8

const (
	secTop section = 1 << iota
	secGlobal
	secOptions
	secNet
	secDisk
	secPeerDisk // a connection's disk section: peer-device options only
	secVolume   // a volume section's own options
)

func (s section) String() string {
	switch s {
	case secTop:
		return "top level"
	case secGlobal:
		return "global section"
	case secOptions:
		return "options section"
	case secNet:
		return "net section"
	case secDisk:
		return "disk section"
	case secPeerDisk:
		return "connection disk section"
	case secVolume:
		return "volume section"
	}
	return "section"
}

type ignoredOption struct {
	name  string
	in    section
	check func(s *stmt) error // the value must still be valid DRBD
}

// ignoredOptions is the one list of DRBD options that blockrep accepts, so
// existing .res files keep loading, but that have no effect. Each use yields
// a Warning. Everything not here and not implemented is an error: a typo must
// never silently change behaviour.
var ignoredOptions = []ignoredOption{
	{"require-drbd-module-version-eq", secTop, anyValue},
	{"require-drbd-module-version-ne", secTop, anyValue},
	{"require-drbd-module-version-gt", secTop, anyValue},
	{"require-drbd-module-version-ge", secTop, anyValue},
	{"require-drbd-module-version-lt", secTop, anyValue},
	{"require-drbd-module-version-le", secTop, anyValue},

	{"usage-count", secGlobal, oneOf("yes", "no", "ask")},
	{"udev-always-use-vnr", secGlobal, flagValue},
	{"disable-ip-verification", secGlobal, flagValue},
	{"dialog-refresh", secGlobal, anyValue},
	{"minor-count", secGlobal, anyValue},

	{"cpu-mask", secOptions, anyValue},
	{"twopc-timeout", secOptions, anyValue},
	{"twopc-retry-timeout", secOptions, anyValue},
	{"peer-ack-window", secOptions, anyValue},
	{"peer-ack-delay", secOptions, anyValue},
	{"max-io-depth", secOptions, anyValue},
	{"auto-promote-timeout", secOptions, anyValue},
	{"on-suspended-primary-outdated", secOptions, oneOf("disconnect", "force-secondary")},

	{"transport", secNet, oneOf("tcp")},
	{"load-balance-paths", secNet, flagValue},
	{"max-epoch-size", secNet, anyValue},
	{"tcp-cork", secNet, flagValue},
	{"use-rle", secNet, flagValue},
	{"sock-check-timeo", secNet, anyValue},
	{"csums-after-crash-only", secNet, flagValue},

	{"disk-barrier", secDisk, flagValue},
	{"disk-drain", secDisk, flagValue},
	{"read-balancing", secDisk, anyValue},
	{"rs-discard-granularity", secDisk, anyValue},
	{"discard-zeroes-if-aligned", secDisk, flagValue},
	{"disable-write-same", secDisk, flagValue},
	{"block-size", secDisk, anyValue},
	{"resync-after", secDisk, anyValue},
	{"bitmap", secDisk | secPeerDisk, flagValue},
	{"peer-tiebreaker", secDisk | secPeerDisk, flagValue},

	{"tiebreaker", secVolume, flagValue},
}

// IgnoredOptions returns the names of the DRBD options blockrep accepts and
// ignores, sorted, so documentation can be checked against the code.
func IgnoredOptions() []string {
	names := make([]string, len(ignoredOptions))
	for i, o := range ignoredOptions {
		names[i] = o.name
	}
	sort.Strings(names)
	return names
}

func findIgnored(in section, name string) *ignoredOption {
	for i := range ignoredOptions {
		if o := &ignoredOptions[i]; o.name == name && o.in&in != 0 {
			return o
		}
	}
	return nil
}

// ignore checks an ignored option's value and records the warning.
func ignore(o *ignoredOption, s *stmt, warn func(Pos, string)) error {
	if err := o.check(s); err != nil {
		return err
	}
	if warn != nil {
		warn(s.pos, fmt.Sprintf("DRBD option %q is accepted and ignored by blockrep", s.name))
	}
	return nil
}

func anyValue(s *stmt) error {
	_, err := oneArg(s)
	return err
}

func flagValue(s *stmt) error {
	_, err := parseBool(s)
	return err
}

func oneOf(values ...string) func(*stmt) error {
	return func(s *stmt) error {
		v, err := oneArg(s)
		if err != nil {
			return err
		}
		return checkEnum(s, v, values)
	}
}

// Shared reports whether r is a shared-storage resource (options { storage shared; }).
func (r *Resource) Shared() bool { return r.Options.Storage == "shared" }

// DefaultInitiatorPrefix names a node's iSCSI initiator when its on section sets none.
const DefaultInitiatorPrefix = "iqn.2024-01.io.blockrep:"

// Initiator is the node's iSCSI name: its initiator-name, or one derived from its name.
func (h *Host) Initiator() string {
	if h.InitiatorName != "" {
		return h.InitiatorName
	}
	return DefaultInitiatorPrefix + h.Name
}
