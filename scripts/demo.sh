#!/usr/bin/env bash
# The meterpki demo: a fresh home on SoftHSM (keys backed up under a quorum), the root ceremony with a 3-of-5 quorum, the three
# issuing CAs (each opened by a different quorum of officers), and independent checks with
# openssl and pkcs11-tool. Everything lands in ./demo (removed and re-created on each run).
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO=${METERPKI_DEMO_DIR:-demo}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Building meterpki (release)"
cargo build --release -q -p meterpki-cli -p meterpki-bench
M="$PWD/target/release/meterpki"
MB="$PWD/target/release/meterpki-bench"   # test input: a factory line's request file

if [ -e "$DEMO" ]; then
  [ -f "$DEMO/.meterpki-demo" ] || { echo "$DEMO exists and is not a meterpki demo folder; refusing to remove it" >&2; exit 1; }
  rm -rf "$DEMO"
fi
mkdir -p "$DEMO" && touch "$DEMO/.meterpki-demo"
export METERPKI_HOME="$DEMO/home"

say "meterpki init  (home, config, SoftHSM token directory inside the home, online token; keys backed up under a quorum)"
"$M" init --key-backup quorum
# Certificates name the URL of their CRL for their whole life, so it is chosen before the root
# ceremony: here the server's plain-HTTP CRL listener on a free port of this machine.
CRL_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -i -e "s#^base_url = \"http://127.0.0.1:8080/crl\"#base_url = \"http://127.0.0.1:$CRL_PORT/crl\"#" \
       -e "s#^crl_listen = \"127.0.0.1:8080\"#crl_listen = \"127.0.0.1:$CRL_PORT\"#" "$METERPKI_HOME/meterpki.toml"
grep -E '^(base_url|crl_listen)' "$METERPKI_HOME/meterpki.toml"

say "meterpki ceremony root  (5 officers, any 3 open the root token)"
"$M" ceremony root --officers 5 --quorum 3 --shares-dir "$DEMO/shares" \
  --officer alice --officer bob --officer carol --officer dave --officer erin

say "meterpki ceremony issuing-ca  (three quorums of three officers)"
"$M" ceremony issuing-ca --kind device       --share "$DEMO/shares/alice.share" --share "$DEMO/shares/bob.share"   --share "$DEMO/shares/carol.share"
"$M" ceremony issuing-ca --kind organisation --share "$DEMO/shares/erin.share"  --share "$DEMO/shares/carol.share" --share "$DEMO/shares/alice.share"
"$M" ceremony issuing-ca --kind access       --share "$DEMO/shares/dave.share"  --share "$DEMO/shares/erin.share"  --share "$DEMO/shares/bob.share"

say "Two shares are not a quorum (refused, exit 2, nothing changed)"
if "$M" ceremony issuing-ca --kind device --share "$DEMO/shares/alice.share" --share "$DEMO/shares/bob.share"; then
  echo "UNEXPECTED: two shares were accepted" >&2; exit 1
fi

say "openssl verify: every issuing CA chains to the root"
for kind in device organisation access; do
  openssl verify -x509_strict -CAfile "$METERPKI_HOME/ca/root.pem" "$METERPKI_HOME/ca/$kind.pem"
done

say "pkcs11-tool: the private keys on the online token (sensitive; extractable only wrapped under the quorum's trusted key)"
METERPKI_DEMO_PIN=$(head -n1 "$METERPKI_HOME/secrets/online.pin") \
SOFTHSM2_CONF="$METERPKI_HOME/softhsm/softhsm2.conf" \
  pkcs11-tool --module "$(grep '^module' "$METERPKI_HOME/meterpki.toml" | cut -d'"' -f2)" \
    --token-label meterpki-online --login --pin env:METERPKI_DEMO_PIN --list-objects --type privkey

