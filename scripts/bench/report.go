package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

type runKey struct {
	round          int
	workload, serv string
}

type results struct {
	servers, workloads []string
	rounds, runtime    int
	env                machine
	data               map[runKey]*result
	started, finished  time.Time
	maxResident        float64 // largest page-cache residency of a backing file after eviction
}

// target rows (docs/PERFORMANCE.md, "Method"), recalibrated on 2026-12-04.
var targets = []struct {
	serv, ref, workload string
	min                 float64
}{
	{"one", "nbdkit", "randwrite", 1.1},
	{"one", "nbdkit", "write", 1.0},
	{"C", "nbdkit", "randwrite", 0.60},
	{"C", "nbdkit", "write", 0.5},
	{"C", "nbd-server", "randwrite", 1.0},
	{"C", "qemu", "randwrite", 3},
	{"A", "nbdkit", "randwrite", 0.70},
	{"A", "nbdkit", "write", 0.6},
	{"C", "nbdkit", "durable", 0.6},
}

const rssTargetMiB = 64

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func (r *results) figures(w, s string) []float64 {
	var xs []float64
	for i := 0; i < r.rounds; i++ {
		if x, ok := r.data[runKey{i, w, s}]; ok {
			xs = append(xs, x.figure)
		}
	}
	return xs
}

// ratios of s to ref for workload w, one per round in which both ran.
func (r *results) ratios(w, s, ref string) []float64 {
	var xs []float64
	for i := 0; i < r.rounds; i++ {
		a, ok1 := r.data[runKey{i, w, s}]
		b, ok2 := r.data[runKey{i, w, ref}]
		if ok1 && ok2 && b.figure > 0 {
			xs = append(xs, a.figure/b.figure)
		}
	}
	return xs
}

func fmtFigure(x float64) string {
	switch {
	case x >= 100000:
		return fmt.Sprintf("%.0fk", x/1000)
	case x >= 10000:
		return fmt.Sprintf("%.1fk", x/1000)
	default:
		return fmt.Sprintf("%.0f", x)
	}
}

func fmtRatios(xs []float64) string {
	var p []string
	for _, x := range xs {
		p = append(p, fmt.Sprintf("%.2f", x))
	}
	return strings.Join(p, " ")
}

func (r *results) has(s string) bool  { return slices.Contains(r.servers, s) }
func (r *results) hasW(w string) bool { return slices.Contains(r.workloads, w) }

