#!/usr/bin/env bash
# Installs what pgguard's tests, benchmarks and `pgguard demo` need, from
# Debian/Ubuntu packages: PostgreSQL server binaries, PgBouncer, Redis, the
# Python (psycopg2 with SQLAlchemy, psycopg 3, asyncpg) and Node.js client
# libraries, iproute2, Chromium (the dashboard's browser test), make and a C
# compiler (pg_query_go uses cgo; glibc's static libraries for `make build`),
# podman (the image test builds and mounts the image) and file. Idempotent:
# apt-get runs only when something is missing. Works as root, or through sudo
# when it exists.
#
# Services of packages installed here are not started (policy-rc.d), and no
# "main" PostgreSQL cluster is created: tests start throwaway servers of
# their own on free ports (internal/localpg).
set -euo pipefail

cd "$(dirname "$0")/.."

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
exists() { compgen -G "$1" >/dev/null; }

missing=()
if [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/initdb" ]; then
	: # a PostgreSQL of the caller's choosing
else
	exists '/usr/lib/postgresql/*/bin/initdb' || missing+=(postgresql)
	exists '/usr/share/postgresql/*/extension/pg_stat_statements.control' || missing+=(postgresql-contrib)
fi
{ command -v pgbouncer || [ -x /usr/sbin/pgbouncer ]; } >/dev/null || missing+=(pgbouncer)
command -v redis-server >/dev/null || missing+=(redis-server)
# ip netns and veth pairs, for the partitioned-upstream test (proxy).
{ command -v ip || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ]; } >/dev/null || missing+=(iproute2)
if command -v dpkg-query >/dev/null; then
	installed python3-psycopg2 || missing+=(python3-psycopg2)
	installed python3-sqlalchemy || missing+=(python3-sqlalchemy)
	installed python3-psycopg || missing+=(python3-psycopg)
	installed python3-asyncpg || missing+=(python3-asyncpg)
	installed libc6-dev || missing+=(libc6-dev) # libc.a for the static `make build`
fi
command -v node >/dev/null || missing+=(nodejs)
# Headless Chromium for the dashboard's browser test (admin/dashboard).
{ command -v chromium || command -v chromium-browser; } >/dev/null || missing+=(chromium)
command -v npm >/dev/null || missing+=(npm)
# promtool, for deploy/'s alert rule unit tests.
command -v promtool >/dev/null || missing+=(prometheus)
command -v make >/dev/null || missing+=(make)
command -v file >/dev/null || missing+=(file)
command -v podman >/dev/null || missing+=(podman)
if [ "${CGO_ENABLED:-1}" != 0 ] && ! command -v "${CC:-gcc}" >/dev/null && ! command -v cc >/dev/null; then
	missing+=(gcc libc6-dev)
fi

if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: installing ${missing[*]}"
	if ! command -v apt-get >/dev/null; then
		echo "deps: no apt-get here; install these yourself: ${missing[*]}" >&2
		exit 1
	fi
	sudo=()
	if [ "$(id -u)" != 0 ]; then
		if ! command -v sudo >/dev/null; then
			echo "deps: not root and no sudo; as root run: apt-get install ${missing[*]}" >&2
			exit 1
		fi
		sudo=(sudo)
	fi
	# No main cluster for the postgresql package (postgresql-common reads
	# createcluster.d), and no services started during the install.
	"${sudo[@]}" mkdir -p /etc/postgresql-common/createcluster.d
	echo 'create_main_cluster = false' | "${sudo[@]}" tee /etc/postgresql-common/createcluster.d/pgguard-no-main.conf >/dev/null
	policy=
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		policy=/usr/sbin/policy-rc.d
		printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
		"${sudo[@]}" chmod +x "$policy"
		trap '"${sudo[@]}" rm -f "$policy"' EXIT
	fi
	export DEBIAN_FRONTEND=noninteractive
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# node-postgres for the driver matrix (test/drivers/node), pinned by its lock file.
if [ -f test/drivers/node/package-lock.json ] && [ ! -d test/drivers/node/node_modules/pg ]; then
	(cd test/drivers/node && npm ci --no-audit --no-fund)
fi

echo "deps: ok"