say "meterpki issue: a meter certificate from a CSR made by openssl"
openssl ecparam -name prime256v1 -genkey -noout -out "$DEMO/meter.key"
openssl req -new -key "$DEMO/meter.key" -subj "/" -out "$DEMO/meter.csr"
"$M" issue --profile meter-signing --device-id 00-DB-12-34-56-78-90-01 --csr "$DEMO/meter.csr" --out "$DEMO/meter.pem"
openssl verify -x509_strict -CAfile "$METERPKI_HOME/ca/root.pem" -untrusted "$METERPKI_HOME/ca/device.pem" "$DEMO/meter.pem"
echo "size: $(openssl x509 -in "$DEMO/meter.pem" -outform DER | wc -c) bytes DER"
openssl x509 -in "$DEMO/meter.pem" -noout -text | sed -n '/X509v3 extensions/,/Signature Algorithm/p'
echo "The same request again returns the same certificate:"
"$M" issue --profile meter-signing --device-id 00DB123456789001 --csr "$DEMO/meter.csr" --json | grep -E '"(serial|existing)"'
if [ -x .tools/venv/bin/lint_pkix_cert ]; then
  echo "pkilint (RFC 5280): $(.tools/venv/bin/lint_pkix_cert lint -s WARNING "$DEMO/meter.pem" | grep -c . || true) finding(s)"
fi

say "meterpki issue --batch: 2,000 meter requests (a factory line's file)"
"$MB" make-batch --count 2000 --out "$DEMO/line-1.ndjson"
"$M" issue --batch "$DEMO/line-1.ndjson" --out "$DEMO/line-1.results.ndjson"
echo "Run again: nothing new is issued"
"$M" issue --batch "$DEMO/line-1.ndjson" --out "$DEMO/line-1.again.ndjson"

say "meterpki revoke: the meter's key is compromised (its CRL shard and the full CRL published at once)"
SERIAL=$("$M" show --device-id 00-DB-12-34-56-78-90-01 --json | sed -n 's/.*"serial": "\([0-9a-f]*\)".*/\1/p' | head -n1)
"$M" revoke --serial "$SERIAL" --reason keyCompromise
cat "$METERPKI_HOME/ca/root.pem" "$METERPKI_HOME/ca/device.pem" > "$DEMO/device-chain.pem"
SHARD=$("$M" show --serial "$SERIAL" --json | sed -n 's/.*"shard": \([0-9]*\).*/\1/p')
for scope in "$SHARD" full; do
  openssl crl -in "$METERPKI_HOME/crl/device/$scope.crl" -inform DER -out "$DEMO/device-$scope.crl.pem"
  echo "CRL $scope: $(openssl crl -in "$DEMO/device-$scope.crl.pem" -CAfile "$DEMO/device-chain.pem" -noout 2>&1)"
  echo "openssl verify -crl_check with the $scope CRL (the revoked meter must fail):"
  if openssl verify -crl_check -CAfile "$DEMO/device-chain.pem" -CRLfile "$DEMO/device-$scope.crl.pem" "$DEMO/meter.pem"; then
    echo "UNEXPECTED: the revoked certificate verified" >&2; exit 1
  fi
done
openssl crl -in "$DEMO/device-$SHARD.crl.pem" -noout -text | sed -n '1,/Signature Algorithm: ecdsa/p' | head -25

say "The issuance API over mutual TLS: a factory account, meterpki serve, curl"
"$M" account add --role factory --name line-7 --device-range 00-DB-12-00-00-00-00-00/24 --out "$DEMO/creds"
"$MB" make-batch --count 3 --out "$DEMO/api-items.ndjson"
python3 - "$DEMO" <<'PY'
import json, sys
d = sys.argv[1]
items = [json.loads(l) for l in open(f"{d}/api-items.ndjson")]
for i, it in enumerate(items):
    it["device_id"] = f"00-DB-12-00-00-00-10-{i:02X}"
json.dump({"request_id": "line-7-000001", "items": items}, open(f"{d}/batch.json", "w"))
PY
"$M" serve --listen 127.0.0.1:0 > "$DEMO/serve.out" 2> "$DEMO/serve.log" &
SERVER=$!
for _ in $(seq 1 100); do grep -q listening "$DEMO/serve.out" 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/^listening on //p' "$DEMO/serve.out")
echo "server at $URL"
curl -sS --cert "$DEMO/creds/line-7.pem" --key "$DEMO/creds/line-7.key" --cacert "$DEMO/creds/ca.pem" \
     -H 'content-type: application/json' -d @"$DEMO/batch.json" "$URL/v1/batches" \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); print([(x["index"], x["status"], x.get("serial")) for x in r["results"]])'
echo "without a client certificate:"
curl -sS --cacert "$DEMO/creds/ca.pem" -X POST "$URL/v1/batches"; echo

