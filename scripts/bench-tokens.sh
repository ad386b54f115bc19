#!/usr/bin/env bash
# Issuance throughput against 1, 2 and 4 HSMs of a given capacity (docs/benchmarks.md#several-hsms).
#
# For each N: a fresh home made with --key-backup quorum, its online keys replicated to N-1 more
# tokens by the real ceremonies (backup-key, hsm init-token, replicate), then every token put
# behind the fault injector limited to RATE signatures a second (a stand-in for a network HSM),
# and `meterpki-bench api` run on it: the tokens' raw rates measured one by one, then COUNT
# certificates through the mTLS API, the rate reported against the tokens' combined rate.
#
# usage: scripts/bench-tokens.sh [COUNT] [RATE|none] [TOKENS...]     (defaults: 30000 1500 1 2 4)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-30000}
rate=${2:-1500}
shift 2 2>/dev/null || shift $#
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1 2 4)

cargo build --release -q -p meterpki-cli -p meterpki-bench -p meterpki-pkcs11-faults
bin=$PWD/target/release
shim=$bin/libmeterpki_pkcs11_faults.so
work=$(mktemp -d /tmp/meterpki-bench-tokens.XXXXXX)
[ -n "${KEEP:-}" ] && echo "work dir: $work (kept)" >&2 || trap 'rm -rf "$work"' EXIT
softhsm=$(ls /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so 2>/dev/null | head -1)
# RATE "none": no limit (SoftHSM's own speed through the injector): the CPU ceiling.
if [ "$rate" = none ]; then : > "$work/faults"; else echo "sign=rate:$rate" > "$work/faults"; fi
"$bin/meterpki-bench" make-batch --count "$count" --out "$work/requests.ndjson" >/dev/null

for n in "${sizes[@]}"; do
  home=$work/home-$n
  m() { "$bin/meterpki" --home "$home" "$@"; }
  m init --key-backup quorum --sessions "${SESSIONS:-4}" >/dev/null
  m ceremony root --officers 3 --quorum 2 --shares-dir "$work/root-$n" >/dev/null
  m ceremony issuing-ca --kind device --share "$work/root-$n/officer-1.share" \
    --share "$work/root-$n/officer-2.share" >/dev/null
  m ceremony issuing-ca --kind access --share "$work/root-$n/officer-1.share" \
    --share "$work/root-$n/officer-2.share" >/dev/null
  # The API server's key is made at its first start: one start before replication.
  "$bin/meterpki" --home "$home" serve --listen 127.0.0.1:0 --crl-listen 127.0.0.1:0 \
    >"$work/serve-$n.out" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q listening "$work/serve-$n.out" && break; sleep 0.1; done
  grep -q listening "$work/serve-$n.out" || { cat "$work/serve-$n.out"; exit 1; }
  kill -TERM $pid; wait $pid || true
  m ceremony backup-key --officers 3 --quorum 2 --shares-dir "$work/kb-$n" >/dev/null
  for i in $(seq 2 "$n"); do
    m hsm init-token --label "online-$i" >/dev/null
    m ceremony replicate --to-token "online-$i" --share "$work/kb-$n/officer-1.share" \
      --share "$work/kb-$n/officer-2.share" >/dev/null
  done
  sed -i "s#$softhsm#$shim#" "$home/meterpki.toml"
  echo "== $n token(s), each limited to $rate signatures/s =="
  METERPKI_FAULTS_FILE=$work/faults METERPKI_FAULTS_MODULE=$softhsm \
    "$bin/meterpki-bench" --home "$home" api --requests "$work/requests.ndjson" \
    --batch "${BATCH:-1000}" --in-flight "${IN_FLIGHT:-4}" --raw-seconds 3
done
