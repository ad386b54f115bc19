#!/usr/bin/env bash
# Private PostgreSQL clusters for the tests that stop, kill or promote a database (the shared
# test cluster of scripts/test-postgres.sh cannot be stopped under the other tests) and for
# `make demo-cluster`. Each cluster lives in DIR/NAME, listens on 127.0.0.1 on a port of its
# own (DIR/NAME.port) with its socket in DIR/NAME.sock, and is run as the unprivileged
# `postgres` user when called as root.
#
#   pg-cluster.sh primary DIR         a new primary in DIR/primary (prints its port)
#   pg-cluster.sh standby DIR         a synchronous streaming standby of DIR/primary in
#                                     DIR/standby: the primary waits for it on every commit
#   pg-cluster.sh tls DIR             TLS on the primary, required from TCP clients: a test CA
#                                     (DIR/tls/ca.pem) and a server certificate for 127.0.0.1
#   pg-cluster.sh user DIR NAME PASS  a role NAME with password PASS, which must give it
#                                     (scram-sha-256) to connect over TCP
#   pg-cluster.sh url DIR [DB]        the URL of every cluster in DIR, primary first, with
#                                     target_session_attrs=read-write
#   pg-cluster.sh start|stop DIR NAME start or stop (fast) one cluster
#   pg-cluster.sh kill DIR NAME       stop it as a crash does (immediate: no checkpoint)
#   pg-cluster.sh promote DIR NAME    promote a standby to primary
#   pg-cluster.sh destroy DIR         stop everything in DIR and remove it
set -euo pipefail
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/pg-common.sh"
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,21p' "$0" >&2; exit 2; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

own() {
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres:postgres "$@"; fi
}

start() { # NAME
  local name=$1 port
  port=$(cat "$dir/$name.port")
  "${as[@]}" "$bin/pg_ctl" -D "$dir/$name" -l "$dir/$name.log" -w -t 60 \
    -o "-p $port -k $dir/$name.sock -c listen_addresses=127.0.0.1" start >/dev/null \
    || { tail -n 30 "$dir/$name.log" >&2; exit 1; }
}

psql_on() { # NAME SQL
  "${as[@]}" "$bin/psql" -X -q -At -h 127.0.0.1 -p "$(cat "$dir/$1.port")" -U postgres -d postgres -c "$2"
}

case "$cmd" in
primary)
  mkdir -p "$dir/primary" "$dir/primary.sock"
  chmod 700 "$dir" "$dir/primary"
  own "$dir"
  free_port >"$dir/primary.port"
  "${as[@]}" "$bin/initdb" -D "$dir/primary" -A trust -U postgres -E UTF8 --no-sync >"$dir/primary.initdb.log" 2>&1 \
    || { cat "$dir/primary.initdb.log" >&2; exit 1; }
  cat >>"$dir/primary/postgresql.conf" <<CONF
max_connections = 200
wal_level = replica
max_wal_senders = 4
wal_keep_size = '256MB'
hot_standby = on
CONF
  own "$dir"
  start primary
  cat "$dir/primary.port"
  ;;
standby)
  [ -f "$dir/primary.port" ] || { echo "no primary in $dir" >&2; exit 1; }
  mkdir -p "$dir/standby.sock"
  own "$dir"
  free_port >"$dir/standby.port"
  "${as[@]}" "$bin/pg_basebackup" -h 127.0.0.1 -p "$(cat "$dir/primary.port")" -U postgres \
    -D "$dir/standby" -R -X stream -c fast --no-sync >"$dir/standby.basebackup.log" 2>&1 \
    || { cat "$dir/standby.basebackup.log" >&2; exit 1; }
  # The standby names itself in its connection to the primary, which waits for it by name.
  echo "primary_conninfo = 'host=127.0.0.1 port=$(cat "$dir/primary.port") user=postgres application_name=standby'" \
    >>"$dir/standby/postgresql.auto.conf"
  own "$dir"
  start standby
  psql_on primary "ALTER SYSTEM SET synchronous_standby_names = 'standby'" >/dev/null
  psql_on primary "SELECT pg_reload_conf()" >/dev/null
  for _ in $(seq 1 100); do
    state=$(psql_on primary "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'" || true)
    [ "$state" = sync ] && { cat "$dir/standby.port"; exit 0; }
    sleep 0.2
  done
  echo "the standby did not become synchronous (state: ${state:-none}); see $dir/standby.log" >&2
  exit 1
  ;;
tls)
  t="$dir/tls"
  mkdir -p "$t"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=meterpki test database CA" -keyout "$t/ca.key" -out "$t/ca.pem" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=127.0.0.1" -keyout "$t/server.key" -out "$t/server.csr" 2>/dev/null
  printf 'subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n' >"$t/ext.cnf"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
    -days 2 -extfile "$t/ext.cnf" -out "$t/server.pem" 2>/dev/null
  cp "$t/server.pem" "$dir/primary/server.crt"
  cp "$t/server.key" "$dir/primary/server.key"
  chmod 600 "$dir/primary/server.key"
  chmod 644 "$t/ca.pem"
  own "$dir/primary"
  # TCP clients without TLS are refused: a test that connects at all used TLS.
  hba="$dir/primary/pg_hba.conf"
  { echo "hostnossl all all 127.0.0.1/32 reject"; cat "$hba"; } >"$hba.new" && mv "$hba.new" "$hba"
  cat >>"$dir/primary/postgresql.conf" <<CONF
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
CONF
  own "$dir/primary"
  psql_on primary "SELECT pg_reload_conf()" >/dev/null
  echo "$t/ca.pem"
  ;;
user)
  name=${3:?name}; pass=${4:?password}
  psql_on primary "CREATE ROLE \"$name\" LOGIN SUPERUSER PASSWORD '$pass'" >/dev/null
  hba="$dir/primary/pg_hba.conf"
  { echo "host all $name 127.0.0.1/32 scram-sha-256"; cat "$hba"; } >"$hba.new" && mv "$hba.new" "$hba"
  own "$dir/primary"
  psql_on primary "SELECT pg_reload_conf()" >/dev/null
  ;;
url)
  db=${3:-postgres}
  hosts=""
  for name in primary standby; do
    [ -f "$dir/$name.port" ] && hosts="${hosts:+$hosts,}127.0.0.1:$(cat "$dir/$name.port")"
  done
  echo "postgresql://postgres@$hosts/$db?target_session_attrs=read-write&connect_timeout=5"
  ;;
start)
  start "${3:?name}"
  ;;
stop)
  "${as[@]}" "$bin/pg_ctl" -D "$dir/${3:?name}" -m fast -w stop >/dev/null
  ;;
kill)
  "${as[@]}" "$bin/pg_ctl" -D "$dir/${3:?name}" -m immediate -w stop >/dev/null
  ;;
promote)
  "${as[@]}" "$bin/pg_ctl" -D "$dir/${3:?name}" -w promote >/dev/null
  ;;
destroy)
  for name in primary standby; do
    if [ -f "$dir/$name/postmaster.pid" ]; then
      "${as[@]}" "$bin/pg_ctl" -D "$dir/$name" -m immediate -w stop >/dev/null 2>&1 || true
    fi
  done
  rm -rf "$dir"
  ;;
*)
  sed -n '2,21p' "$0" >&2
  exit 2
  ;;
esac
