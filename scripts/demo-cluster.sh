#!/usr/bin/env bash
# The shared-store demo (`make demo-cluster`): a PostgreSQL primary with a synchronous
# streaming standby (throwaway clusters on this machine), a home moved onto them, two
# `meterpki serve` processes on it, a batch through each, a revocation seen by both, the
# primary killed and the standby promoted, the refused batch retried and answered by the
# promoted database, and one audit chain verified. Everything lands in ./demo-cluster (removed
# and re-created on each run); the clusters are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO=${METERPKI_DEMO_CLUSTER_DIR:-demo-cluster}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

say "Building meterpki (release)"
cargo build --release -q -p meterpki-cli -p meterpki-bench
M="$PWD/target/release/meterpki"
MB="$PWD/target/release/meterpki-bench"

if [ -e "$DEMO" ]; then
  [ -f "$DEMO/.meterpki-demo" ] || { echo "$DEMO exists and is not a meterpki demo folder; refusing to remove it" >&2; exit 1; }
  rm -rf "$DEMO"
fi
mkdir -p "$DEMO" && touch "$DEMO/.meterpki-demo"
DEMO=$(cd "$DEMO" && pwd)
export METERPKI_HOME="$DEMO/home"
# The clusters live under /tmp: when this runs as root they run as the unprivileged postgres
# user, who must reach their folder.
PGDIR=$(mktemp -d /tmp/meterpki-demo-pg.XXXXXX)
chmod 711 "$PGDIR"
PG="$PGDIR/pg"
SERVERS=()
cleanup() {
  for pid in "${SERVERS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/pg-cluster.sh destroy "$PG" >/dev/null 2>&1 || true
  rm -rf "$PGDIR"
}
trap cleanup EXIT

say "A home: init, the root ceremony (2 of 3), the Device and Access CAs"
"$M" init >/dev/null
CRL_PORT_1=$(free_port)
sed -i -e "s#^base_url = \"http://127.0.0.1:8080/crl\"#base_url = \"http://127.0.0.1:$CRL_PORT_1/crl\"#" "$METERPKI_HOME/meterpki.toml"
"$M" ceremony root --officers 3 --quorum 2 --shares-dir "$DEMO/shares" --officer alice --officer bob --officer carol >/dev/null
for kind in device access; do
  "$M" ceremony issuing-ca --kind "$kind" --share "$DEMO/shares/alice.share" --share "$DEMO/shares/bob.share" >/dev/null
done
"$M" account add --role factory --name line-7 --device-range 00-DB-12-00-00-00-00-00/24 --out "$DEMO/creds" >/dev/null
"$MB" make-batch --count 100 --out "$DEMO/line-1.ndjson" >/dev/null
"$M" issue --batch "$DEMO/line-1.ndjson" --out "$DEMO/line-1.results.ndjson" >/dev/null
echo "home ready: $METERPKI_HOME"

say "PostgreSQL: a primary and a synchronous streaming standby"
scripts/pg-cluster.sh primary "$PG" >/dev/null
scripts/pg-cluster.sh standby "$PG" >/dev/null
PRIMARY_PORT=$(cat "$PG/primary.port")
runuser_psql() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- psql "$@"; else psql "$@"; fi
}
runuser_psql -X -q -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -c "CREATE DATABASE meterpki"
scripts/pg-cluster.sh url "$PG" meterpki > "$DEMO/db.url"
chmod 600 "$DEMO/db.url"
echo "URL: $(cat "$DEMO/db.url")"
runuser_psql -X -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -c "SELECT application_name, state, sync_state FROM pg_stat_replication"

say "meterpki store migrate --to postgres: the embedded store (and its audit chain) into the database"
"$M" store migrate --to postgres --url-file "$DEMO/db.url"
"$M" store check