say "A strict relying party: openssl fetches every CRL (the root's ARL too) from the URLs in the certificates"
sed -n 's/^serving CRLs on //p' "$DEMO/serve.out"
python3 - "$DEMO" <<'PY'
import base64, json, sys
d = sys.argv[1]
r = json.loads(open(f"{d}/line-1.results.ndjson").readline())
b = base64.b64encode(base64.b64decode(r["certificate"])).decode()
open(f"{d}/good-meter.pem", "w").write("-----BEGIN CERTIFICATE-----\n" + "\n".join(b[i:i+64] for i in range(0, len(b), 64)) + "\n-----END CERTIFICATE-----\n")
PY
CHECK=(openssl verify -crl_check_all -crl_download -CAfile "$METERPKI_HOME/ca/root.pem")
echo "a meter of the factory batch, with the meter policy enforced (-policy_check -explicit_policy):"
"${CHECK[@]}" -policy_check -explicit_policy -policy 1.3.6.1.4.1.32473.1.1 -untrusted "$METERPKI_HOME/ca/device.pem" "$DEMO/good-meter.pem"
echo "the factory line's API client certificate:"
"${CHECK[@]}" -untrusted "$METERPKI_HOME/ca/access.pem" "$DEMO/creds/line-7.pem"
echo "the meter revoked above (must fail):"
if "${CHECK[@]}" -untrusted "$METERPKI_HOME/ca/device.pem" "$DEMO/meter.pem"; then
  echo "UNEXPECTED: the revoked meter verified" >&2; exit 1
fi
echo "revoking the good meter while the server runs (the CLI hands it to the server, which publishes at once):"
"$M" revoke --serial "$(openssl x509 -in "$DEMO/good-meter.pem" -noout -serial | cut -d= -f2)" --reason keyCompromise
if "${CHECK[@]}" -untrusted "$METERPKI_HOME/ca/device.pem" "$DEMO/good-meter.pem"; then
  echo "UNEXPECTED: the meter revoked a moment ago verified" >&2; exit 1
fi
echo "CRL headers for caches:"
curl -sS -D - -o /dev/null "http://127.0.0.1:$CRL_PORT/crl/root/arl.crl" | grep -iE '^(content-type|etag|cache-control|expires)'
kill -TERM "$SERVER"; wait "$SERVER" || true

say "Suppliers and churn: registry, keys, meters, a change of supplier and a takeover"
A=90-B3-D5-1F-30-00-00-0A; B=90-B3-D5-1F-30-00-00-0B
"$M" supplier register --id "$A" --name "Alpha Energy"
"$M" supplier register --id "$B" --name "Beta Power"
for who in a b; do
  for use in signing key-agreement; do
    openssl ecparam -name prime256v1 -genkey -noout -out "$DEMO/$who-$use.key"
    openssl req -new -key "$DEMO/$who-$use.key" -subj "/" -out "$DEMO/$who-$use.csr"
  done
done
for use in signing key-agreement; do
  "$M" supplier enrol --id "$A" --profile "supplier-$use" --csr "$DEMO/a-$use.csr" --out "$DEMO/a-$use.pem"
  "$M" supplier enrol --id "$B" --profile "supplier-$use" --csr "$DEMO/b-$use.csr" --out "$DEMO/b-$use.pem"
done
echo "Every meter of the factory batch goes to Alpha Energy (a CSV file):"
python3 - "$DEMO" "$A" <<'PY'
import json, sys
d, a = sys.argv[1], sys.argv[2]
with open(f"{d}/assign.csv", "w") as f:
    f.write("device_id,supplier\n")
    for l in open(f"{d}/line-1.ndjson"):
        f.write(f'{json.loads(l)["device_id"]},{a}\n')
PY
"$M" meter assign --file "$DEMO/assign.csv"
D=$(sed -n 2p "$DEMO/assign.csv" | cut -d, -f1)
echo "A change of supplier for $D, with its trust-anchor update:"
"$M" meter change-supplier --device-id "$D" --to "$B" --updates-out "$DEMO/updates-change"
openssl cms -verify -inform DER -in "$DEMO/updates-change/$D.tamp.der" -CAfile "$METERPKI_HOME/ca/root.pem" \
  -purpose any -binary -out "$DEMO/update-content.der"
