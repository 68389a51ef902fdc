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

bench:
	@if [ -f scripts/bench.sh ]; then bash scripts/bench.sh; \
	else echo "bench: scripts/bench.sh does not exist yet"; fi

clean:
	rm -rf bin
