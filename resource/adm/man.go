package adm

import (
	"io"

	"github.com/urfave/cli/v2"
)

// ManPage renders blockrepadm(8) from the same definitions as --help.
func ManPage() (string, error) {
	var code int
	app := newApp(io.Discard, io.Discard, &code)
	for _, f := range app.Flags {
		// The default node is the hostname of whoever runs it, not of the build machine.
		if sf, ok := f.(*cli.StringFlag); ok && sf.Name == "node" {
			sf.Value, sf.DefaultText = "", "the hostname"
		}
	}
	return app.ToManWithSection(8)
}