openssl asn1parse -inform DER -in "$DEMO/update-content.der" | head -12
"$M" update verify "$DEMO/updates-change/$D.tamp.der" --root "$METERPKI_HOME/ca/root.pem" --device-id "$D"
echo "An update altered by one byte is refused:"
python3 -c 'import sys; b=bytearray(open(sys.argv[1],"rb").read()); b[len(b)//2]^=1; open(sys.argv[2],"wb").write(b)' \
  "$DEMO/updates-change/$D.tamp.der" "$DEMO/altered.der"
if "$M" update verify "$DEMO/altered.der" --root "$METERPKI_HOME/ca/root.pem"; then
  echo "UNEXPECTED: an altered update verified" >&2; exit 1
fi
echo "Beta Power takes over Alpha Energy: A's certificates revoked, CRLs republished, every meter moved:"
"$M" supplier takeover --from "$A" --to "$B" --updates-out "$DEMO/updates-takeover"
echo "$(ls "$DEMO/updates-takeover" | wc -l) update files; one checked by openssl:"
openssl cms -verify -inform DER -in "$DEMO/updates-takeover/$(ls "$DEMO/updates-takeover" | head -n1)" \
  -CAfile "$METERPKI_HOME/ca/root.pem" -purpose any -binary -out /dev/null
cat "$METERPKI_HOME/ca/root.pem" "$METERPKI_HOME/ca/organisation.pem" > "$DEMO/org-chain.pem"
for f in "$METERPKI_HOME"/crl/organisation/*.crl; do openssl crl -inform DER -in "$f"; done > "$DEMO/org-crls.pem"
echo "Alpha Energy's signing certificate against the republished CRLs (must fail):"
if openssl verify -crl_check -CAfile "$DEMO/org-chain.pem" -CRLfile "$DEMO/org-crls.pem" "$DEMO/a-signing.pem"; then
  echo "UNEXPECTED: a certificate of the acquired supplier verified" >&2; exit 1
fi
"$M" supplier list

say "Key backup under a quorum: the key-backup key (3 of 5), a second token, the keys replicated and backed up"
"$M" ceremony backup-key --officers 5 --quorum 3 --shares-dir "$DEMO/kb-shares" \
  --officer alice --officer bob --officer carol --officer dave --officer erin
"$M" hsm init-token --label meterpki-online-b
if "$M" ceremony replicate --to-token meterpki-online-b --share "$DEMO/kb-shares/alice.share" --share "$DEMO/kb-shares/bob.share"; then
  echo "UNEXPECTED: two shares replicated the keys" >&2; exit 1
fi
"$M" ceremony replicate --to-token meterpki-online-b \
  --share "$DEMO/kb-shares/alice.share" --share "$DEMO/kb-shares/bob.share" --share "$DEMO/kb-shares/carol.share"
"$M" ceremony backup --out "$DEMO/keys.backup" \
  --share "$DEMO/kb-shares/dave.share" --share "$DEMO/kb-shares/erin.share" --share "$DEMO/kb-shares/alice.share"
echo "PyKCS11 (independent of meterpki): every key on the new token is sensitive, and the token refuses to wrap it under an untrusted key"
SOFTHSM2_CONF="$METERPKI_HOME/softhsm/softhsm2.conf" .tools/venv/bin/python scripts/pkcs11-key-audit.py \
  "$(grep '^module' "$METERPKI_HOME/meterpki.toml" | cut -d'"' -f2)" meterpki-online-b "$METERPKI_HOME/secrets/meterpki-online-b.pin"
echo "a meter certificate signed with both tokens in the rotation:"
openssl ecparam -name prime256v1 -genkey -noout -out "$DEMO/m2.key"
openssl req -new -key "$DEMO/m2.key" -subj "/CN=ignored" -out "$DEMO/m2.csr"
"$M" issue --profile meter-signing --device-id 00-DB-12-00-00-00-20-01 --csr "$DEMO/m2.csr" --out "$DEMO/m2.pem"
openssl verify -CAfile "$METERPKI_HOME/ca/root.pem" -untrusted "$METERPKI_HOME/ca/device.pem" "$DEMO/m2.pem"

say "meterpki status"
"$M" status

say "meterpki audit verify"
"$M" audit verify

say "Done. Home: $METERPKI_HOME   Shares: $DEMO/shares"
