package config

import (
	"reflect"
	"testing"
)

func TestLex(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []token
	}{
		{"words braces and semicolons", "on a{x 1;}", []token{
			{tokWord, "on", 1}, {tokWord, "a", 1}, {tokLBrace, "{", 1}, {tokWord, "x", 1},
			{tokWord, "1", 1}, {tokSemi, ";", 1}, {tokRBrace, "}", 1}, {tokEOF, "", 1}}},
		{"comment runs to end of line", "a # b { ;\nc", []token{
			{tokWord, "a", 1}, {tokWord, "c", 2}, {tokEOF, "", 2}}},
		{"hash inside a word is not a comment", "se#cret;", []token{
			{tokWord, "se#cret", 1}, {tokSemi, ";", 1}, {tokEOF, "", 1}}},
		{"string escapes quote and backslash only", `"a \"b\" c\\d \n"`, []token{
			{tokString, `a "b" c\d \n`, 1}, {tokEOF, "", 1}}},
		{"string ends a word", `x"y"`, []token{
			{tokWord, "x", 1}, {tokString, "y", 1}, {tokEOF, "", 1}}},
		{"empty string", `""`, []token{{tokString, "", 1}, {tokEOF, "", 1}}},
		{"lines counted across CRLF and tabs", "a\r\n\tb\n\n c", []token{
			{tokWord, "a", 1}, {tokWord, "b", 2}, {tokWord, "c", 4}, {tokEOF, "", 4}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := lex("f", []byte(tt.src))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("lex(%q)\n got %v\nwant %v", tt.src, got, tt.want)
			}
		})
	}
}

func TestLexErrors(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"unterminated string at end of file", "a\nb \"xyz", "f:2: unterminated string"},
		{"newline inside a string reports the opening line", "a \"x\ny\";", "f:1: unterminated string"},
		{"backslash before end of file", "\"x\\", "f:1: unterminated string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := lex("f", []byte(tt.src))
			if err == nil || err.Error() != tt.want {
				t.Errorf("got %v, want %s", err, tt.want)
			}
		})
	}
}

func TestParseFile(t *testing.T) {
	got, err := parseFile("f", []byte("a 1 \"two words\";\nskip b { c; }\nd {\n e;\n f { }\n}\ng {}"))
	if err != nil {
		t.Fatal(err)
	}
	want := []*stmt{
		{pos: Pos{"f", 1}, name: "a", args: []string{"1", "two words"}},
		{pos: Pos{"f", 3}, name: "d", hasBlock: true, block: []*stmt{
			{pos: Pos{"f", 4}, name: "e"},
			{pos: Pos{"f", 5}, name: "f", hasBlock: true},
		}},
		{pos: Pos{"f", 7}, name: "g", hasBlock: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseFile: skip must drop b, blocks must nest\n got %+v\nwant %+v", got, want)
	}
}

func TestParseFileErrors(t *testing.T) {
	deep := ""
	for i := 0; i < maxDepth+1; i++ {
		deep += "a {"
	}
	tests := []struct {
		name, src, want string
	}{
		{"missing semicolon before closing brace", "a {\n b 1\n}", `f:2: missing ; after "b"`},
		{"missing semicolon at end of file", "a {\n}\nb", `f:3: missing ; after "b"`},
		{"unterminated block names its opening line", "x {\n a {\n b;\n}", "f:1: unterminated x section (missing })"},
		{"stray closing brace", "a;\n}", "f:2: unexpected }"},
		{"stray semicolon", "a {};", "f:1: unexpected ;"},
		{"section without a name", "{ a; }", "f:1: unexpected { (section without a name)"},
		{"nesting is bounded", deep, "f:1: sections nested too deeply"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFile("f", []byte(tt.src))
			if err == nil || err.Error() != tt.want {
				t.Errorf("got %v, want %s", err, tt.want)
			}
		})
	}
}
