#!/usr/bin/env bash
# Fuzzes each libFuzzer harness of tests/fuzz for longer than test.sh does: ./scripts/fuzz.sh
# [seconds per harness, default 300]. Builds build/fuzz first, runs the harnesses one after the
# other (each single-threaded but for fqt's OpenMP loops), prints the executions, coverage and
# corpus growth of each, and fails if any harness found something. New inputs go to
# build/fuzz/tests/fuzz/scratch/<harness>/ (pass them on to tests/fuzz/corpus/ by hand, after
# `-merge=1`, if they add coverage), findings to build/fuzz/tests/fuzz/findings/<harness>/.
# Installs missing Debian packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
source scripts/fuzz_config.sh
fqt_ensure_packages "${fqt_packages_build[@]}" clang libclang-rt-14-dev libomp-14-dev \
  libfuzzer-14-dev

seconds=${1:-300}
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [seconds per harness, a positive integer; default 300]" >&2
  exit 2
fi
fqt_configure_fuzzers "$seconds"
cmake --build build/fuzz -j "$(nproc)"

dir=build/fuzz/tests/fuzz
export OMP_WAIT_POLICY=passive TMPDIR="$PWD/$dir/tmp"
mkdir -p "$TMPDIR"
failed=()
summary=()
for harness in "$dir"/fuzz_*; do
  [ -x "$harness" ] || continue
  name=${harness##*/fuzz_}
  mkdir -p "$dir/scratch/$name" "$dir/findings/$name"
  log="$dir/findings/$name.log"
  echo "== $name: fuzzing for $seconds s (log: $log)"
  status=0
  "$harness" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$dir/findings/$name/" "$dir/scratch/$name" "tests/fuzz/corpus/$name" \
    >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1)
  line=$(printf '%-11s %10s executions %6s/s  %s' "$name" "${runs:-?}" "${rate:-?}" "${cov:-}")
  if [ "$status" -ne 0 ]; then
    line="$line  FINDING (exit $status): $(ls "$dir/findings/$name" | tail -1)"
    failed+=("$name")
    grep -E -A2 'fqt fuzz finding|ERROR: (AddressSanitizer|libFuzzer|LeakSanitizer)|runtime error' \
      "$log" | head -6 || true
  fi
  summary+=("$line")
  echo "$line"
done

echo
echo "== summary ($seconds s per harness)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "findings in: ${failed[*]} (inputs under $dir/findings/)" >&2
  exit 1
fi
