GO      ?= go
BIN     := bin
PKGS    := ./...

.PHONY: all build test test-unit deps demo bench soak failover fmt vet clean man install deb

all: build

# The version --version prints: git describe, or "unknown" outside a git checkout.
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/blockrep/blockrep/resource.Version=$(VERSION)

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

# Man pages into $(BIN)/man: blockrepadm(8) from the CLI's definitions, the others
# from packaging/man/*.md.
man:
	$(GO) run ./packaging/genman -src packaging/man -out $(BIN)/man

# make install [DESTDIR=…] [PREFIX=/usr]; docs/ops.md lists what goes where.
PREFIX     ?= /usr
SBINDIR    ?= $(PREFIX)/sbin
MANDIR     ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
UNITDIR    ?= /lib/systemd/system
SYSCONFDIR ?= /etc
OCFDIR     ?= /usr/lib/ocf/resource.d/blockrep
HANDLERDIR ?= /usr/lib/blockrep
# The OCF resource agent and the Pacemaker fence-peer handler are installed only when
# the tree has them.
OCF_AGENT  := $(wildcard scripts/ocf/blockrep)
FENCE_PEER := $(wildcard scripts/ocf/crm-fence-peer.sh)

install: build man
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5 \
		$(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/init.d \
		$(DESTDIR)$(SYSCONFDIR)/default $(DESTDIR)$(SYSCONFDIR)/blockrep
	install -m 0755 $(BIN)/blockrepd $(BIN)/blockrepadm $(BIN)/fence_blockrep $(DESTDIR)$(SBINDIR)/
	for f in packaging/systemd/*.service; do \
		sed -e 's|/usr/sbin/|$(SBINDIR)/|g' -e 's|/etc\b|$(SYSCONFDIR)|g' $$f > $(DESTDIR)$(UNITDIR)/$${f##*/} || exit 1; \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$${f##*/}; \
	done
	sed -e 's|/usr/sbin/|$(SBINDIR)/|g' -e 's|/etc\b|$(SYSCONFDIR)|g' packaging/init.d/blockrep > $(DESTDIR)$(SYSCONFDIR)/init.d/blockrep
	chmod 0755 $(DESTDIR)$(SYSCONFDIR)/init.d/blockrep
	install -m 0644 packaging/default/blockrep $(DESTDIR)$(SYSCONFDIR)/default/blockrep
	install -m 0644 packaging/example.res.example $(DESTDIR)$(SYSCONFDIR)/blockrep/example.res.example
	install -m 0644 $(BIN)/man/*.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 $(BIN)/man/*.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 packaging/bash-completion/blockrepadm $(DESTDIR)$(BASHCOMPDIR)/blockrepadm
ifneq ($(OCF_AGENT),)
	install -d $(DESTDIR)$(OCFDIR)
	install -m 0755 $(OCF_AGENT) $(DESTDIR)$(OCFDIR)/blockrep
endif
ifneq ($(FENCE_PEER),)
	install -d $(DESTDIR)$(HANDLERDIR)
	install -m 0755 $(FENCE_PEER) $(DESTDIR)$(HANDLERDIR)/crm-fence-peer.sh
endif

# make deb: $(BIN)/blockrep_VERSION_ARCH.deb, from an install into $(BIN)/debroot.
# A Debian version must start with a digit and has no "-" without a revision: a tag
# vX.Y-N-gHASH becomes X.Y+N+gHASH, an untagged commit 0~gitCOUNT.gHASH (in commit order).
DEB_VERSION := $(shell v='$(VERSION)'; case "$$v" in (v[0-9]*) ;; (*) v="0~git$$(git rev-list --count HEAD 2>/dev/null || echo 0).g$$v" ;; esac; \
	echo "$$v" | sed -e 's/^v//' -e 's/-/+/g' -e 's/[^A-Za-z0-9.+~]//g')
DEB_ARCH    := $(shell dpkg --print-architecture 2>/dev/null)
DEB_ROOT    := $(BIN)/debroot
DEB_COMPRESS ?= xz
DEB_MAINTAINER ?= $(or $(shell git config user.name),blockrep) <$(or $(shell git config user.email),root@localhost)>
deb:
	rm -rf $(DEB_ROOT)
	$(MAKE) install DESTDIR=$(abspath $(DEB_ROOT)) PREFIX=/usr SYSCONFDIR=/etc UNITDIR=/lib/systemd/system
	gzip -9n $(DEB_ROOT)/usr/share/man/man*/*
	install -d $(DEB_ROOT)/DEBIAN
	sed -e 's/@VERSION@/$(DEB_VERSION)/' -e 's/@ARCH@/$(DEB_ARCH)/' -e 's|@MAINTAINER@|$(DEB_MAINTAINER)|' \
		-e "s/@SIZE@/$$(du -sk --exclude=DEBIAN $(DEB_ROOT) | cut -f1)/" packaging/deb/control > $(DEB_ROOT)/DEBIAN/control
	cd $(DEB_ROOT) && find etc -type f | sed 's|^|/|' | sort > DEBIAN/conffiles
	install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm $(DEB_ROOT)/DEBIAN/
	dpkg-deb --root-owner-group -Z$(DEB_COMPRESS) --build $(DEB_ROOT) $(BIN)/blockrep_$(DEB_VERSION)_$(DEB_ARCH).deb

# Debian packages the tests drive (real NBD clients, fio, qemu tools, filesystems, PostgreSQL,
# Prometheus and promtool for the metrics test, resource-agents and Pacemaker for the OCF
# agent's tests, groff for the man pages).
APT_PKGS := libnbd-bin nbdfuse nbdkit fio qemu-utils qemu-system-common nbd-server python3-libnbd e2fsprogs xfsprogs iproute2 iptables util-linux tgt sg3-utils postgresql-15 prometheus resource-agents libxml2-utils pacemaker-cli-utils pacemaker corosync groff-base
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
