#!/bin/bash
# Profiles blockrepd (and nbdkit, for reference) under fio 4k randwrite qd32, the way
# docs/PERFORMANCE.md reports it. Nothing in the repository is modified: a copy of the
# working tree is built under $OUT with a pprof hook (an HTTP listener on 127.0.0.1,
# enabled only by BLOCKREP_PPROF_DIR), and the benchmark harness runs one long round.
#
#   scripts/bench/profile.sh [SERVERS] [WORKLOAD]     # default: one,C,A,nbdkit randwrite
#   SUMMARY_ONLY=1 rewrites $OUT/summary.txt from data collected before.
#   OUT=/tmp/blockrep-profile  RUNTIME=34  BLOCK=1 (also block and mutex profiles; they
#   cost some speed, so the perf stat figures of such a run are not comparable)
#
# During each server's fio run (RUNTIME s) it takes, one after the other:
#   2–7 s    perf stat: task-clock, context switches, wake-ups, syscalls by type, per daemon
#   8–13 s   pprof CPU profile of every blockrepd (go tool pprof -top)
#   14–16 s  runtime trace (go tool trace -pprof=sched: where goroutines wait to run)
#   17–20 s  strace -c -f (slows the daemon a lot; counts only)
#   21–26 s  perf record -g (kernel and user stacks)
# Per-I/O figures divide by the daemon's pwrite64 count (one pwrite per 4 KiB write).
set -euo pipefail
cd "$(dirname "$0")/../.."
SERVERS=${1:-one,C,A,nbdkit}
WORKLOAD=${2:-randwrite}
OUT=${OUT:-/tmp/blockrep-profile}
RUNTIME=${RUNTIME:-34}
for t in perf strace curl go fio; do command -v $t >/dev/null || { echo "need $t" >&2; exit 1; }; done

IFS=, read -ra LIST <<<"$SERVERS"
if [ -z "${SUMMARY_ONLY:-}" ]; then
rm -rf "$OUT"
mkdir -p "$OUT/src" "$OUT/bin" "$OUT/addr"
tar -C . --exclude=./.git --exclude=./bin -cf - . | tar -C "$OUT/src" -xf -
cat > "$OUT/src/cmd/blockrepd/zz_pprof_hook.go" <<'EOF'
package main

// Profiling hook of scripts/bench/profile.sh; never part of the repository.

import (
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"path/filepath"
	"runtime"
)

func init() {
	dir := os.Getenv("BLOCKREP_PPROF_DIR")
	if dir == "" {
		return
	}
	if os.Getenv("BLOCKREP_PPROF_BLOCK") != "" {
		runtime.SetBlockProfileRate(10000) // one sample per 10 µs blocked
		runtime.SetMutexProfileFraction(20)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return
	}
	os.WriteFile(filepath.Join(dir, fmt.Sprintf("%d.addr", os.Getpid())), []byte(l.Addr().String()), 0o644)
	go http.Serve(l, nil)
}
EOF
(cd "$OUT/src" && go build -o "$OUT/bin/" ./cmd/...)
go build -o "$OUT/bench" ./scripts/bench

BLOCKREP_PPROF_BLOCK=${BLOCK:-} BLOCKREP_PPROF_DIR="$OUT/addr" "$OUT/bench" -bin "$OUT/bin" -only "$SERVERS" -workloads "$WORKLOAD" \
	-rounds 1 -runtime "${RUNTIME}s" >"$OUT/bench.out" 2>"$OUT/bench.log" &
BENCH=$!
trap 'kill $BENCH 2>/dev/null || true' EXIT

until TMP=$(sed -n 's/^bench: temp dir \([^ ]*\) .*/\1/p' "$OUT/bench.log") && [ -n "$TMP" ]; do sleep 0.2; done

# pids whose command line contains $1 (our temp dir makes it unique)
pids_of() { for p in /proc/[0-9]*; do tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "$1" && basename "$p"; done; true; }

EVENTS=task-clock,context-switches,cpu-migrations,sched:sched_wakeup,raw_syscalls:sys_enter
for s in pwrite64 pread64 read write writev futex epoll_pwait nanosleep fdatasync sched_yield tgkill getpid madvise recvfrom sendto recvmsg sendmsg; do
	EVENTS="$EVENTS,syscalls:sys_enter_$s"
done

