package adm

import (
	"io"

	"github.com/cpuguy83/go-md2man/v2/md2man"
	"github.com/urfave/cli/v2"
)

// manTail follows the verbs and flags, which come from the same definitions as --help.
const manTail = `
# EXIT STATUS

**0** success; **1** usage (unknown verb, missing resource, bad flag); **10** configuration
error (the message names file:line); **11** state change refused (a peer is Primary, the
export is held open, no quorum); **17** no UpToDate data; **20** anything else (daemon not
running, resource not up, I/O errors). Errors are one line on standard error.

# FILES

*/etc/blockrep/\*.res*
: resource configuration, see **blockrep.res**(5).

*/run/blockrep/blockrepd.sock*
: the control socket of **blockrepd**(8); every verb but **dump** and **create-md** goes there.

# SEE ALSO

**blockrepd**(8), **blockrep.res**(5), **fence_blockrep**(8), **drbdadm**(8)
`

// ManPage renders blockrepadm(8).
func ManPage() (string, error) {
	var code int
	app := newApp(io.Discard, io.Discard, &code)
	for _, f := range app.Flags {
		// The default node is the hostname of whoever runs it, not of the build machine.
		if sf, ok := f.(*cli.StringFlag); ok && sf.Name == "node" {
			sf.Value, sf.DefaultText = "", "the hostname"
		}
	}
	md, err := app.ToMarkdown()
	if err != nil {
		return "", err
	}
	return string(md2man.Render([]byte("% blockrepadm 8\n\n" + md + manTail))), nil
}
