package config

// stmt is one statement of the generic syntax every section shares:
//
//	name arg...;
//	name arg... { stmt... }
//
// The parser knows nothing about keywords except "skip", which disables the
// statement it prefixes wherever it appears (DRBD semantics).
type stmt struct {
	pos      Pos
	name     string
	args     []string
	block    []*stmt
	hasBlock bool // "x {}" has an empty block; "x;" has none
}

// maxDepth bounds section nesting. DRBD needs four levels
// (resource > connection > volume > disk); the limit keeps hostile input from
// exhausting the stack.
const maxDepth = 16

type parser struct {
	file string
	toks []token
	i    int
}

// parseFile parses one file's content into its top-level statements.
func parseFile(file string, src []byte) ([]*stmt, error) {
	toks, err := lex(file, src)
	if err != nil {
		return nil, err
	}
	p := &parser{file: file, toks: toks}
	return p.stmts(0, nil)
}

func (p *parser) pos(t token) Pos { return Pos{p.file, t.line} }

// stmts parses statements until the closing brace of open, or end of file
// when open is nil.
func (p *parser) stmts(depth int, open *stmt) ([]*stmt, error) {
	var out []*stmt
	for {
		t := p.toks[p.i]
		switch t.kind {
		case tokEOF:
			if open != nil {
				return nil, errorf(open.pos, "unterminated %s section (missing })", open.name)
			}
			return out, nil
		case tokRBrace:
			if open == nil {
				return nil, errorf(p.pos(t), "unexpected }")
			}
			p.i++
			return out, nil
		case tokSemi:
			return nil, errorf(p.pos(t), "unexpected ;")
		case tokLBrace:
			return nil, errorf(p.pos(t), "unexpected { (section without a name)")
		}
		s, err := p.stmt(depth)
		if err != nil {
			return nil, err
		}
		if s.name != "skip" {
			out = append(out, s)
		}
	}
}

func (p *parser) stmt(depth int) (*stmt, error) {
	t := p.toks[p.i]
	p.i++
	s := &stmt{pos: p.pos(t), name: t.text}
	for {
		t := p.toks[p.i]
		switch t.kind {
		case tokWord, tokString:
			s.args = append(s.args, t.text)
			p.i++
		case tokSemi:
			p.i++
			return s, nil
		case tokLBrace:
			p.i++
			if depth+1 >= maxDepth {
				return nil, errorf(p.pos(t), "sections nested too deeply")
			}
			blk, err := p.stmts(depth+1, s)
			if err != nil {
				return nil, err
			}
			s.block, s.hasBlock = blk, true
			return s, nil
		default: // } or end of file
			return nil, errorf(s.pos, "missing ; after %q", s.name)
		}
	}
}