func (r *results) render() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	e := r.env
	p("### Run of %s (UTC), %d rounds × %d s per fio run\n\n", r.started.UTC().Format("2006-01-02 15:04"), r.rounds, r.runtime)
	p("- machine: %d CPUs (%s), %.0f GiB RAM, Linux %s; shared and noisy (load average %s at the start, %s at the end)\n",
		e.cpus, e.cpuModel, e.memGiB, e.kernel, e.loadStart, e.loadEnd)
	p("- backing files: %s; largest page-cache residency of any backing file after eviction: %.1f%%\n", e.fs, 100*r.maxResident)
	p("- tools: %s; %s\n", strings.Join(e.tools, "; "), e.goVersion)
	p("- blockrep: checkout at commit %s, bin/blockrepd sha256 %s…; the run took %s\n\n", e.commit, e.binSum, r.finished.Sub(r.started).Round(time.Second))

	// The table.
	p("Median of %d rounds: absolute figure · ratio to nbdkit (taken within each round).\n\n", r.rounds)
	p("| server |")
	for _, wk := range r.workloads {
		w := workloadByKey(wk)
		p(" %s (%s) |", w.title, w.unit)
	}
	p("\n|---|")
	for range r.workloads {
		p("---:|")
	}
	p("\n")
	for _, s := range r.servers {
		p("| %s |", serverName(s))
		for _, wk := range r.workloads {
			fig := r.figures(wk, s)
			if len(fig) == 0 {
				p(" — |")
				continue
			}
			cell := fmtFigure(median(fig))
			if rs := r.ratios(wk, s, "nbdkit"); len(rs) > 0 {
				cell += fmt.Sprintf(" · %.2f×", median(rs))
			}
			p(" %s |", cell)
		}
		p("\n")
	}

	// Targets.
	p("\nTargets (docs/PERFORMANCE.md, \"Method\"): median of the per-round ratios.\n\n")
	p("| blockrep setup | against | workload | target | median | per round | verdict |\n|---|---|---|---:|---:|---|---|\n")
	for _, t := range targets {
		w := workloadByKey(t.workload)
		row := fmt.Sprintf("| %s | %s | %s | ≥ %.2f× |", serverName(t.serv), serverName(t.ref), w.title, t.min)
		rs := r.ratios(t.workload, t.serv, t.ref)
		if !r.has(t.serv) || !r.has(t.ref) || !r.hasW(t.workload) || len(rs) == 0 {
			p("%s — | — | not measured |\n", row)
			continue
		}
		m := median(rs)
		verdict := "**FAIL**"
		if m >= t.min {
			verdict = "PASS"
		}
		p("%s %.3f× | %s | %s |\n", row, m, fmtRatios(rs), verdict)
	}

	// Memory.
	if r.hasW("randwrite") {
		p("\nblockrepd RSS (VmRSS, max sampled every 50 ms during the 4k randwrite run, 1 GiB resource):\n\n")
		any := false
		for _, s := range []string{"one", "C", "A"} {
			if !r.has(s) {
				continue
			}
			for _, label := range []string{"primary", "peer"} {
				var xs []float64
				for i := 0; i < r.rounds; i++ {
					if x, ok := r.data[runKey{i, "randwrite", s}]; ok && x.rssKB[label] > 0 {
						xs = append(xs, float64(x.rssKB[label])/1024)
					}
				}
				if len(xs) == 0 {
					continue
				}
				any = true
				mx := slices.Max(xs)
				extra := ""
				if s == "one" {
					verdict := "PASS"
					if mx > rssTargetMiB {
						verdict = "**FAIL**"
					}
					extra = fmt.Sprintf(" — target ≤ %d MiB beyond configured buffers (none without a peer): %s", rssTargetMiB, verdict)
				}
				p("- %s, %s: max %.1f MiB (per round: %s)%s\n", serverName(s), label, mx, fmtMiB(xs), extra)
			}
		}
		if !any {
			p("- (no blockrep server measured)\n")
		}
	}

	// CPU per I/O.
	p("\nCPU time per I/O (µs, user+sys during the run, median) · context switches per I/O; the client row is\nfio's own CPU accounting; \"machine idle\" is the share of both CPUs left idle during the run:\n\n")
	p("| server | process |")
	for _, wk := range r.workloads {
		p(" %s |", workloadByKey(wk).title)
	}
	p("\n|---|---|")
	for range r.workloads {
		p("---:|")
	}
	p("\n")
	for _, s := range r.servers {
		labels := map[string]bool{}
		for k, x := range r.data {
			if k.serv == s {
				for l := range x.cpu {
					labels[l] = true
				}
			}
		}
		for _, l := range sortedKeys(labels) {
			p("| %s | %s |", serverName(s), l)
			for _, wk := range r.workloads {
				var cpu, cs []float64
				for i := 0; i < r.rounds; i++ {
					if x, ok := r.data[runKey{i, wk, s}]; ok && x.ios > 0 {
						cpu = append(cpu, x.cpu[l]*1e6/float64(x.ios))
						cs = append(cs, float64(x.ctxsw[l])/float64(x.ios))
					}
				}
				switch {
				case len(cpu) == 0:
					p(" — |")
				case l == clientLabel:
					p(" %.1f |", median(cpu))
				default:
					p(" %.1f · %.2f |", median(cpu), median(cs))
				}
			}
			p("\n")
		}
		p("| %s | machine idle |", serverName(s))
		for _, wk := range r.workloads {
			var idle []float64
			for i := 0; i < r.rounds; i++ {
				if x, ok := r.data[runKey{i, wk, s}]; ok {
					idle = append(idle, 100*x.idle)
				}
			}
			if len(idle) == 0 {
				p(" — |")
			} else {
				p(" %.0f%% |", median(idle))
			}
		}
		p("\n")
	}
	p("\n(Threads and processes that live only as long as the client connection, such as nbdkit's\nworkers and nbd-server's per-client child, are sampled every 50 ms.)\n")

	// Every run.
	p("\n<details><summary>Every run: figure (ratio to nbdkit in that round)</summary>\n\n")
	p("| workload | server |")
	for i := 0; i < r.rounds; i++ {
		p(" round %d |", i+1)
	}
	p("\n|---|---|")
	for i := 0; i < r.rounds; i++ {
		p("---:|")
	}
	p("\n")
	for _, wk := range r.workloads {
		for _, s := range r.servers {
			p("| %s | %s |", workloadByKey(wk).title, serverName(s))
			for i := 0; i < r.rounds; i++ {
				x, ok := r.data[runKey{i, wk, s}]
				if !ok {
					p(" — |")
					continue
				}
				cell := fmtFigure(x.figure)
				if ref, ok := r.data[runKey{i, wk, "nbdkit"}]; ok && ref.figure > 0 {
					cell += fmt.Sprintf(" (%.2f)", x.figure/ref.figure)
				}
				p(" %s |", cell)
			}
			p("\n")
		}
	}
	p("\n</details>\n")
	return b.String()
}

func fmtMiB(xs []float64) string {
	var p []string
	for _, x := range xs {
		p = append(p, fmt.Sprintf("%.1f", x))
	}
	return strings.Join(p, " ")
}
