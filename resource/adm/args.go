package adm

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// reorder moves flags in front of the positional arguments, as drbdadm accepts them
// anywhere (blockrepadm status r0 --json); urfave/cli stops parsing flags at the first
// argument. Global flags go before the verb, the verb's own flags right after it, and
// everything after "--" stays positional. A flag neither knows is left where the verb's
// flags are, so that the parser reports it.
func reorder(args []string, globals []cli.Flag, cmds []*cli.Command) []string {
	var global, local, pos, rest []string
	var cmd *cli.Command
	verb := ""
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = args[i+1:]
			break
		}
		if len(a) < 2 || a[0] != '-' || (cmd != nil && cmd.SkipFlagParsing) {
			if verb == "" {
				verb = a
				cmd = findCommand(cmds, a)
				if cmd == nil {
					return args // an unknown verb: let the parser say so
				}
				continue
			}
			pos = append(pos, a)
			continue
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		var f cli.Flag
		if cmd != nil {
			f = findFlag(cmd.Flags, name)
		}
		dst := &local
		if f == nil {
			if g := findFlag(globals, name); g != nil || verb == "" {
				f, dst = g, &global
			}
		}
		*dst = append(*dst, a)
		if f != nil && takesValue(f) && !hasValue && i+1 < len(args) {
			i++
			*dst = append(*dst, args[i])
		}
	}
	out := append(global, verb)
	if verb == "" {
		out = global
	}
	out = append(append(out, local...), pos...)
	if rest != nil {
		out = append(append(out, "--"), rest...)
	}
	return out
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

func findFlag(flags []cli.Flag, name string) cli.Flag {
	if name == "h" || name == "help" {
		return cli.HelpFlag
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

func takesValue(f cli.Flag) bool {
	v, ok := f.(interface{ TakesValue() bool })
	return ok && v.TakesValue()
}
