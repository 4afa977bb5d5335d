package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// fuzzFS gives fuzzed include statements something to find, including a
// cycle, without touching the real disk.
var fuzzFS = memFS{
	"common.conf": "common { net { protocol A; } disk { disk-barrier no; } }\n",
	"a.res":       "include \"b.res\";\n" + oneHost("ra", "x", 0),
	"b.res":       "include \"a.res\";\n",
	"d/r.res":     oneHost("rd", "y", 1),
}

// FuzzParse checks that Parse never panics or hangs, that every error it
// returns for content carries a position, and that whatever it accepts
// survives Dump and re-parsing unchanged.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.res")
	more, _ := filepath.Glob("testdata/*.conf")
	corpus, _ := filepath.Glob("testdata/corpus/*.res")
	for _, name := range append(append(files, more...), corpus...) {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`include "*.conf"; include "d/*";` + twoNode("")))
	f.Add([]byte(`include "a.res";`))
	f.Add([]byte(twoNode("connection { path { host alpha address [::1]:1; host beta address [::1]:2; } }")))
	f.Add([]byte(pgExample))
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, err := parse(fuzzFS, "fuzz.res", src)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Pos.File == "" {
				t.Fatalf("error without position: %v", err)
			}
			return
		}
		for _, r := range cfg.Resources {
			var out bytes.Buffer
			if err := r.Dump(&out); err != nil {
				t.Fatalf("Dump: %v", err)
			}
			back, err := parseText(out.String())
			if err != nil {
				t.Fatalf("re-parsing dump: %v\n%s", err, out.String())
			}
			if !reflect.DeepEqual(stripPos(back.Resources[0]), stripPos(r)) {
				t.Fatalf("round trip changed the resource; dump:\n%s", out.String())
			}
		}
	})
}
