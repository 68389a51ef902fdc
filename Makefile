# pgguard: `make test` is the test command; `make deps` installs what the
# tests need (PostgreSQL, PgBouncer, Redis, client libraries) from Debian
# packages.

GO ?= go

.PHONY: build deps test demo bench clean

build:
	$(GO) build -o bin/pgguard ./cmd/pgguard

deps:
	bash scripts/deps.sh

test: deps
	$(GO) test -count=1 -timeout 20m ./...

# A throwaway PostgreSQL with pgguard in front; Ctrl-C removes it.
demo: deps
	$(GO) run ./cmd/pgguard demo

# pgbench through a direct connection, PgBouncer and pgguard, same run (bench/).
bench: deps
	PGGUARD_BENCH=1 $(GO) test -count=1 -v -timeout 30m ./bench/

clean:
	rm -rf bin
