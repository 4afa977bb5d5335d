package config

import (
	"fmt"
	"hash/crc32"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/blockrep/blockrep/blockrep"
)

// sections holds the option sections of one level (common or a resource).
type sections struct {
	options, net, disk, handlers, startup *stmt
}

type builder struct {
	cfg    *Config
	common sections
	// promoters are the on sections' promoter sections with their positions,
	// for checks once all hosts are known.
	promoters map[*Host]promoterSec
}

func (b *builder) warn(p Pos, msg string) {
	b.cfg.Warnings = append(b.cfg.Warnings, Warning{Pos: p, Msg: msg})
}

// build turns the top-level statements of all files into a Config.
func build(top []*stmt) (*Config, error) {
	b := &builder{cfg: &Config{}, promoters: map[*Host]promoterSec{}}
	var global, common *stmt
	var resources []*stmt
	names := map[string]Pos{}
	for _, s := range top {
		switch s.name {
		case "global":
			if err := sectionOnce(&global, s, "configuration"); err != nil {
				return nil, err
			}
			for _, g := range s.block {
				ig := findIgnored(secGlobal, g.name)
				if ig == nil {
					return nil, unknownStmt(g, "global section")
				}
				if err := ignore(ig, g, b.warn); err != nil {
					return nil, err
				}
			}
		case "common":
			if err := sectionOnce(&common, s, "configuration"); err != nil {
				return nil, err
			}
			if err := b.commonSection(s); err != nil {
				return nil, err
			}
		case "resource":
			if !s.hasBlock || len(s.args) != 1 {
				return nil, errorf(s.pos, "want: resource NAME { ... }")
			}
			name := s.args[0]
			if err := checkResourceName(name); err != nil {
				return nil, errorf(s.pos, "%v", err)
			}
			if first, ok := names[name]; ok {
				return nil, errorf(s.pos, "resource %s defined twice (first at %s)", name, first)
			}
			names[name] = s.pos
			resources = append(resources, s)
		default:
			ig := findIgnored(secTop, s.name)
			if ig == nil {
				return nil, unknownStmt(s, secTop.String())
			}
			if err := ignore(ig, s, b.warn); err != nil {
				return nil, err
			}
		}
	}
	// Resources are built after all top-level statements: common applies to
	// every resource wherever it appears, as in drbdadm.
	for _, s := range resources {
		r, err := b.resource(s)
		if err != nil {
			return nil, err
		}
		b.cfg.Resources = append(b.cfg.Resources, r)
	}
	if err := checkUnique(b.cfg.Resources); err != nil {
		return nil, err
	}
	return b.cfg, nil
}

// checkResourceName keeps names usable in file names (<run-dir>/<resource>.nbd),
// export names and drbdadm-style command lines.
func checkResourceName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty resource name")
	case name == "all":
		return fmt.Errorf("resource name \"all\" is reserved")
	case name == "." || name == ".." || name[0] == '-':
		return fmt.Errorf("bad resource name %q", name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c == 0x7f || c == '/' {
			return fmt.Errorf("bad resource name %q: no whitespace, control characters or /", name)
		}
	}
	return nil
}

// sectionOnce stores an option section, rejecting a second one at the same level.
func sectionOnce(slot **stmt, s *stmt, where string) error {
	if !s.hasBlock {
		return errorf(s.pos, "%s must be a section: %s { ... }", s.name, s.name)
	}
	if len(s.args) != 0 {
		return errorf(s.pos, "%s section takes no arguments", s.name)
	}
	if *slot != nil {
		return errorf(s.pos, "%s section given twice in %s (first at %s)", s.name, where, (*slot).pos)
	}
	*slot = s
	return nil
}

func (secs *sections) add(s *stmt, where string) (bool, error) {
	var slot **stmt
	switch s.name {
	case "options":
		slot = &secs.options
	case "net":
		slot = &secs.net
	case "disk":
		slot = &secs.disk
	case "handlers":
		slot = &secs.handlers
	case "startup":
		slot = &secs.startup
	default:
		return false, nil
	}
	return true, sectionOnce(slot, s, where)
}

// commonSection records common's sections and checks them once, so their
// warnings and errors are reported once rather than per resource.
func (b *builder) commonSection(s *stmt) error {
	block, err := normalizeSections(s.block)
	if err != nil {
		return err
	}
	for _, c := range block {
		ok, err := b.common.add(c, "common section")
		if err != nil {
			return err
		}
		if !ok {
			return unknownStmt(c, "common section")
		}
	}
	r := newResource("", s.pos)
	return b.applyOptions(r, b.common, b.warn)
}

func newResource(name string, pos Pos) *Resource {
	return &Resource{
		Name:     name,
		Pos:      pos,
		Options:  DefaultOptions(),
		Disk:     DefaultDiskOptions(),
		Net:      DefaultNetOptions(),
		Handlers: map[string]string{},
		Startup:  map[string]string{},
	}
}

func (b *builder) applyOptions(r *Resource, secs sections, warn func(Pos, string)) error {
	if s := secs.options; s != nil {
		if err := applySection(&r.Options, s, optionsTable, secOptions, warn); err != nil {
			return err
		}
	}
	if s := secs.net; s != nil {
		if err := applySection(&r.Net, s, netTable, secNet, warn); err != nil {
			return err
		}
	}
	if s := secs.disk; s != nil {
		if err := applySection(&r.Disk, s, diskTable, secDisk, warn); err != nil {
			return err
		}
	}
	if s := secs.handlers; s != nil {
		if err := applyMap(r.Handlers, s, "handler", handlerNames, checkHandler); err != nil {
			return err
		}
	}
	if s := secs.startup; s != nil {
		if err := applyMap(r.Startup, s, "startup option", startupNames, checkStartup); err != nil {
			return err
		}
	}
	return nil
}

