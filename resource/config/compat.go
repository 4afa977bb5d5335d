package config

import "strings"

// DRBD 8.3/8.4 syntax that drbdadm 9 still reads, rewritten into DRBD 9's
// sections before a resource or common section is built:
//
//   - "protocol X;" directly in the resource (or common) goes to net;
//   - "syncer { }" options go where DRBD 9 keeps them (net, disk or
//     options), "rate" as resync-rate and "after" as resync-after;
//   - "fencing" in a disk section goes to net;
//   - the handler "outdate-peer" is fence-peer.

// syncerAliases are the syncer names DRBD 9 renamed.
var syncerAliases = map[string]string{"rate": "resync-rate", "after": "resync-after"}

// normalizeSections returns block with the older forms moved into net,
// disk, options and handlers sections. Statements keep their positions;
// sections that only receive moved statements take the position of the
// first of them. The statements of block are not modified.
func normalizeSections(block []*stmt) ([]*stmt, error) {
	needed := false
	for _, s := range block {
		if s.name == "syncer" || (s.name == "protocol" && !s.hasBlock) || (s.hasBlock && (s.name == "disk" || s.name == "handlers")) {
			needed = true
		}
	}
	if !needed {
		return block, nil
	}
	var out []*stmt
	dest := map[string]*stmt{} // section name -> its copy in out
	section := func(name string, p Pos) *stmt {
		if d := dest[name]; d != nil {
			return d
		}
		d := &stmt{pos: p, name: name, hasBlock: true}
		dest[name] = d
		out = append(out, d)
		return d
	}
	// Copy the first section of each name that may receive statements, so
	// that moved statements join it wherever it stands. A second section
	// of a name stays as it is: its builder reports it.
	copied := map[*stmt]*stmt{}
	for _, s := range block {
		switch {
		case s.hasBlock && len(s.args) == 0 && dest[s.name] == nil &&
			(s.name == "net" || s.name == "disk" || s.name == "options" || s.name == "handlers"):
			c := *s
			c.block = nil
			dest[s.name] = &c
			copied[s] = &c
			out = append(out, &c)
		case s.name == "syncer" || (s.name == "protocol" && !s.hasBlock):
		default:
			out = append(out, s)
		}
	}
	for _, s := range block {
		d := copied[s]
		if d == nil {
			continue
		}
		for _, c := range s.block {
			switch {
			case s.name == "disk" && c.name == "fencing":
				n := section("net", c.pos)
				n.block = append(n.block, c)
			case s.name == "handlers" && c.name == "outdate-peer":
				r := *c
				r.name = "fence-peer"
				d.block = append(d.block, &r)
			default:
				d.block = append(d.block, c)
			}
		}
	}
	for _, s := range block {
		switch {
		case s.name == "protocol" && !s.hasBlock:
			n := section("net", s.pos)
			n.block = append(n.block, s)
		case s.name == "syncer":
			if !s.hasBlock || len(s.args) != 0 {
				return nil, errorf(s.pos, "syncer must be a section: syncer { ... }")
			}
			for _, c := range s.block {
				r := *c
				if alias, ok := syncerAliases[r.name]; ok {
					r.name = alias
				}
				home := homeSection(r.name)
				if base, ok := strings.CutPrefix(r.name, "no-"); ok && home == "" {
					home = homeSection(base)
				}
				switch home {
				case "net", "disk", "options":
				default:
					return nil, unknownStmt(c, "syncer section")
				}
				n := section(home, c.pos)
				n.block = append(n.block, &r)
			}
		}
	}
	return out, nil
}
