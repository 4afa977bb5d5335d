package adm

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/blockrep/blockrep/resource/control"
)

// configPath is -c FILE when given, else the configuration directory.
func configPath(c *cli.Context) string {
	if f := c.String("config-file"); f != "" {
		return f
	}
	return c.String("config")
}

// configFileFor passes -c FILE to the daemon for up, which reads the resource's
// definition from it. The other verbs act on resources that are up, with the
// definition they were brought up with: say so rather than let -c pass unnoticed.
func configFileFor(c *cli.Context, req *control.Request) error {
	f := c.String("config-file")
	if f == "" {
		return nil
	}
	if req.Verb != "up" {
		fmt.Fprintf(c.App.ErrWriter, "blockrepadm: warning: -c applies to up, dump and create-md; %s acts on the resource as it was brought up\n", req.Verb)
		return nil
	}
	abs, err := filepath.Abs(f)
	if err != nil {
		return configErr(err)
	}
	req.Config = abs
	return nil
}

// configErr: a configuration that cannot be read, or lacks the resource, is a
// configuration error (exit 10) whatever the cause.
func configErr(err error) error {
	return &control.Error{Msg: err.Error(), Code: control.CodeConfig}
}

// resourcesStatus asks the daemon for the status of one resource or all of them.
func resourcesStatus(c *cli.Context) ([]control.ResourceStatus, bool, error) {
	res, err := resourceArg(c)
	if err != nil {
		return nil, false, err
	}
	resp, err := client(c).Do(control.Request{Verb: "status", Resource: res})
	if err != nil {
		return nil, false, err
	}
	return resp.Status.Resources, res == "all", nil
}

// stateVerb prints one state the way drbdadm role, cstate and dstate do; for "all",
// each line is prefixed with the resource's name.
func stateVerb(name, usage string) *cli.Command {
	return &cli.Command{
		Name: name, Usage: usage, ArgsUsage: "RESOURCE|all",
		Action: func(c *cli.Context) error {
			rss, all, err := resourcesStatus(c)
			if err != nil {
				return err
			}
			for _, rs := range rss {
				var lines []string
				switch name {
				case "role":
					lines = []string{rs.Role}
				case "cstate":
					for _, p := range rs.Peers {
						lines = append(lines, p.Connection)
					}
				case "dstate":
					d := []string{rs.Disk}
					for _, p := range rs.Peers {
						d = append(d, p.PeerDisk)
					}
					lines = []string{strings.Join(d, "/")}
				}
				for _, l := range lines {
					if all {
						l = rs.Name + " " + l
					}
					fmt.Fprintln(c.App.Writer, l)
				}
			}
			return nil
		},
	}
}

// waitVerb polls the daemon until the condition holds for every resource named, or
// --timeout passes (exit 5, as drbdsetup's wait-* commands).
func waitVerb(name, usage string) *cli.Command {
	return &cli.Command{
		Name: name, Usage: usage, ArgsUsage: "RESOURCE|all",
		Flags: []cli.Flag{&cli.StringFlag{Name: "timeout", Aliases: []string{"t"}, Usage: "give up after this long (seconds, or a duration such as 2m); default: wait forever"}},
		Action: func(c *cli.Context) error {
			timeout, err := parseTimeout(c.String("timeout"))
			if err != nil {
				return err
			}
			var deadline time.Time
			if timeout > 0 {
				deadline = time.Now().Add(timeout)
			}
			for {
				rss, _, err := resourcesStatus(c)
				if err != nil {
					return err
				}
				why := ""
				for _, rs := range rss {
					if why = waitingFor(name, rs); why != "" {
						break
					}
				}
				if why == "" {
					return nil
				}
				if !deadline.IsZero() && time.Now().After(deadline) {
					return &control.Error{Msg: fmt.Sprintf("%s: timed out after %s (%s)", name, timeout, why), Code: control.CodeTimeout}
				}
				time.Sleep(200 * time.Millisecond)
			}
		},
	}
}

// waitingFor says what a wait verb still waits for on rs, or "" when it is done.
func waitingFor(verb string, rs control.ResourceStatus) string {
	if verb == "wait-sync" && !rs.Tiebreaker && rs.Disk != "UpToDate" {
		return fmt.Sprintf("%s disk:%s", rs.Name, rs.Disk)
	}
	for _, p := range rs.Peers {
		if p.Connection != "Connected" {
			return fmt.Sprintf("%s %s connection:%s", rs.Name, p.Node, p.Connection)
		}
		if verb == "wait-sync" && (p.Replication != "Established" || (p.PeerDisk != "UpToDate" && p.PeerDisk != "Diskless")) {
			return fmt.Sprintf("%s %s replication:%s peer-disk:%s", rs.Name, p.Node, p.Replication, p.PeerDisk)
		}
	}
	return ""
}

func parseTimeout(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, usageError(fmt.Sprintf("bad --timeout %q (seconds, or a duration such as 90s)", s))
	}
	return d, nil
}