for key in "${LIST[@]}"; do
	echo "== $key: waiting for its fio run" >&2
	until [ -n "$(pids_of "--name=$key-$WORKLOAD")" ]; do
		kill -0 $BENCH 2>/dev/null || break
		sleep 0.2
	done
	kill -0 $BENCH 2>/dev/null || { echo "bench ended early:" >&2; tail -3 "$OUT/bench.log" >&2; break; }
	declare -A role=()
	case $key in
	nbdkit) role[nbdkit]=$(pids_of "nbdkit -U $TMP/nbdkit/") ;;
	*)
		role[primary]=$(pids_of "$TMP/$key/conf --node alpha")
		b=$(pids_of "$TMP/$key/conf --node beta")
		[ -n "$b" ] && role[peer]=$b
		;;
	esac
	d="$OUT/$key"
	mkdir -p "$d"
	sleep 2
	for r in "${!role[@]}"; do
		perf stat -x, -e "$EVENTS" -p "${role[$r]}" -o "$d/$r.perfstat" -- sleep 5 &
	done
	wait_jobs() { for j in $(jobs -p); do [ "$j" = "$BENCH" ] || wait "$j" || true; done; }
	wait_jobs
	sleep 1
	for r in "${!role[@]}"; do
		a="$OUT/addr/${role[$r]}.addr"
		[ -f "$a" ] && curl -s -o "$d/$r.cpu.pprof" "http://$(cat "$a")/debug/pprof/profile?seconds=5" &
		if [ -f "$a" ] && [ -n "${BLOCK:-}" ]; then
			curl -s -o "$d/$r.block.pprof" "http://$(cat "$a")/debug/pprof/block?seconds=5" &
			curl -s -o "$d/$r.mutex.pprof" "http://$(cat "$a")/debug/pprof/mutex?seconds=5" &
		fi
	done
	wait_jobs
	for r in "${!role[@]}"; do
		a="$OUT/addr/${role[$r]}.addr"
		[ -f "$a" ] && curl -s -o "$d/$r.trace" "http://$(cat "$a")/debug/pprof/trace?seconds=2" &
	done
	wait_jobs
	sleep 1
	for r in "${!role[@]}"; do
		# not nbdkit: once, detaching strace made nbdkit 1.32 drop fio's connection
		[ "$r" = nbdkit ] || timeout -s INT 3 strace -c -f -p "${role[$r]}" -o "$d/$r.strace" 2>/dev/null &
	done
	wait_jobs
	sleep 1
	for r in "${!role[@]}"; do
		perf record -q -F 499 -g -p "${role[$r]}" -o "$d/$r.perf.data" -- sleep 5 2>/dev/null &
	done
	wait_jobs
	echo "${!role[*]}" >"$d/roles"
	unset role
done
wait $BENCH || { echo "bench failed (the summary covers what was collected):" >&2; tail -3 "$OUT/bench.log" >&2; }
trap - EXIT
fi

# ---- summary ----
{
	echo "# profile of $SERVERS, fio $WORKLOAD, $(date -u '+%F %H:%M UTC')"
	grep -E 'bench: \[' "$OUT/bench.log" || true
	for key in "${LIST[@]}"; do
		d="$OUT/$key"
		[ -f "$d/roles" ] || continue
		for r in $(cat "$d/roles"); do
			echo
			echo "## $key / $r: perf stat (5 s), per pwrite64 (= per 4 KiB write)"
			awk -F, '
				$3 ~ /sys_enter_pwrite64/ { pw = $1 }
				{ v[$3] = $1; order[n++] = $3 }
				END {
					if (pw == 0) pw = 1
					printf "  pwrite64 in window: %d\n", pw
					for (i = 0; i < n; i++) { e = order[i]; if (e == "" ) continue
						x = v[e]; if (x == "<not counted>" || x == 0) continue
						if (e == "task-clock") printf "  %-34s %8.2f us/IO\n", e, x * 1000 / pw
						else printf "  %-34s %8.3f /IO\n", e, x / pw }
				}' "$d/$r.perfstat"
			if [ -s "$d/$r.cpu.pprof" ]; then
				echo
				echo "## $key / $r: pprof CPU (5 s), top by flat"
				go tool pprof -top -nodecount=30 "$OUT/bin/blockrepd" "$d/$r.cpu.pprof" 2>/dev/null | sed -n '1,40p'
				echo
				echo "## $key / $r: pprof CPU, top by cum"
				go tool pprof -top -cum -nodecount=40 "$OUT/bin/blockrepd" "$d/$r.cpu.pprof" 2>/dev/null | sed -n '6,50p'
			fi
			for k in block mutex; do
				if [ -s "$d/$r.$k.pprof" ]; then
					echo
					echo "## $key / $r: $k profile (5 s), top by cum"
					go tool pprof -top -cum -nodecount=25 "$OUT/bin/blockrepd" "$d/$r.$k.pprof" 2>/dev/null | sed -n '1,32p'
				fi
			done
			if [ -s "$d/$r.trace" ]; then
				echo
				echo "## $key / $r: scheduler latency (go tool trace -pprof=sched), top"
				go tool trace -pprof=sched "$d/$r.trace" >"$d/$r.sched.pprof" 2>/dev/null &&
					go tool pprof -top -nodecount=15 "$d/$r.sched.pprof" 2>/dev/null | sed -n '1,22p' || true
			fi
			if [ -s "$d/$r.strace" ]; then
				echo
				echo "## $key / $r: strace -c -f (3 s, ptrace-slowed)"
				sed -n '1,25p' "$d/$r.strace"
			fi
			if [ -s "$d/$r.perf.data" ]; then
				echo
				echo "## $key / $r: perf record (5 s), top symbols (self)"
				perf report -i "$d/$r.perf.data" --stdio --no-children --sort dso,sym 2>/dev/null |
					grep -E '^ +[0-9]' | head -30 || true
			fi
		done
	done
} >"$OUT/summary.txt"
echo "summary: $OUT/summary.txt (raw data in $OUT/*/)" >&2
