// Package adm is blockrepadm, the drbdadm-like command line: it parses the .res files
// itself where no daemon is needed (dump, create-md) and sends every other verb to the
// local blockrepd over its control socket.
package adm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/blockrep/blockrep/resource"
	"github.com/blockrep/blockrep/resource/config"
	"github.com/blockrep/blockrep/resource/control"
)

// Main runs blockrepadm with args and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	code := 0
	app := newApp(stdout, stderr, &code)
	for _, cmd := range app.Commands {
		cmd.OnUsageError = app.OnUsageError // a bad flag of a verb is a usage error too (exit 1)
	}
	args = reorder(args, app.Flags, app.Commands)
	if err := app.Run(append([]string{"blockrepadm"}, args...)); err != nil {
		fmt.Fprintf(stderr, "blockrepadm: %s\n", oneLine(err.Error()))
		return exitCode(err)
	}
	return code
}

// newApp is the command line; Main runs it and ManPage renders it.
func newApp(stdout, stderr io.Writer, code *int) *cli.App {
	return &cli.App{
		Name:            "blockrepadm",
		Version:         resource.Version,
		Usage:           "administer blockrep resources (like drbdadm)",
		UsageText:       "blockrepadm [--config DIR | -c FILE] [--node NAME] [--run-dir DIR] VERB [flags] RESOURCE|all",
		Writer:          stdout,
		ErrWriter:       stderr,
		Flags:           globalFlags(),
		HideHelpCommand: true,
		CommandNotFound: func(c *cli.Context, verb string) {
			fmt.Fprintf(stderr, "blockrepadm: unknown verb %q (see blockrepadm --help)\n", verb)
			*code = control.CodeUsage
		},
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return usageError(err.Error())
		},
		ExitErrHandler: func(*cli.Context, error) {},
		Commands:       commands(),
	}
}

type usageError string

func (u usageError) Error() string { return string(u) }

func exitCode(err error) int {
	var ce *control.Error
	var ue usageError
	var re *config.Error
	switch {
	case errors.As(err, &ce):
		return ce.Code
	case errors.As(err, &ue):
		return control.CodeUsage
	case errors.As(err, &re):
		return control.CodeConfig
	}
	return control.CodeOther
}

func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ") }

func resourceArg(c *cli.Context) (string, error) {
	switch c.NArg() {
	case 1:
		return c.Args().First(), nil
	case 0:
		return "", usageError(fmt.Sprintf("%s needs a resource name or \"all\"", c.Command.Name))
	}
	return "", usageError(fmt.Sprintf("%s takes one resource, got %q", c.Command.Name, strings.Join(c.Args().Slice(), " ")))
}

func client(c *cli.Context) *control.Client { return control.NewClient(c.String("run-dir")) }

// daemonVerb sends a verb with its flags to the daemon.
func daemonVerb(name, usage string, flags ...cli.Flag) *cli.Command {
	return &cli.Command{
		Name: name, Usage: usage, ArgsUsage: "RESOURCE|all", Flags: flags,
		Action: func(c *cli.Context) error {
			res, err := resourceArg(c)
			if err != nil {
				return err
			}
			req := control.Request{Verb: name, Resource: res}
			if err := configFileFor(c, &req); err != nil {
				return err
			}
			if c.IsSet("force") {
				req.Force = c.Bool("force")
			}
			if c.IsSet("discard-my-data") {
				req.DiscardMyData = c.Bool("discard-my-data")
			}
			if c.IsSet("clear-bitmap") {
				req.ClearBitmap = c.Bool("clear-bitmap")
			}
			_, err = client(c).Do(req)
			return err
		},
	}
}

func reserved(name string) *cli.Command {
	return &cli.Command{
		Name: name, Usage: "(not implemented yet)", ArgsUsage: "RESOURCE|all", SkipFlagParsing: true,
		Action: func(c *cli.Context) error {
			return &control.Error{Msg: fmt.Sprintf("%s is not implemented in this version of blockrep", name), Code: control.CodeOther}
		},
	}
}

func globalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "config", Value: control.DefaultConfigDir, Usage: "directory of .res files"},
		&cli.StringFlag{Name: "config-file", Aliases: []string{"c"}, Usage: "one .res/.conf file (and what it includes) instead of --config (drbdadm -c)"},
		&cli.StringFlag{Name: "node", Value: control.DefaultNode(), Usage: "this node's name (its \"on\" section)"},
		&cli.StringFlag{Name: "run-dir", Value: control.DefaultRunDir, Usage: "blockrepd's run directory (control socket, exports)"},
	}
}

