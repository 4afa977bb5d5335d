package config

import "strings"

type tokKind uint8

const (
	tokEOF tokKind = iota
	tokWord
	tokString
	tokLBrace
	tokRBrace
	tokSemi
)

type token struct {
	kind tokKind
	text string
	line int
}

func isSpace(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\r', '\f', '\v':
		return true
	}
	return false
}

// isDelim reports whether c ends a word.
func isDelim(c byte) bool {
	return isSpace(c) || c == '{' || c == '}' || c == ';' || c == '"'
}

// lex splits src into tokens. The result always ends with a tokEOF.
//
// '#' starts a comment only where a token could start, so a shared secret or
// path containing '#' inside a word survives (as in drbdadm's scanner).
// Quoted strings understand \" and \\; any other backslash is kept, so
// handler commands pass through unchanged. A newline inside quotes is an
// error: it nearly always means a missing closing quote, and reporting it on
// the opening line is more useful than at end of file.
func lex(file string, src []byte) ([]token, error) {
	var toks []token
	line := 1
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == '\n':
			line++
			i++
		case isSpace(c):
			i++
		case c == '#':
			for i < len(src) && src[i] != '\n' {
				i++
			}
		case c == '{':
			toks = append(toks, token{tokLBrace, "{", line})
			i++
		case c == '}':
			toks = append(toks, token{tokRBrace, "}", line})
			i++
		case c == ';':
			toks = append(toks, token{tokSemi, ";", line})
			i++
		case c == '"':
			start := line
			var b strings.Builder
			i++
			for {
				if i >= len(src) || src[i] == '\n' {
					return nil, errorf(Pos{file, start}, "unterminated string")
				}
				c := src[i]
				if c == '"' {
					i++
					break
				}
				if c == '\\' && i+1 < len(src) && (src[i+1] == '"' || src[i+1] == '\\') {
					b.WriteByte(src[i+1])
					i += 2
					continue
				}
				b.WriteByte(c)
				i++
			}
			toks = append(toks, token{tokString, b.String(), start})
		default:
			j := i
			for j < len(src) && !isDelim(src[j]) {
				j++
			}
			toks = append(toks, token{tokWord, string(src[i:j]), line})
			i = j
		}
	}
	return append(toks, token{tokEOF, "", line}), nil
}
