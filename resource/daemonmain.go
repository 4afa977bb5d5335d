package resource

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os/signal"
	"sync"
	"syscall"

	"github.com/blockrep/blockrep/resource/control"
)

// DaemonMain is blockrepd's command line; it returns the exit code.
func DaemonMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("blockrepd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	d := &Daemon{}
	fs.StringVar(&d.ConfigDir, "config", control.DefaultConfigDir, "directory of .res files, or one file (with its includes)")
	fs.StringVar(&d.Node, "node", control.DefaultNode(), "this node's name (its \"on\" section)")
	fs.StringVar(&d.RunDir, "run-dir", control.DefaultRunDir, "run directory (control socket, NBD exports)")
	level := fs.String("log-level", "info", "debug|info|warn|error")
	fs.BoolVar(&d.FaultInjection, "fault-injection", false, "test only: let the control socket inject disk errors")
	batch := fs.Bool("sched-batch", true, "run under SCHED_BATCH (fewer preemptions on wake-ups)")
	fs.StringVar(&d.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9942); off by default")
	debugAddr := fs.String("debug-addr", "", "serve Go pprof profiles on this address (e.g. 127.0.0.1:6060); off by default")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 1
	}
	if *version {
		fmt.Printf("blockrepd version %s\n", Version)
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "blockrepd: unexpected argument %q\n", fs.Arg(0))
		return 1
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "blockrepd: bad --log-level %q\n", *level)
		return 1
	}
	d.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv})).With("node", d.Node)
	if *batch {
		if err := batchScheduling(); err != nil {
			d.Log.Warn("cannot switch to SCHED_BATCH", "err", err)
		}
	}
	if *debugAddr != "" {
		ln, err := net.Listen("tcp", *debugAddr)
		if err != nil {
			fmt.Fprintf(stderr, "blockrepd: --debug-addr: %v\n", err)
			return 1
		}
		go http.Serve(ln, nil) // net/http/pprof registers on the default mux
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	d.Ready = func() { sdNotify(d.Log, "READY=1") }
	// Sent when shutdown begins, and at the latest before exiting (Run may return first).
	stopping := sync.OnceFunc(func() { sdNotify(d.Log, "STOPPING=1") })
	go func() {
		<-ctx.Done()
		stopping()
	}()
	err := d.Run(ctx)
	stopping()
	if err != nil {
		fmt.Fprintf(stderr, "blockrepd: %v\n", err)
		return 1
	}
	return 0
}