func commands() []*cli.Command {
	force := &cli.BoolFlag{Name: "force", Usage: "override the safety check (see docs)"}
	return []*cli.Command{
		{
			Name: "create-md", Usage: "write fresh metadata on this node's backing disk", ArgsUsage: "RESOURCE|all",
			Flags: []cli.Flag{
				&cli.IntFlag{Name: "max-peers", Usage: "peer slots to reserve (default: peers configured)"},
				&cli.BoolFlag{Name: "force", Usage: "overwrite existing blockrep metadata"},
			},
			Action: createMD,
		},
		daemonVerb("up", "attach the disk, listen for and connect to peers"),
		daemonVerb("down", "demote, disconnect and detach", force),
		daemonVerb("attach", "attach the backing disk"),
		daemonVerb("detach", "detach the backing disk (Secondary only)"),
		daemonVerb("connect", "connect to the peers", &cli.BoolFlag{Name: "discard-my-data", Usage: "become the split-brain victim: resync from the peer"}),
		daemonVerb("disconnect", "disconnect from the peers (StandAlone)"),
		daemonVerb("primary", "promote this node", &cli.BoolFlag{Name: "force", Usage: "declare local data UpToDate (fresh resources, lost peers)"}),
		daemonVerb("secondary", "demote this node", &cli.BoolFlag{Name: "force", Usage: "drop NBD clients that still hold the export"}),
		daemonVerb("invalidate", "discard local data and resync it all from a peer"),
		daemonVerb("resume-io", "resume I/O frozen by fencing (the operator vouches that the peer is fenced)"),
		daemonVerb("outdate", "mark the local data Outdated (Secondary, disconnected)"),
		daemonVerb("new-current-uuid", "start a new current generation (Primary); --clear-bitmap skips the initial resync of fresh disks",
			&cli.BoolFlag{Name: "clear-bitmap", Usage: "on a just-created resource: this node and its connected fresh peers become UpToDate without a resync"}),
		stateVerb("role", "print the role (Primary or Secondary)"),
		stateVerb("cstate", "print the connection state to each peer, one line each"),
		stateVerb("dstate", "print the disk states: local/peer... (UpToDate/UpToDate)"),
		waitVerb("wait-connect", "wait until every peer is Connected"),
		waitVerb("wait-sync", "wait until no resync runs and every peer is UpToDate"),
		{
			Name: "status", Usage: "show resource state", ArgsUsage: "[RESOURCE|all]",
			Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "machine-readable output"},
				&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "node ids, replication and disk of every peer"},
				&cli.BoolFlag{Name: "statistics", Aliases: []string{"s"}, Usage: "counters (KiB sent, received, read, written; pending requests)"}},
			Action: status,
		},
		{
			Name: "dump", Usage: "print the normalized configuration", ArgsUsage: "RESOURCE|all",
			Action: dump,
		},
		{
			Name: "events", Usage: "stream state changes (drbdsetup events2 format)", ArgsUsage: "RESOURCE|all",
			Flags: []cli.Flag{
				&cli.BoolFlag{Name: "now", Usage: "print the current state (exists lines) and exit"},
				&cli.BoolFlag{Name: "timestamps", Usage: "prefix every line with its time"},
				&cli.BoolFlag{Name: "statistics", Usage: "include counters (KiB read, written, out of sync)"},
				&cli.BoolFlag{Name: "json", Usage: "one JSON object per line"},
			},
			Action: events,
		},
		{
			Name: "pg-init", Usage: "make the filesystem and PostgreSQL cluster of a new volume (promoter resources)", ArgsUsage: "RESOURCE",
			Flags: []cli.Flag{
				&cli.BoolFlag{Name: "force", Usage: "a just-created resource (as primary --force); overwrite an existing filesystem"},
				&cli.StringFlag{Name: "password-file", Usage: "file whose first line is the superuser's password", Required: true},
			},
			Action: pgInit,
		},
		{
			Name: "adjust", Usage: "apply the .res file's changes to a resource that is up (connection options, peer addresses)", ArgsUsage: "RESOURCE|all",
			Flags:  []cli.Flag{&cli.BoolFlag{Name: "dry-run", Usage: "print what would change; change nothing"}},
			Action: adjust,
		},
		{
			Name: "switchover", Usage: "move the service from this node (the Primary) to NODE or the best other node", ArgsUsage: "RESOURCE [NODE]",
			Action: switchover,
		},
		reserved("verify"), reserved("pause-sync"), reserved("resume-sync"),
		reserved("invalidate-remote"),
	}
}