// applyMap fills handlers or startup options; a later level overrides an
// earlier one per name.
func applyMap(m map[string]string, sec *stmt, noun string, known []string, check func(*stmt) (string, error)) error {
	seen := map[string]Pos{}
	for _, s := range sec.block {
		if first, ok := seen[s.name]; ok {
			return errorf(s.pos, "%s given twice in %s section (first at %s)", s.name, sec.name, first)
		}
		seen[s.name] = s.pos
		if !contains(known, s.name) {
			if s.name == "include" {
				return unknownStmt(s, "")
			}
			return errorf(s.pos, "unknown %s %q (known: %s)", noun, s.name, strings.Join(known, ", "))
		}
		v, err := check(s)
		if err != nil {
			return err
		}
		m[s.name] = v
	}
	return nil
}

func checkHandler(s *stmt) (string, error) {
	if s.hasBlock || len(s.args) != 1 {
		return "", errorf(s.pos, "handler %s takes one quoted command", s.name)
	}
	return s.args[0], nil
}

func checkStartup(s *stmt) (string, error) {
	if s.hasBlock {
		return "", errorf(s.pos, "%s takes a value, not a section", s.name)
	}
	v := strings.Join(s.args, " ")
	switch s.name {
	case "wfc-timeout", "degr-wfc-timeout", "outdated-wfc-timeout":
		n, err := parseUint(v)
		if err != nil || n > 300000 {
			return "", errorf(s.pos, "%s takes a number of seconds 0..300000, got %q", s.name, v)
		}
	case "wait-after-sb", "stacked-timeouts":
		if _, err := parseBool(s); err != nil {
			return "", err
		}
	case "become-primary-on":
		if v == "" {
			return "", errorf(s.pos, "become-primary-on needs a host name")
		}
	}
	return v, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// volume holds the per-volume statements of one level (resource or on).
type volume struct {
	device, disk, metaDisk *stmt
	volume                 *stmt   // the "volume N" section, if any
	diskOpts               *stmt   // disk { } inside the volume section
	bare                   *stmt   // first device/disk/meta-disk outside a volume section (volume 0)
	ignored                []*stmt // volume options blockrep ignores (tiebreaker)
}

// number is the DRBD volume number this level's statements belong to, and
// where it was set: statements outside a volume section are volume 0.
func (v *volume) number() (int64, *stmt) {
	if v.volume != nil {
		n, _ := parseUint(v.volume.args[0])
		return n, v.volume
	}
	if v.bare != nil {
		return 0, v.bare
	}
	return -1, nil
}

// setBare records a device, disk or meta-disk statement outside a volume
// section: DRBD puts it in volume 0.
func (v *volume) setBare(s *stmt, where string) error {
	if v.volume != nil && v.volume.args[0] != "0" {
		return moreVolumes(s, v.volume)
	}
	if v.bare == nil {
		v.bare = s
	}
	return v.set(s, where)
}

func (v *volume) set(s *stmt, where string) error {
	var slot **stmt
	switch s.name {
	case "device":
		slot = &v.device
	case "disk":
		slot = &v.disk
	case "meta-disk", "flexible-meta-disk": // DRBD 8.3's name, still read by drbdadm
		slot = &v.metaDisk
	}
	if s.hasBlock {
		return errorf(s.pos, "%s takes a value, not a section", s.name)
	}
	if *slot != nil {
		return errorf(s.pos, "%s given twice in %s (first at %s)", s.name, where, (*slot).pos)
	}
	*slot = s
	return nil
}

// addVolume reads "volume N { ... }". A resource is one replicated block
// device: one volume, usually 0; a second volume is refused.
func (v *volume) addVolume(s *stmt, where string) error {
	if !s.hasBlock || len(s.args) != 1 {
		return errorf(s.pos, "want: volume NUMBER { ... }")
	}
	n, err := parseUint(s.args[0])
	if err != nil || n > 65535 {
		return errorf(s.pos, "bad volume number %q", s.args[0])
	}
	if v.volume != nil {
		if v.volume.args[0] == s.args[0] {
			return errorf(s.pos, "volume %s given twice in %s (first at %s)", s.args[0], where, v.volume.pos)
		}
		return moreVolumes(s, v.volume)
	}
	if v.bare != nil && n != 0 {
		return moreVolumes(s, v.bare)
	}
	v.volume = s
	for _, c := range s.block {
		switch {
		case c.name == "disk" && c.hasBlock:
			if err := sectionOnce(&v.diskOpts, c, "volume "+s.args[0]); err != nil {
				return err
			}
		case c.name == "device" || c.name == "disk" || c.name == "meta-disk" || c.name == "flexible-meta-disk":
			if err := v.set(c, where); err != nil {
				return err
			}
		case findIgnored(secVolume, c.name) != nil:
			v.ignored = append(v.ignored, c)
		default:
			return unknownStmt(c, "volume section")
		}
	}
	return nil
}

// moreVolumes refuses a second volume of a resource.
func moreVolumes(s, first *stmt) error {
	return unsupported(s.pos, s.name+" "+strings.Join(s.args, " "),
		fmt.Sprintf("more than one volume per resource (another volume at %s)", first.pos))
}

// unsupported refuses a valid DRBD statement for a feature blockrep does
// not have, in one line naming the statement and the feature.
func unsupported(p Pos, what, feature string) error {
	return errorf(p, "%s: not supported by blockrep: %s", what, feature)
}

func (b *builder) resource(s *stmt) (*Resource, error) {
	r := newResource(s.args[0], s.pos)
	where := "resource " + r.Name
	var secs sections
	var vol volume
	var ons, conns []*stmt
	var promoter *stmt
	block, err := normalizeSections(s.block)
	if err != nil {
		return nil, err
	}
	for _, c := range block {
		switch c.name {
		case "options", "net", "handlers", "startup":
			if _, err := secs.add(c, where); err != nil {
				return nil, err
			}
		case "disk":
			if c.hasBlock {
				if _, err := secs.add(c, where); err != nil {
					return nil, err
				}
			} else if err := vol.setBare(c, where); err != nil {
				return nil, err
			}
		case "device", "meta-disk", "flexible-meta-disk":
			if err := vol.setBare(c, where); err != nil {
				return nil, err
			}
		case "volume":
			if err := vol.addVolume(c, where); err != nil {
				return nil, err
			}
		case "on":
			ons = append(ons, c)
		case "promoter":
			if err := sectionOnce(&promoter, c, where); err != nil {
				return nil, err
			}
		case "connection", "connection-mesh":
			conns = append(conns, c)
		case "floating":
			return nil, unsupported(c.pos, "floating", "floating (address-matched) host sections")
		case "stacked-on-top-of":
			return nil, unsupported(c.pos, "stacked-on-top-of", "stacked resources")
		case "proxy":
			return nil, unsupported(c.pos, "proxy", "DRBD Proxy")
		case "_this_host", "_remote_host":
			return nil, unsupported(c.pos, c.name, "drbdsetup show output")
		default:
			return nil, unknownStmt(c, "resource section")
		}
	}

	// common < resource < resource volume.
	if err := b.applyOptions(r, b.common, nil); err != nil {
		return nil, err
	}
	if err := b.applyOptions(r, secs, b.warn); err != nil {
		return nil, err
	}
	if err := b.volumeOptions(&r.Disk, &vol); err != nil {
		return nil, err
	}
	// The one volume's number: the resource's, else the on sections'; all
	// must agree.
	volNum, volAt := vol.number()

	byName := map[string]*Host{}
	var missingID []*Host
	for _, c := range ons {
		h, hv, err := b.host(c, r, &vol)
		if err != nil {
			return nil, err
		}
		if n, at := hv.number(); n >= 0 {
			if volNum < 0 {
				volNum, volAt = n, at
			} else if n != volNum {
				return nil, moreVolumes(at, volAt)
			}
		}
		if first, ok := byName[h.Name]; ok {
			return nil, errorf(c.pos, "host %s given twice in %s (first at %s)", h.Name, where, first.Pos)
		}
		byName[h.Name] = h
		if h.NodeID < 0 {
			missingID = append(missingID, h)
		}
		r.Hosts = append(r.Hosts, h)
	}
	if len(r.Hosts) == 0 {
		return nil, errorf(s.pos, "resource %s has no \"on HOST\" section", r.Name)
	}
	if volNum > 0 {
		r.Volume = int(volNum)
	}
	if err := implicitNodeIDs(r, ons, missingID, len(conns) == 0); err != nil {
		return nil, err
	}
	ids := map[int]*Host{}
	for _, h := range r.Hosts {
		if first, ok := ids[h.NodeID]; ok {
			return nil, errorf(h.Pos, "node-id %d of host %s is also used by host %s (%s)", h.NodeID, h.Name, first.Name, first.Pos)
		}
		ids[h.NodeID] = h
	}
	for i, h := range r.Hosts {
		for _, o := range r.Hosts[:i] {
			if h.Address != "" && h.Address == o.Address {
				return nil, errorf(h.Pos, "address %s of host %s is also used by host %s (%s)", h.Address, h.Name, o.Name, o.Pos)
			}
		}
	}

	netPos := s.pos
	if secs.net != nil {
		netPos = secs.net.pos
	}
	if err := checkNet(&r.Net, netPos, byName); err != nil {
		return nil, err
	}

	var prom promoterSec
	if promoter != nil {
		if prom, err = parsePromoter(promoter, ""); err != nil {
			return nil, err
		}
		r.Promoter = prom.p
	}
	if err := checkPromoter(r, prom, b.promoters, byName); err != nil {
		return nil, err
	}

	if err := b.connections(r, conns, byName); err != nil {
		return nil, err
	}
	return r, nil
}

// volumeOptions applies a volume section's disk options and checks the
// volume options blockrep ignores.
func (b *builder) volumeOptions(d *DiskOptions, vol *volume) error {
	if vol.diskOpts != nil {
		if err := applySection(d, vol.diskOpts, diskTable, secDisk, b.warn); err != nil {
			return err
		}
	}
	for _, c := range vol.ignored {
		if err := ignore(findIgnored(secVolume, c.name), c, b.warn); err != nil {
			return err
		}
	}
	return nil
}

// implicitNodeIDs gives node ids to a two-host resource without them, as
// drbdadm does for DRBD 8.4 configurations: with the implicit connection
// only, the host whose address hashes higher (crc32c as drbdadm computes it)
// is node 0. Anywhere else a missing node-id is an error, as in drbdadm.
func implicitNodeIDs(r *Resource, ons []*stmt, missing []*Host, implicitConn bool) error {
	if len(missing) == 0 {
		return nil
	}
	if !implicitConn || len(r.Hosts) != 2 || len(missing) != 2 {
		h := missing[0]
		return errorf(h.Pos, "host %s has no node-id (only a two-host resource without connection sections may leave both out)", h.Name)
	}
	var hash [2]int32
	for i, h := range r.Hosts {
		ip := addressText(ons[i])
		if h.Address == "" || ip == "" {
			return errorf(h.Pos, "host %s has no node-id and no address to derive one from", h.Name)
		}
		hash[i] = int32(drbdadmCRC32c(ip))
	}
	switch {
	case hash[0] > hash[1]:
		r.Hosts[0].NodeID, r.Hosts[1].NodeID = 0, 1
	case hash[0] < hash[1]:
		r.Hosts[0].NodeID, r.Hosts[1].NodeID = 1, 0
	default:
		return errorf(r.Hosts[1].Pos, "hosts %s and %s need node-id statements (their addresses give no implicit order)", r.Hosts[0].Name, r.Hosts[1].Name)
	}
	return nil
}

// addressText is the IP of an on section's address as written, which is
// what drbdadm hashes: "10.0.0.1" of "10.0.0.1:7789", "fe80::1" of
// "ipv6 [fe80::1]:7789".
func addressText(on *stmt) string {
	for _, c := range on.block {
		if c.name != "address" || len(c.args) == 0 {
			continue
		}
		v := c.args[len(c.args)-1]
		if i := strings.LastIndexByte(v, ':'); i > 0 {
			v = v[:i]
		}
		return strings.TrimSuffix(strings.TrimPrefix(v, "["), "]")
	}
	return ""
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// drbdadmCRC32c is drbdadm's crc32c of an address string: seeded with
// 0x1a656f21, without the usual pre- and post-inversion.
func drbdadmCRC32c(s string) uint32 {
	return ^crc32.Update(^uint32(0x1a656f21), castagnoli, []byte(s))
}

// checkNet checks rules between options, on the effective values.
func checkNet(n *NetOptions, p Pos, hosts map[string]*Host) error {
	if n.CramHMACAlg != "" && n.SharedSecret == "" {
		return errorf(p, "cram-hmac-alg %s needs a shared-secret", n.CramHMACAlg)
	}
	if n.OnCongestion == "pull-ahead" && n.Protocol != blockrep.ProtocolA {
		return errorf(p, "on-congestion pull-ahead requires protocol A (have %s)", n.Protocol)
	}
	if name, ok := strings.CutPrefix(n.AfterSB0Pri, "discard-node-"); ok && lookupHost(hosts, name) == nil {
		return errorf(p, "after-sb-0pri %s names unknown host %q", n.AfterSB0Pri, name)
	}
	return nil
}

func (b *builder) host(s *stmt, r *Resource, def *volume) (*Host, *volume, error) {
	switch {
	case !s.hasBlock:
		return nil, nil, errorf(s.pos, "want: on HOST { ... }")
	case len(s.args) == 0 || s.args[0] == "":
		return nil, nil, errorf(s.pos, "on section needs a host name")
	case len(s.args) > 1:
		return nil, nil, unsupported(s.pos, "on "+strings.Join(s.args, " "), "an on section with several host names")
	}
	h := &Host{Name: s.args[0], Pos: s.pos, MetaIndex: -1, NodeID: -1}
	where := "on " + h.Name
	var vol volume
	var nodeID, address, export, exportAny, exportTLS, initiator, diskOpts, tlsCert, tlsKey, promoter *stmt
	for _, c := range s.block {
		var slot **stmt
		switch c.name {
		case "node-id":
			slot = &nodeID
		case "address":
			slot = &address
		case "export":
			slot = &export
		case "export-allow-any":
			slot = &exportAny
		case "export-tls":
			slot = &exportTLS
		case "tls-certificate":
			slot = &tlsCert
		case "tls-key":
			slot = &tlsKey
		case "initiator-name":
			slot = &initiator
		case "disk", "device", "meta-disk", "flexible-meta-disk":
			if c.name == "disk" && c.hasBlock {
				if err := sectionOnce(&diskOpts, c, where); err != nil {
					return nil, nil, err
				}
				continue
			}
			if err := vol.setBare(c, where); err != nil {
				return nil, nil, err
			}
			continue
		case "volume":
			if err := vol.addVolume(c, where); err != nil {
				return nil, nil, err
			}
			continue
		case "promoter":
			if err := sectionOnce(&promoter, c, where); err != nil {
				return nil, nil, err
			}
			continue
		default:
			return nil, nil, unknownStmt(c, "on section")
		}
		if c.hasBlock {
			return nil, nil, errorf(c.pos, "%s takes a value, not a section", c.name)
		}
		if *slot != nil {
			return nil, nil, errorf(c.pos, "%s given twice in %s (first at %s)", c.name, where, (*slot).pos)
		}
		*slot = c
	}

	var err error
	if nodeID != nil {
		v, err := oneArg(nodeID)
		if err != nil {
			return nil, nil, err
		}
		n, err := parseUint(v)
		if err != nil || n >= blockrep.MaxNodes {
			return nil, nil, errorf(nodeID.pos, "node-id %q is out of range 0..%d", v, blockrep.MaxNodes-1)
		}
		h.NodeID = int(n)
	}

	if address != nil {
		if h.Address, err = parseAddress(address, address.args); err != nil {
			return nil, nil, err
		}
	}
	if exportAny != nil {
		if h.ExportAllowAny, err = parseBool(exportAny); err != nil {
			return nil, nil, err
		}
	}
	if exportTLS != nil {
		if h.ExportTLS, err = oneArg(exportTLS); err != nil {
			return nil, nil, err
		}
		if err := checkEnum(exportTLS, h.ExportTLS, []string{"no", "yes", "require"}); err != nil {
			return nil, nil, err
		}
		if h.ExportTLS == "no" {
			h.ExportTLS = ""
		}
	}
	if tlsCert != nil {
		if h.TLSCertificate, err = oneArg(tlsCert); err != nil {
			return nil, nil, err
		}
	}
	if tlsKey != nil {
		if h.TLSKey, err = oneArg(tlsKey); err != nil {
			return nil, nil, err
		}
	}
	if export != nil {
		if h.Export, err = parseAddress(export, export.args); err != nil {
			return nil, nil, err
		}
	}
	if initiator != nil {
		if h.InitiatorName, err = parseIQN(initiator); err != nil {
			return nil, nil, err
		}
	}
	if promoter != nil {
		ps, err := parsePromoter(promoter, h.Name)
		if err != nil {
			return nil, nil, err
		}
		h.Promoter = ps.p
		b.promoters[h] = ps
	}

	// Per-host disk options: the resource's, with the host's disk sections
	// (on level, then its volume) applied.
	if diskOpts != nil || vol.diskOpts != nil || len(vol.ignored) > 0 {
		d := r.Disk
		if diskOpts != nil {
			if err := applySection(&d, diskOpts, diskTable, secDisk, b.warn); err != nil {
				return nil, nil, err
			}
		}
		if err := b.volumeOptions(&d, &vol); err != nil {
			return nil, nil, err
		}
		if diskOpts != nil || vol.diskOpts != nil {
			h.DiskOptions = &d
		}
	}

	// The host's own statements override the resource-level ones.
	pick := func(own, def *stmt) *stmt {
		if own != nil {
			return own
		}
		return def
	}
	disk := pick(vol.disk, def.disk)
	if disk == nil {
		return nil, nil, errorf(s.pos, "host %s has no disk (give \"disk PATH;\" or \"disk none;\")", h.Name)
	}
	if h.Disk, err = oneArg(disk); err != nil {
		return nil, nil, err
	}
	if h.Disk == "" {
		return nil, nil, errorf(disk.pos, "empty disk path")
	}
	h.MetaDisk = "internal" // DRBD requires meta-disk; blockrep defaults it
	if md := pick(vol.metaDisk, def.metaDisk); md != nil {
		if h.MetaDisk, h.MetaIndex, err = parseMetaDisk(md); err != nil {
			return nil, nil, err
		}
	}
	if dev := pick(vol.device, def.device); dev != nil {
		if h.Device, err = parseDevice(dev); err != nil {
			return nil, nil, err
		}
	}
	return h, &vol, nil
}

func parseIQN(s *stmt) (string, error) {
	v, err := oneArg(s)
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(v, "iqn.") && !strings.HasPrefix(v, "eui.") && !strings.HasPrefix(v, "naa.") {
		return "", errorf(s.pos, "bad initiator-name %q: want an iSCSI name (iqn.…, eui.… or naa.…)", v)
	}
	if strings.ContainsAny(v, " \t\r\n\f\v") {
		return "", errorf(s.pos, "bad initiator-name %q: contains whitespace", v)
	}
	return v, nil
}

// parseMetaDisk reads "internal", "PATH", "PATH [N]", "PATH[N]" or "PATH N".
func parseMetaDisk(s *stmt) (string, int, error) {
	if s.hasBlock {
		return "", 0, errorf(s.pos, "meta-disk takes a value, not a section")
	}
	bad := func() (string, int, error) {
		return "", 0, errorf(s.pos, "want: meta-disk internal | meta-disk PATH [INDEX]")
	}
	args := s.args
	if len(args) == 1 && args[0] == "internal" {
		return "internal", -1, nil
	}
	if len(args) == 1 {
		if i := strings.LastIndexByte(args[0], '['); i > 0 && strings.HasSuffix(args[0], "]") {
			args = []string{args[0][:i], args[0][i:]}
		}
	}
	if len(args) == 0 || len(args) > 2 || args[0] == "" || args[0] == "internal" || args[0] == "none" {
		return bad()
	}
	if len(args) == 1 {
		return args[0], -1, nil
	}
	idx := strings.TrimSuffix(strings.TrimPrefix(args[1], "["), "]")
	n, err := parseUint(idx)
	if err != nil || n > 1<<20 {
		return bad()
	}
	return args[0], int(n), nil
}

// parseDevice reads "/dev/drbdN", "minor N", "PATH minor N" or "/dev/nbdN".
func parseDevice(s *stmt) (string, error) {
	bad := errorf(s.pos, "want: device PATH | device minor N | device PATH minor N")
	args := s.args
	if len(args) > 0 && len(args[0]) == 2 && args[0][1] == ':' {
		return "", unsupported(s.pos, "device "+strings.Join(args, " "), "WinDRBD (Windows drive letter devices)")
	}
	var parts []string
	if len(args) == 1 || len(args) == 3 {
		p := args[0]
		if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, " \t\r\n\f\v") {
			return "", bad
		}
		parts = append(parts, p)
		args = args[1:]
	}
	if len(args) == 2 {
		n, err := parseUint(args[1])
		if args[0] != "minor" || err != nil || n >= 1<<20 {
			return "", bad
		}
		parts = append(parts, "minor", strconv.FormatInt(n, 10))
		args = nil
	}
	if len(args) != 0 || len(parts) == 0 {
		return "", bad
	}
	return strings.Join(parts, " "), nil
}

// addrFamily accepts DRBD's optional address family keyword. Families other
// than ipv4/ipv6 are recognised so that the error says what is wrong.
func addrFamily(s string) bool {
	switch s {
	case "ipv4", "ipv6", "ssocks", "sdp", "ib":
		return true
	}
	return false
}

// parseAddress reads "[ipv4|ipv6] IP:PORT" and returns it normalized
// ("[::1]:7789" for IPv6).
func parseAddress(s *stmt, args []string) (string, error) {
	if s.hasBlock {
		return "", errorf(s.pos, "%s takes a value, not a section", s.name)
	}
	family := ""
	if len(args) == 2 && addrFamily(args[0]) {
		family, args = args[0], args[1:]
	}
	if len(args) != 1 {
		return "", errorf(s.pos, "want: %s [ipv4|ipv6] IP:PORT", s.name)
	}
	ap, err := parseAddrPort(s, family, args[0])
	if err != nil {
		return "", err
	}
	return ap.String(), nil
}

func parseAddrPort(s *stmt, family, v string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(v)
	if err != nil {
		return ap, errorf(s.pos, "bad address %q: want IP:PORT (IPv6 as [ADDR]:PORT)", v)
	}
	if ap.Port() == 0 {
		return ap, errorf(s.pos, "bad address %q: port 0", v)
	}
	if err := checkFamily(s, family, ap.Addr()); err != nil {
		return ap, err
	}
	return ap, nil
}

func checkFamily(s *stmt, family string, a netip.Addr) error {
	switch family {
	case "":
	case "ipv4":
		if !a.Is4() {
			return errorf(s.pos, "address %s is not an ipv4 address", a)
		}
	case "ipv6":
		if !a.Is6() {
			return errorf(s.pos, "address %s is not an ipv6 address", a)
		}
	default:
		return errorf(s.pos, "address family %s is not supported by blockrep (ipv4, ipv6)", family)
	}
	return nil
}

func parsePort(s *stmt, v string) (uint16, error) {
	n, err := parseUint(v)
	if err != nil || n < 1 || n > 65535 {
		return 0, errorf(s.pos, "bad port %q: want 1..65535", v)
	}
	return uint16(n), nil
}

// endpoint is one side of a connection as the connection section gives it.
type endpoint struct {
	host *Host
	pos  Pos
	ip   netip.Addr // from "address IP[:PORT]"; invalid if not given
	port uint16     // from the address or "port P"; 0 if not given
	// outside is the address peers connect to when the host is behind NAT
	// ("via outside-address IP:PORT"); invalid if not given.
	outside netip.AddrPort
}

// connHost reads "host NAME [address [FAMILY] IP[:PORT]] [port P]".
func connHost(s *stmt, byName map[string]*Host) (*endpoint, error) {
	for i, a := range s.args {
		if a == "via" && (i+1 == len(s.args) || s.args[i+1] != "outside-address") {
			return nil, unsupported(s.pos, "via", "DRBD Proxy")
		}
	}
	if s.hasBlock || len(s.args) == 0 {
		return nil, errorf(s.pos, "want: host NAME [address [ipv4|ipv6] IP:PORT] [port PORT]")
	}
	h := lookupHost(byName, s.args[0])
	if h == nil {
		return nil, errorf(s.pos, "connection names unknown host %q (hosts: %s)", s.args[0], hostNames(byName))
	}
	ep := &endpoint{host: h, pos: s.pos}
	var haveAddr, havePort bool
	rest := s.args[1:]
	for len(rest) > 0 {
		switch rest[0] {
		case "address":
			if haveAddr {
				return nil, errorf(s.pos, "address given twice for host %s", h.Name)
			}
			haveAddr = true
			rest = rest[1:]
			family := ""
			if len(rest) > 1 && addrFamily(rest[0]) {
				family, rest = rest[0], rest[1:]
			}
			if len(rest) == 0 {
				return nil, errorf(s.pos, "address of host %s is missing", h.Name)
			}
			// The port may be left to "port P" or the host's on section;
			// a bare IPv6 address must then be bracketed.
			if a, ok := bareIP(rest[0]); ok {
				if err := checkFamily(s, family, a); err != nil {
					return nil, err
				}
				ep.ip = a
			} else {
				ap, err := parseAddrPort(s, family, rest[0])
				if err != nil {
					return nil, err
				}
				ep.ip = ap.Addr()
				if !havePort {
					ep.port = ap.Port()
				}
			}
			rest = rest[1:]
		case "port":
			if havePort || len(rest) < 2 {
				return nil, errorf(s.pos, "want one \"port PORT\" for host %s", h.Name)
			}
			havePort = true
			p, err := parsePort(s, rest[1])
			if err != nil {
				return nil, err
			}
			ep.port = p
			rest = rest[2:]
		case "via": // "via outside-address [FAMILY] IP:PORT": the address peers connect to (NAT)
			if ep.outside.IsValid() {
				return nil, errorf(s.pos, "via outside-address given twice for host %s", h.Name)
			}
			rest = rest[2:]
			family := ""
			if len(rest) > 1 && addrFamily(rest[0]) {
				family, rest = rest[0], rest[1:]
			}
			if len(rest) == 0 {
				return nil, errorf(s.pos, "via outside-address of host %s is missing", h.Name)
			}
			ap, err := parseAddrPort(s, family, rest[0])
			if err != nil {
				return nil, err
			}
			ep.outside = ap
			rest = rest[1:]
		default:
			return nil, errorf(s.pos, "unexpected %q in host statement (want address, port or via outside-address)", rest[0])
		}
	}
	return ep, nil
}

func bareIP(v string) (netip.Addr, bool) {
	if strings.HasPrefix(v, "[") && strings.HasSuffix(v, "]") {
		a, err := netip.ParseAddr(v[1 : len(v)-1])
		return a, err == nil && a.Is6()
	}
	if !strings.Contains(v, ":") {
		a, err := netip.ParseAddr(v)
		return a, err == nil
	}
	return netip.Addr{}, false
}

// addr resolves the endpoint's address: the connection's IP and port where
// given, else the host's address.
func (ep *endpoint) addr(connPos Pos) (string, error) {
	var ip netip.Addr
	var port uint16
	if ap, err := netip.ParseAddrPort(ep.host.Address); err == nil {
		ip, port = ap.Addr(), ap.Port()
	}
	if ep.ip.IsValid() {
		ip = ep.ip
	}
	if ep.port != 0 {
		port = ep.port
	}
	if !ip.IsValid() || port == 0 {
		return "", errorf(connPos, "no address for host %s in this connection (give one in its on section or in the connection)", ep.host.Name)
	}
	return netip.AddrPortFrom(ip, port).String(), nil
}

// lookupHost finds the host a connection names: by its exact name, else by
// drbdadm's rule (a short name matches a fully qualified one), if unique.
func lookupHost(byName map[string]*Host, name string) *Host {
	if h := byName[name]; h != nil {
		return h
	}
	var found *Host
	for n, h := range byName {
		if hostnamesEqual(n, name) {
			if found != nil {
				return nil
			}
			found = h
		}
	}
	return found
}

func hostNames(byName map[string]*Host) string {
	// Map order is random; callers want a stable message.
	var names []string
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func (b *builder) connections(r *Resource, stmts []*stmt, byName map[string]*Host) error {
	pairs := map[[2]string]Pos{}
	add := func(c *Connection) error {
		k := [2]string{c.A.Name, c.B.Name}
		if k[0] > k[1] {
			k[0], k[1] = k[1], k[0]
		}
		if err := checkFamilies(c); err != nil {
			return err
		}
		if first, ok := pairs[k]; ok {
			return errorf(c.Pos, "connection between %s and %s given twice (first at %s)", c.A.Name, c.B.Name, first)
		}
		pairs[k] = c.Pos
		r.Conns = append(r.Conns, c)
		return nil
	}
	for _, s := range stmts {
		var conns []*Connection
		var err error
		if s.name == "connection" {
			var c *Connection
			c, err = b.connection(r, s, byName)
			conns = []*Connection{c}
		} else {
			conns, err = b.mesh(r, s, byName)
		}
		if err != nil {
			return err
		}
		for _, c := range conns {
			if err := add(c); err != nil {
				return err
			}
		}
	}
	if len(stmts) > 0 {
		return nil
	}
	conns, err := implicitMesh(r)
	if err != nil {
		return err
	}
	r.Conns = conns
	return nil
}

// implicitMesh connects every pair of hosts by their addresses, as DRBD does
// for a resource without connection sections. A shared-storage resource
// does not replicate, so hosts without an address are simply left out.
func implicitMesh(r *Resource) ([]*Connection, error) {
	var conns []*Connection
	for i, a := range r.Hosts {
		for _, b := range r.Hosts[i+1:] {
			if a.Address == "" || b.Address == "" {
				if r.Options.Storage == "shared" {
					continue
				}
				h, other := a, b
				if h.Address != "" {
					h, other = b, a
				}
				return nil, errorf(h.Pos, "host %s has no address (needed to connect to %s)", h.Name, other.Name)
			}
			c := &Connection{Pos: r.Pos, A: a, B: b, AddrA: a.Address, AddrB: b.Address, Net: r.Net, Disk: r.Disk}
			if err := checkFamilies(c); err != nil {
				return nil, err
			}
			conns = append(conns, c)
		}
	}
	return conns, nil
}

// checkFamilies rejects an IPv4 address talking to an IPv6 one: such a
// connection could never be established.
func checkFamilies(c *Connection) error {
	a, errA := netip.ParseAddrPort(c.AddrA)
	b, errB := netip.ParseAddrPort(c.AddrB)
	if errA == nil && errB == nil && a.Addr().Is4() != b.Addr().Is4() {
		return errorf(c.Pos, "connection between %s (%s) and %s (%s) mixes IPv4 and IPv6", c.A.Name, c.AddrA, c.B.Name, c.AddrB)
	}
	return nil
}

func (b *builder) connection(r *Resource, s *stmt, byName map[string]*Host) (*Connection, error) {
	if !s.hasBlock || len(s.args) > 1 {
		return nil, errorf(s.pos, "want: connection [NAME] { ... }")
	}
	var eps []*endpoint
	var path, net, disk *stmt
	var vol volume
	for _, c := range s.block {
		switch c.name {
		case "host":
			ep, err := connHost(c, byName)
			if err != nil {
				return nil, err
			}
			for _, o := range eps {
				if o.host == ep.host {
					return nil, errorf(c.pos, "host %s given twice in connection (first at %s)", ep.host.Name, o.pos)
				}
			}
			if len(eps) == 2 {
				return nil, errorf(c.pos, "a connection has exactly two hosts (use connection-mesh for more)")
			}
			eps = append(eps, ep)
		case "path":
			if path != nil {
				return nil, unsupported(c.pos, "path", fmt.Sprintf("more than one path per connection (first at %s)", path.pos))
			}
			if !c.hasBlock || len(c.args) != 0 {
				return nil, errorf(c.pos, "want: path { host A address IP:PORT; host B address IP:PORT; }")
			}
			path = c
		case "net":
			if err := sectionOnce(&net, c, "connection"); err != nil {
				return nil, err
			}
		case "disk":
			if err := sectionOnce(&disk, c, "connection"); err != nil {
				return nil, err
			}
		case "volume":
			if err := connVolume(c, &vol, r.Volume); err != nil {
				return nil, err
			}
		default:
			return nil, unknownStmt(c, "connection section")
		}
	}
	if path != nil {
		var err error
		if eps, err = mergePath(path, eps, byName); err != nil {
			return nil, err
		}
	}
	if len(eps) != 2 {
		return nil, errorf(s.pos, "connection needs two hosts, has %d", len(eps))
	}
	c := &Connection{Pos: s.pos, A: eps[0].host, B: eps[1].host, Net: r.Net, Disk: r.Disk}
	var err error
	if c.AddrA, err = eps[0].addr(s.pos); err != nil {
		return nil, err
	}
	if c.AddrB, err = eps[1].addr(s.pos); err != nil {
		return nil, err
	}
	if eps[0].outside.IsValid() {
		c.OutsideA = eps[0].outside.String()
	}
	if eps[1].outside.IsValid() {
		c.OutsideB = eps[1].outside.String()
	}
	if net != nil {
		if err := applySection(&c.Net, net, netTable, secNet, b.warn); err != nil {
			return nil, err
		}
	}
	for _, d := range []*stmt{disk, vol.diskOpts} {
		if d != nil {
			if err := applySection(&c.Disk, d, diskTable, secPeerDisk, b.warn); err != nil {
				return nil, err
			}
			c.peerSecs = append(c.peerSecs, d)
		}
	}
	if err := checkNet(&c.Net, s.pos, byName); err != nil {
		return nil, err
	}
	return c, nil
}

// connVolume reads a connection's "volume N { disk { peer-device options } }";
// N is the resource's one volume.
func connVolume(s *stmt, vol *volume, resVolume int) error {
	if !s.hasBlock || len(s.args) != 1 {
		return errorf(s.pos, "want: volume NUMBER { disk { ... } }")
	}
	n, err := parseUint(s.args[0])
	if err != nil || n > 65535 {
		return errorf(s.pos, "bad volume number %q", s.args[0])
	}
	if int(n) != resVolume {
		return unsupported(s.pos, "volume "+s.args[0], fmt.Sprintf("more than one volume per resource (the resource's volume is %d)", resVolume))
	}
	if vol.volume != nil {
		return errorf(s.pos, "volume %s given twice in connection (first at %s)", s.args[0], vol.volume.pos)
	}
	vol.volume = s
	for _, c := range s.block {
		if c.name != "disk" {
			return unknownStmt(c, "connection volume section")
		}
		if err := sectionOnce(&vol.diskOpts, c, "volume "+s.args[0]); err != nil {
			return err
		}
	}
	return nil
}

// mergePath combines the path's host addresses with the connection's host
// statements; the path alone may name the hosts.
func mergePath(path *stmt, eps []*endpoint, byName map[string]*Host) ([]*endpoint, error) {
	var peps []*endpoint
	for _, c := range path.block {
		if c.name != "host" {
			return nil, unknownStmt(c, "path section")
		}
		ep, err := connHost(c, byName)
		if err != nil {
			return nil, err
		}
		if !ep.ip.IsValid() {
			return nil, errorf(c.pos, "path: host %s needs an address", ep.host.Name)
		}
		for _, o := range peps {
			if o.host == ep.host {
				return nil, errorf(c.pos, "host %s given twice in path (first at %s)", ep.host.Name, o.pos)
			}
		}
		peps = append(peps, ep)
	}
	if len(peps) != 2 {
		return nil, errorf(path.pos, "path needs two hosts with addresses, has %d", len(peps))
	}
	for _, ep := range eps {
		var found *endpoint
		for _, p := range peps {
			if p.host == ep.host {
				found = p
			}
		}
		if found == nil {
			return nil, errorf(path.pos, "path does not name connection host %s", ep.host.Name)
		}
		if ep.ip.IsValid() || ep.port != 0 {
			return nil, errorf(ep.pos, "address of host %s given both here and in the path (%s)", ep.host.Name, found.pos)
		}
		ep.ip, ep.port, ep.outside = found.ip, found.port, found.outside
	}
	// Every connection host is in the two-host path, so the path's other
	// hosts complete the pair.
	for _, p := range peps {
		in := false
		for _, ep := range eps {
			in = in || ep.host == p.host
		}
		if !in {
			eps = append(eps, p)
		}
	}
	return eps, nil
}

func (b *builder) mesh(r *Resource, s *stmt, byName map[string]*Host) ([]*Connection, error) {
	if !s.hasBlock || len(s.args) != 0 {
		return nil, errorf(s.pos, "want: connection-mesh { hosts A B ...; }")
	}
	var hostsStmt, net *stmt
	for _, c := range s.block {
		switch c.name {
		case "hosts":
			if hostsStmt != nil {
				return nil, errorf(c.pos, "hosts given twice in connection-mesh (first at %s)", hostsStmt.pos)
			}
			if c.hasBlock {
				return nil, errorf(c.pos, "hosts takes host names, not a section")
			}
			hostsStmt = c
		case "net":
			if err := sectionOnce(&net, c, "connection-mesh"); err != nil {
				return nil, err
			}
		default:
			return nil, unknownStmt(c, "connection-mesh section")
		}
	}
	if hostsStmt == nil {
		return nil, errorf(s.pos, "connection-mesh needs a hosts statement")
	}
	var hosts []*Host
	for _, n := range hostsStmt.args {
		h := lookupHost(byName, n)
		if h == nil {
			return nil, errorf(hostsStmt.pos, "connection-mesh names unknown host %q (hosts: %s)", n, hostNames(byName))
		}
		for _, o := range hosts {
			if o == h {
				return nil, errorf(hostsStmt.pos, "host %s given twice in connection-mesh", n)
			}
		}
		hosts = append(hosts, h)
	}
	if len(hosts) < 2 {
		return nil, errorf(hostsStmt.pos, "connection-mesh needs at least two hosts")
	}
	n := r.Net
	if net != nil {
		if err := applySection(&n, net, netTable, secNet, b.warn); err != nil {
			return nil, err
		}
	}
	if err := checkNet(&n, s.pos, byName); err != nil {
		return nil, err
	}
	var conns []*Connection
	for i, a := range hosts {
		for _, bh := range hosts[i+1:] {
			for _, h := range []*Host{a, bh} {
				if h.Address == "" {
					return nil, errorf(h.Pos, "host %s has no address (needed by connection-mesh at %s)", h.Name, s.pos)
				}
			}
			conns = append(conns, &Connection{Pos: s.pos, A: a, B: bh, AddrA: a.Address, AddrB: bh.Address, Net: n, Disk: r.Disk})
		}
	}
	return conns, nil
}

// checkUnique rejects two resources claiming the same address, device or
// backing disk on one host, as drbdadm does: both could not run there.
func checkUnique(rs []*Resource) error {
	type use struct {
		res string
		pos Pos
	}
	seen := map[[3]string]use{}
	for _, r := range rs {
		for _, h := range r.Hosts {
			for _, kv := range [][2]string{{"address", h.Address}, {"device", h.Device}, {"disk", h.Disk}} {
				if kv[1] == "" || (kv[0] == "disk" && kv[1] == "none") {
					continue
				}
				k := [3]string{h.Name, kv[0], kv[1]}
				if u, ok := seen[k]; ok && u.res != r.Name {
					return errorf(h.Pos, "host %s: %s %s is also used by resource %s (%s)", h.Name, kv[0], kv[1], u.res, u.pos)
				}
				seen[k] = use{r.Name, h.Pos}
			}
		}
	}
	return nil
}
