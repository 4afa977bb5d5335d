GO      ?= go
BIN     := bin
PKGS    := ./...

.PHONY: all build test test-unit deps demo bench soak fmt vet clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# Debian packages the tests drive (real NBD clients, fio, qemu tools, filesystems).
APT_PKGS := libnbd-bin nbdfuse nbdkit fio qemu-utils nbd-server python3-libnbd e2fsprogs xfsprogs iproute2 iptables util-linux
deps:
	@scripts/ensure-packages.sh $(APT_PKGS)

test: deps build
	$(GO) vet $(PKGS)
	$(GO) test -race -timeout 20m $(PKGS)

test-unit:
	$(GO) test -race -short $(PKGS)

demo: deps build
	scripts/demo.sh

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	$(GO) vet $(PKGS)

clean:
	rm -rf $(BIN)
