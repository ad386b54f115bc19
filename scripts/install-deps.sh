#!/usr/bin/env bash
# Installs what meterpki needs and is missing: from Debian's packages SoftHSM2 (the PKCS#11 token
# for tests and the demo), OpenSC (pkcs11-tool, an independent look at the token), openssl (an
# independent verifier of everything we sign) and PostgreSQL (the shared store's tests); from PyPI, into .tools/venv, pkilint (an
# independent RFC 5280 linter the tests run on every certificate kind) and PyKCS11 (an independent
# PKCS#11 client for the key-backup tests).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ -z "$(ls /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so 2>/dev/null)" ] \
   && [[ " ${need[*]-} " != *" softhsm2 "* ]]; then
  need+=(softhsm2)
fi
command -v python3 >/dev/null 2>&1 || need+=(python3)
# PostgreSQL's server, for the shared store's tests (scripts/test-postgres.sh runs a throwaway
# cluster of it; nothing is started here).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need+=(python3-venv)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -x .tools/venv/bin/lint_pkix_cert ]; then
  echo "installing pkilint into .tools/venv" >&2
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check pkilint
fi
# PyKCS11: an independent PKCS#11 client the tests use to read key attributes meterpki sets
# (CKA_WRAP_WITH_TRUSTED, which pkcs11-tool does not show) and try what a token must refuse.
if ! .tools/venv/bin/python -c 'import PyKCS11' >/dev/null 2>&1; then
  echo "installing PyKCS11 into .tools/venv" >&2
  .tools/venv/bin/pip install --quiet --disable-pip-version-check PyKCS11
fi
# pyasn1-modules: an independent ASN.1 decoder with RFC 5934's and RFC 5652's modules, which the
# tests use to decode the TAMP messages meterpki signs strictly (DER), besides meterpki's own.
if ! .tools/venv/bin/python -c 'import pyasn1_modules.rfc5934' >/dev/null 2>&1; then
  echo "installing pyasn1-modules into .tools/venv" >&2
  .tools/venv/bin/pip install --quiet --disable-pip-version-check pyasn1-modules
fi
