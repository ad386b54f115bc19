#!/usr/bin/env bash
# Runs every cargo-fuzz target for FUZZ_SECONDS seconds each (default 60), starting from the
# seeds in fuzz/seeds/<target> and any regression inputs in fuzz/regressions/<target>.
# Installs what is missing: the nightly toolchain (cargo fuzz needs it) and cargo-fuzz.
# A crash stops the run; its input is in fuzz/artifacts/<target>/: fix the bug, then copy the
# input to fuzz/regressions/<target>/ so that `make test` (tests/tests/fuzz_regressions.rs)
# replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-"request ndjson profile share tamp"}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for t in $TARGETS; do
  mkdir -p "corpus/$t"
  cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  [ -d "regressions/$t" ] && cp -n regressions/"$t"/* "corpus/$t/" 2>/dev/null || true
  echo "== $t: $SECONDS_EACH s"
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$SECONDS_EACH" -max_len=65536 -print_final_stats=1 2>&1 \
    | grep -E 'stat::number_of_executed_units|stat::peak_rss_mb|ERROR|SUMMARY|Done' || true
done
