#!/usr/bin/env bash
# Runs Atrium's fuzz targets (fuzz/fuzz_targets/) with cargo-fuzz on the nightly toolchain.
#
#   scripts/fuzz.sh [--seconds N] [--runs N] [--jobs J] [TARGET...]
#
# Each target runs for N seconds (default 60 when neither is given) or N executions, whichever
# comes first, J targets at a time (default 2), from the committed seeds in fuzz/corpus/<target> plus what earlier runs here found
# (target/fuzz/corpus/<target>). Prints one line per target (executions, speed, coverage) and,
# last, one JSON object; exits 1 if any target crashed, naming the input that did it
# (target/fuzz/artifacts/<target>/) and the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=""
runs=""
jobs=2
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    -*) echo "unknown argument: $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

ATRIUM_CACHE="${ATRIUM_CACHE:-$HOME/.cache/atrium}"
CARGO_FUZZ_VERSION=0.13.2
tools="$ATRIUM_CACHE/tools/cargo-fuzz-$CARGO_FUZZ_VERSION"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into $tools"
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$tools"
fi
export PATH="$tools/bin:$PATH"
export CARGO_TARGET_DIR="$PWD/target/fuzz"
work="$CARGO_TARGET_DIR"

# Release code with debug assertions: overflow checks and `debug_assert!`s catch more.
build_flags=(-O --debug-assertions)
# The instrumented dependencies of an earlier run with the same toolchain, lock files and flags
# are taken from ~/.cache/atrium/build (scripts/lib/buildcache.sh).
. scripts/lib/buildcache.sh
fuzz_key=$(build_cache_key fuzz-deps nightly "cargo-fuzz $CARGO_FUZZ_VERSION ${build_flags[*]}")
build_dirs=(release x86_64-unknown-linux-gnu/release)
build_cache_restore "$CARGO_TARGET_DIR" "$fuzz_key" "${build_dirs[@]}"

cd fuzz
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
if ! out=$(cargo +nightly fuzz build "${build_flags[@]}" 2>&1); then
  echo "$out" >&2
  echo "fuzz: the build failed" >&2
  exit 1
fi
build_cache_save "$CARGO_TARGET_DIR" "$fuzz_key" "${build_dirs[@]}" ||
  echo "fuzz: the instrumented dependencies were not kept; the next run compiles them again" >&2

[ -n "$seconds$runs" ] || seconds=60
limit=()
[ -n "$seconds" ] && limit+=(-max_total_time="$seconds")
[ -n "$runs" ] && limit+=(-runs="$runs")
mkdir -p "$work/logs"

run_one() {
  local t="$1"
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  # The binary cargo-fuzz built (so that nothing is rebuilt while targets run). The first
  # corpus folder is where new inputs go; the committed seeds are only read.
  "$work/x86_64-unknown-linux-gnu/release/$t" "$work/corpus/$t" "corpus/$t" \
    "${limit[@]}" -max_len=65536 -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/$t/" >"$work/logs/$t.log" 2>&1
}

pids=()
names=()
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  run_one "$t" &
  pids+=($!)
  names+=("$t")
done

failed=()
json="{"
for i in "${!pids[@]}"; do
  t="${names[$i]}"
  status=ok
  wait "${pids[$i]}" || status=crashed
  log="$work/logs/$t.log"
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1 || true; }
  execs=$(stat number_of_executed_units)
  speed=$(stat average_exec_per_sec)
  # The last status line libFuzzer printed: "#N ... cov: C ft: F corp: K/..."
  # (A target that crashed on a seed printed none of these: they stay empty.)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  corp=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  printf 'fuzz: %-15s %-7s %12s execs %8s/s  cov %6s  ft %6s  corpus %5s\n' \
    "$t" "$status" "${execs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}"
  if [ "$status" != ok ]; then
    failed+=("$t")
    { grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" || true; } | head -8 | sed 's/^/      /'
    echo "      replay: (cd fuzz && cargo +nightly fuzz run ${build_flags[*]} $t <that file>)"
    echo "      log: $log"
  fi
  [ "$json" = "{" ] || json+=","
  json+="\"$t\":{\"status\":\"$status\",\"execs\":${execs:-0},\"execs_per_sec\":${speed:-0},\"cov\":${cov:-0},\"ft\":${ft:-0},\"corpus\":${corp:-0}}"
done
echo "$json}"
[ ${#failed[@]} -eq 0 ]