func status(c *cli.Context) error {
	res := "all"
	if c.NArg() > 1 {
		return usageError("status takes at most one resource")
	}
	if c.NArg() == 1 {
		res = c.Args().First()
	}
	resp, err := client(c).Do(control.Request{Verb: "status", Resource: res})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(resp.Status)
	}
	if c.Bool("verbose") || c.Bool("statistics") {
		control.FormatStatusVerbose(c.App.Writer, resp.Status, c.Bool("verbose"), c.Bool("statistics"))
		return nil
	}
	control.FormatStatus(c.App.Writer, resp.Status)
	return nil
}

func events(c *cli.Context) error {
	res, err := resourceArg(c)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(c.App.Writer)
	ts := c.Bool("timestamps")
	req := control.Request{Resource: res, Now: c.Bool("now"), Statistics: c.Bool("statistics")}
	return client(c).Events(req, func(l control.EventLine) error {
		if c.Bool("json") {
			return enc.Encode(l)
		}
		_, err := fmt.Fprintln(c.App.Writer, l.Format(ts))
		return err
	})
}

func resourcesOf(c *cli.Context) (*config.Config, []string, error) {
	name, err := resourceArg(c)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := config.Load(configPath(c))
	if err != nil {
		return nil, nil, configErr(err)
	}
	if name == "all" {
		return cfg, cfg.Names(), nil
	}
	if _, err := cfg.Resource(name); err != nil {
		return nil, nil, configErr(err)
	}
	return cfg, []string{name}, nil
}

func dump(c *cli.Context) error {
	cfg, names, err := resourcesOf(c)
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(c.App.ErrWriter, "blockrepadm: warning: %s\n", w)
	}
	for i, n := range names {
		if i > 0 {
			fmt.Fprintln(c.App.Writer)
		}
		r, _ := cfg.Resource(n)
		if err := r.Dump(c.App.Writer); err != nil {
			return err
		}
	}
	return nil
}

func createMD(c *cli.Context) error {
	cfg, names, err := resourcesOf(c)
	if err != nil {
		return err
	}
	node := c.String("node")
	// Never under a running resource: its metadata is live.
	if resp, err := client(c).Do(control.Request{Verb: "status", Resource: "all"}); err == nil {
		for _, r := range resp.Status.Resources {
			for _, n := range names {
				if r.Name == n {
					return &control.Error{Msg: fmt.Sprintf("%s is up; run blockrepadm down %s first", n, n), Code: control.CodeState}
				}
			}
		}
	}
	for _, n := range names {
		r, _ := cfg.Resource(n)
		if _, err := r.Host(node); err != nil {
			if len(names) > 1 {
				continue
			}
			return err
		}
		geo, err := resource.CreateMD(configPath(c), node, n, c.Int("max-peers"), c.Bool("force"))
		if err != nil {
			return fmt.Errorf("%s: %w", n, err)
		}
		fmt.Fprintf(c.App.Writer, "%s: metadata created (%d bytes of data, %d peer slots); data is Inconsistent until a first primary --force\n",
			n, geo.DataSize, geo.MaxPeers)
	}
	return nil
}

func pgInit(c *cli.Context) error {
	if c.NArg() != 1 || c.Args().First() == "all" {
		return usageError("pg-init takes one resource")
	}
	b, err := os.ReadFile(c.String("password-file"))
	if err != nil {
		return &control.Error{Msg: fmt.Sprintf("password file: %v", err), Code: control.CodeUsage}
	}
	pw := strings.TrimRight(strings.SplitN(string(b), "\n", 2)[0], "\r")
	if pw == "" {
		return &control.Error{Msg: fmt.Sprintf("password file %s: the first line is empty", c.String("password-file")), Code: control.CodeUsage}
	}
	_, err = client(c).Do(control.Request{Verb: "pg-init", Resource: c.Args().First(), Force: c.Bool("force"), Password: pw})
	return err
}

func switchover(c *cli.Context) error {
	if c.NArg() < 1 || c.NArg() > 2 || c.Args().First() == "all" {
		return usageError("switchover takes one resource and optionally the node to move to")
	}
	_, err := client(c).Do(control.Request{Verb: "switchover", Resource: c.Args().First(), Target: c.Args().Get(1)})
	return err
}

func adjust(c *cli.Context) error {
	res, err := resourceArg(c)
	if err != nil {
		return err
	}
	resp, err := client(c).Do(control.Request{Verb: "adjust", Resource: res, DryRun: c.Bool("dry-run")})
	if resp != nil && resp.Output != "" {
		fmt.Fprint(c.App.Writer, resp.Output)
	}
	return err
}
