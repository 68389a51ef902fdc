# pgguard: `make test` is the test command; `make deps` installs what the
# tests need (PostgreSQL, PgBouncer, Redis, client libraries) from Debian
# packages.

GO ?= go
# Where `make build` writes the binary.
BIN ?= bin/pgguard
# Shown by `pgguard version`; COMMIT defaults to the checkout's HEAD.
VERSION ?= 0.1.0-dev
COMMIT ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null)
# podman or docker, for `make image`.
CONTAINER ?= podman

.PHONY: build deps test demo bench clean image image-prebuilt

# A statically linked binary: cgo for libpg_query (pg_query_go), linked
# against glibc's static libraries; the netgo and osusergo tags keep the
# resolver and user lookups in Go, so no NSS module is loaded at run time.
# It runs on any x86-64 Linux, FROM scratch included.
build:
	CGO_ENABLED=1 $(GO) build -tags netgo,osusergo \
		-ldflags '-s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -linkmode external -extldflags "-static"' \
		-o $(BIN) ./cmd/pgguard

# The image, built from source in its build stage (needs the golang base
# image from a registry).
image:
	$(CONTAINER) build --format docker --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t pgguard:$(VERSION) .

# The image's final stage around bin/pgguard and this machine's CA bundle:
# no base image to pull.
image-prebuilt: build
	cp /etc/ssl/certs/ca-certificates.crt bin/ca-certificates.crt
	$(CONTAINER) build --format docker --target prebuilt -t pgguard:$(VERSION) .

deps:
	bash scripts/deps.sh

test: deps
	$(GO) test -count=1 -timeout 20m ./...

# A throwaway PostgreSQL with pgguard in front; Ctrl-C removes it. NEON=1
# puts a simulated Neon endpoint in between (scale-to-zero, cold starts).
demo: deps
	$(GO) run ./cmd/pgguard demo $(if $(NEON),-neon)

# pgbench through a direct connection, PgBouncer and pgguard, same run (bench/).
bench: deps
	PGGUARD_BENCH=1 $(GO) test -count=1 -v -timeout 30m ./bench/

clean:
	rm -rf bin
