#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for one test run, from Debian's packages (installed by
# scripts/install-deps.sh): `start` makes a cluster in a fresh temporary folder (initdb as the
# unprivileged `postgres` user when run as root), on a free port of 127.0.0.1 with its socket in
# that folder, and writes its URL to target/pg-test.url, which the tests read (each test then
# creates a database of its own); `stop` stops it and removes the folder.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
mkdir -p target
state=target/pg-test.dir
url=target/pg-test.url
. "$here/pg-common.sh"

stop() {
  if [ -f "$state" ]; then
    dir=$(cat "$state")
    if [ -d "$dir/data" ]; then
      "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    rm -f "$state" "$url"
  fi
}

case "${1:-}" in
start)
  stop
  dir=$(mktemp -d /tmp/meterpki-pg.XXXXXX)
  echo "$dir" >"$state"
  mkdir -p "$dir/data" "$dir/sock"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres:postgres "$dir"
  fi
  chmod 700 "$dir"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir/sock -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
    start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
  echo "postgresql://postgres@127.0.0.1:$port/postgres" >"$url"
  echo "PostgreSQL test cluster on 127.0.0.1:$port ($dir)" >&2
  ;;
stop)
  stop
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
