package config

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
func normalizeSections(block []*stmt, where string) ([]*stmt, error) {
	var out []*stmt
	dest := map[string]*stmt{} // section name -> section in out (a copy)
	var moved bool
	section := func(name string, p Pos) *stmt {
		if d := dest[name]; d != nil {
			return d
		}
		d := &stmt{pos: p, name: name, hasBlock: true}
		dest[name] = d
		out = append(out, d)
		return d
	}
	// First copy the sections that may receive statements, so that moved
	// statements join them wherever they stand.
	for _, s := range block {
		switch {
		case s.hasBlock && len(s.args) == 0 && (s.name == "net" || s.name == "disk" || s.name == "options" || s.name == "handlers"):
			if dest[s.name] != nil {
				out = append(out, s) // a second section: its builder reports it
				continue
			}
			c := *s
			c.block = nil
			dest[s.name] = &c
			out = append(out, &c)
		case s.name == "syncer" || (s.name == "protocol" && !s.hasBlock):
			moved = true
		default:
			out = append(out, s)
		}
	}
	if !moved && dest["disk"] == nil && dest["handlers"] == nil {
		return block, nil
	}
	var own []*stmt // the copied sections' original statements, in order
	for _, s := range block {
		if d := dest[s.name]; d != nil && d.pos == s.pos && s.hasBlock {
			own = append(own, s)
		}
	}
	for _, s := range own {
		d := dest[s.name]
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
				if home == "" && len(r.name) > 3 && r.name[:3] == "no-" {
					home = homeSection(r.name[3:])
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