say "Two servers on the one database"
start_server() { # N CRL_PORT (its URL in $URL)
  "$M" serve --listen 127.0.0.1:0 --crl-listen "127.0.0.1:$2" > "$DEMO/serve-$1.out" 2> "$DEMO/serve-$1.log" &
  SERVERS+=($!)
  for _ in $(seq 1 200); do grep -q listening "$DEMO/serve-$1.out" 2>/dev/null && break; sleep 0.1; done
  URL=$(sed -n 's/^listening on //p' "$DEMO/serve-$1.out")
  [ -n "$URL" ] || { echo "server $1 did not start:" >&2; cat "$DEMO/serve-$1.log" >&2; exit 1; }
}
start_server 1 "$CRL_PORT_1"; URL_1=$URL
start_server 2 "$(free_port)"; URL_2=$URL
echo "server 1: $URL_1   server 2: $URL_2"
batch() { # REQUEST_ID FIRST_DEVICE_BYTE -> batch file
  "$MB" make-batch --count 20 --out "$DEMO/$1.ndjson" >/dev/null
  python3 - "$DEMO" "$1" "$2" <<'PY'
import json, sys
d, rid, b = sys.argv[1], sys.argv[2], int(sys.argv[3])
items = [json.loads(l) for l in open(f"{d}/{rid}.ndjson")]
for i, it in enumerate(items):
    it["device_id"] = f"00-DB-12-00-00-{b:02X}-00-{i:02X}"
json.dump({"request_id": rid, "items": items}, open(f"{d}/{rid}.json", "w"))
PY
}
send() { # URL REQUEST_ID -> prints the HTTP status and a summary
  curl -sS -o "$DEMO/$2.out" -w '%{http_code}' --cert "$DEMO/creds/line-7.pem" --key "$DEMO/creds/line-7.key" \
    --cacert "$DEMO/creds/ca.pem" -H 'content-type: application/json' -d @"$DEMO/$2.json" "$1/v1/batches" || true
}
summary() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r.get("results") and "%d issued" % sum(x["status"]=="issued" for x in r["results"]) or r)' "$1"; }
batch batch-a 1; batch batch-b 2; batch batch-c 3
echo "batch A to server 1: HTTP $(send "$URL_1" batch-a), $(summary "$DEMO/batch-a.out")"
echo "batch B to server 2: HTTP $(send "$URL_2" batch-b), $(summary "$DEMO/batch-b.out")"
echo "batch A again, to server 2 (idempotent across servers): HTTP $(send "$URL_2" batch-a), $(summary "$DEMO/batch-a.out") (the same certificates)"

say "A revocation from the shell, published once, served by both servers"
SERIAL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["serial"])' "$DEMO/batch-b.out")
"$M" revoke --serial "$SERIAL" --reason keyCompromise
sleep 1.1
CRL_PORT_2=$(sed -n 's#^serving CRLs on http://127.0.0.1:\([0-9]*\)/crl/#\1#p' "$DEMO/serve-2.out")
for port in "$CRL_PORT_1" "$CRL_PORT_2"; do
  curl -sSf -o "$DEMO/full-$port.crl" "http://127.0.0.1:$port/crl/device/full.crl"
  if openssl crl -inform DER -in "$DEMO/full-$port.crl" -noout -text | grep -qi "$SERIAL"; then
    echo "the CRL served on port $port lists $SERIAL"
  else
    echo "UNEXPECTED: the CRL served on port $port does not list $SERIAL" >&2; exit 1
  fi
done

say "The primary dies; batch C is refused (503, retry safe); the standby is promoted; the retry is answered"
scripts/pg-cluster.sh kill "$PG" primary
echo "batch C to server 1: HTTP $(send "$URL_1" batch-c): $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["type"])' "$DEMO/batch-c.out")"
echo "readyz of server 2: $(curl -sS --cacert "$DEMO/creds/ca.pem" "$URL_2/readyz")"
scripts/pg-cluster.sh promote "$PG" standby
for _ in $(seq 1 60); do
  code=$(send "$URL_1" batch-c)
  [ "$code" = 200 ] && break
  sleep 0.5
done
echo "batch C retried to server 1: HTTP $code, $(summary "$DEMO/batch-c.out")"
# /readyz answers from its last probe for up to server.ready_probe_interval_ms (5 s).
for i in $(seq 1 40); do
  ready=$(curl -sS --cacert "$DEMO/creds/ca.pem" "$URL_2/readyz")
  [ "$ready" = ready ] && break
  sleep 0.25
done
echo "readyz of server 2: $ready (after $((i / 4)).$(( (i % 4) * 25 )) s)"

say "Nothing answered was lost: the promoted database holds every certificate, one audit chain"
for pid in "${SERVERS[@]}"; do kill -TERM "$pid"; wait "$pid" || true; done
SERVERS=()
"$M" store check
"$M" audit verify
"$M" audit list | grep -E "api\.start|store\.migrate|api\.batch" | tail -n 8

say "Done. Home: $METERPKI_HOME (its database was a throwaway cluster in $PGDIR, now removed)"
