#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 30) on its committed corpus.
# Fails when a target finds a crash (the input is left in fuzz/artifacts/<target>/).
# Only stable Rust is needed: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags to it.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install --locked cargo-fuzz" >&2; exit 1; }

targets=$(cargo fuzz list)
# No sanitizer: the code under test is safe Rust (`#![deny(unsafe_code)]`), and ASan
# would halve the executions. Debug assertions and overflow checks stay on.
cargo fuzz build -s none
failed=()
for target in $targets; do
  mkdir -p "corpus/$target"
  echo "== fuzz $target for ${seconds}s"
  # The committed corpus is read from a scratch copy, so a run never dirties the tree.
  scratch=$(mktemp -d)
  cp -r "corpus/$target/." "$scratch/"
  log="$scratch.log"
  dict=()
  [ -f "$target.dict" ] && dict=(-dict="$target.dict")
  status=0
  cargo fuzz run -s none "$target" "$scratch" -- "${dict[@]}" -max_total_time="$seconds" -timeout=25 \
    -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|Failing input|artifact_prefix|Test unit written)|panicked at' "$log" || true
  [ "$status" = 0 ] || tail -n 40 "$log" >&2
  rm -f "$log"
  rm -rf "$scratch"
  if [ "$status" != 0 ]; then
    echo "!! $target failed (exit $status); see fuzz/artifacts/$target/" >&2
    failed+=("$target")
  fi
done
if [ "${#failed[@]}" != 0 ]; then
  echo "fuzz targets with findings: ${failed[*]}" >&2
  exit 1
fi
echo "all fuzz targets ran ${seconds}s without a finding"
