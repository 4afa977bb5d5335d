GO      ?= go
BIN     := bin
PKGS    := ./...

.PHONY: all build test test-unit deps demo bench soak failover fmt vet clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# Debian packages the tests drive (real NBD clients, fio, qemu tools, filesystems, PostgreSQL,
# Prometheus and promtool for the metrics test, resource-agents and Pacemaker's CLI for the
# OCF agent's tests).
APT_PKGS := libnbd-bin nbdfuse nbdkit fio qemu-utils qemu-system-common nbd-server python3-libnbd e2fsprogs xfsprogs iproute2 iptables util-linux tgt sg3-utils postgresql-15 prometheus resource-agents libxml2-utils pacemaker-cli-utils
deps:
	@scripts/ensure-packages.sh $(APT_PKGS)

test: deps build
	$(GO) vet $(PKGS)
	$(GO) test -race -timeout 20m $(PKGS)

test-unit:
	$(GO) test -race -short $(PKGS)

demo: deps build
	scripts/demo.sh

# One benchmark run as docs/PERFORMANCE.md describes (a few minutes): blockrep vs
# nbdkit, nbd-server and a QEMU quorum. Prints the table; also writes it to bin/bench.md
# (docs/PERFORMANCE.md is curated by hand). Extra flags: make bench BENCH_FLAGS='-only C,nbdkit'
bench: deps build
	$(GO) run ./scripts/bench -rounds 3 -md $(BIN)/bench.md $(BENCH_FLAGS)

# Jepsen-style fault trials against real daemons (internal/soak, docs/RELIABILITY.md):
# make soak N=500 runs N randomized trials and prints a summary; make soak SEED=… replays
# one trial. SOAK_FLAGS passes more, e.g. SOAK_FLAGS=-soak.net=proxy (the 127.0.0.x
# fallback) or -soak.base=… (replay a whole run).
soak: deps
	cd internal/soak && $(GO) test -v -run '^TestSoak$$' -timeout 0 . -args \
		-soak.n=$(or $(N),100) -soak.seed=$(or $(SEED),0) $(SOAK_FLAGS)

# PostgreSQL failover trials (scripts/failover): two data nodes and a tiebreaker in
# network namespaces, a client committing through the floating IP, nodes killed,
# isolated, postmaster killed, switched over. Prints RTO/RPO per kind; also writes
# bin/failover.md. Needs root. Extra flags: make failover FAILOVER_FLAGS='-trials 10 -kinds kill'
failover: deps build
	$(GO) run ./scripts/failover $(FAILOVER_FLAGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	$(GO) vet $(PKGS)

clean:
	rm -rf $(BIN)
