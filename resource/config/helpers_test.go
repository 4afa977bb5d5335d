package config

import (
	"io/fs"
	"path"
	"sort"
	"strings"
)

// memFS is an in-memory fileSystem, so include tests and the fuzz target
// never read the real disk.
type memFS map[string]string

func (m memFS) Glob(pattern string) ([]string, error) {
	if _, err := path.Match(pattern, ""); err != nil {
		return nil, err
	}
	var out []string
	for name := range m {
		if ok, _ := path.Match(pattern, name); ok {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out, nil
}

func (m memFS) ReadFile(name string) ([]byte, error) {
	s, ok := m[name]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return []byte(s), nil
}

// parseText parses src as file "t.res" with no other files around.
func parseText(src string) (*Config, error) {
	return parse(memFS{}, "t.res", []byte(src))
}

const twoHosts = `    on alpha { node-id 0; address 127.0.0.1:7789; disk /d/a; }
    on beta { node-id 1; address 127.0.0.1:7790; disk /d/b; }
`

// twoNode wraps body (starting at line 2) in a valid two-node resource r0.
func twoNode(body string) string {
	return "resource r0 {\n" + body + "\n" + twoHosts + "}\n"
}

// stripPos clears positions, which a dumped and re-parsed resource cannot keep.
func stripPos(r *Resource) *Resource {
	r.Pos = Pos{}
	if r.Promoter != nil {
		r.Promoter.Pos = Pos{}
	}
	for _, h := range r.Hosts {
		h.Pos = Pos{}
		if h.Promoter != nil {
			h.Promoter.Pos = Pos{}
		}
	}
	for _, c := range r.Conns {
		c.Pos = Pos{}
		c.peerSecs = nil // the statements a dump re-creates
	}
	return r
}

func lines(s ...string) string { return strings.Join(s, "\n") + "\n" }
