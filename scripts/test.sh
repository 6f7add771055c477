#!/usr/bin/env bash
# Atrium's one test command: installs what the tests need, builds, and runs every test.
#
#   scripts/test.sh [--skip GROUP[,GROUP...]] [-- NEXTEST ARGS...]
#
# Groups that need something from the machine: ldap, postgres, qemu, kvm, browser, containers;
# and fuzz: every fuzz target for 20 seconds (scripts/fuzz.sh, nightly toolchain and cargo-fuzz).
# A test in a group that is not skipped and lacks its prerequisite fails; a skipped group
# is printed by every test it skips. Downloads and guest images are cached under
# ~/.cache/atrium (keyed by content), so a second run is fast.
set -euo pipefail
cd "$(dirname "$0")/.."

skip=""
nextest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --skip) skip="$2"; shift 2 ;;
    --skip=*) skip="${1#--skip=}"; shift ;;
    --) shift; nextest_args=("$@"); break ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
export ATRIUM_SKIP="$skip"
[ -n "$skip" ] && echo "test: skipping groups: $skip"

# Each step prints when it starts; the last lines say how long each took (CI should stay
# under 30 minutes: docs/PERFORMANCE.md keeps what the steps cost).
stages=()
last_step="" last_start=0
step() {
  [ -z "$last_step" ] || stages+=("$last_step $((SECONDS - last_start))s")
  last_step=$1 last_start=$SECONDS
  printf '\n== %s (%ss)\n' "$1" "$SECONDS"
}
# Free room where the build, the caches and podman's images go: a run that fills the disk then
# says how full it was, and a CI log shows what each run left.
print_disk() {
  local p d
  for p in "${CARGO_TARGET_DIR:-$PWD/target}" "${ATRIUM_CACHE:-$HOME/.cache/atrium}" /var/lib/containers; do
    d=$p
    while [ ! -e "$d" ]; do d=$(dirname "$d"); done
    { df -h --output=avail,target "$d" | tail -n 1 |
      awk -v p="$p" '{print "test: disk: " $1 " free on " $2 " (" p ")"}'; } || true
  done
}
print_step_times() {
  step "end"
  print_disk
  local joined
  joined=$(printf '%s, ' "${stages[@]}")
  echo "test: time by step: ${joined%, }; total ${SECONDS}s"
}
# Also when a step fails and ends the run.
trap print_step_times EXIT

print_disk
step "machine packages and tools"
. scripts/lib/deps.sh
install_test_deps

step "format"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

# Clippy's lints run inside the one build of the workspace, as `cargo clippy` runs them (its
# driver wraps rustc for the workspace's own crates, with -D warnings), instead of a separate
# check-only compile of every crate and dependency first: one compile instead of two. Every
# target is built (as `clippy --all-targets` checks them), so the test step compiles nothing.
# The wrapper is part of what cargo remembers of a build: the images step and the tests build
# with the same, or the workspace would be compiled again.
step "build, with clippy's lints"
RUSTC_WORKSPACE_WRAPPER=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver) || {
  echo "test: clippy-driver is missing (rustup component add clippy)" >&2
  exit 1
}
export RUSTC_WORKSPACE_WRAPPER
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
# A run builds once: incremental compilation's caches would only fill the disk (2.2 GB of a
# 5.7 GB target folder), the images step and the tests build with the same setting.
export CARGO_INCREMENTAL=0
# Dependencies compiled by an earlier run with the same toolchain, lock file and manifests are
# taken from ~/.cache/atrium/build (scripts/lib/buildcache.sh); Atrium's crates always compile.
. scripts/lib/buildcache.sh
deps_key=$(build_cache_key deps "" "")
build_cache_restore "${CARGO_TARGET_DIR:-target}" "$deps_key" debug
cargo build --workspace --all-targets --locked
build_cache_save "${CARGO_TARGET_DIR:-target}" "$deps_key" debug ||
  echo "build cache: the dependencies were not kept; the next run compiles them again" >&2

step "guest images"
prepare_test_images

step "tests"
export ATRIUM_TEST_ARTIFACTS="$PWD/tests/artifacts"
mkdir -p "$ATRIUM_TEST_ARTIFACTS"
tests_status=0
cargo nextest run --workspace --locked --no-fail-fast "${nextest_args[@]}" || tests_status=$?

step "fuzz"
# The fuzz build is the nightly toolchain's; clippy's driver is the stable one.
unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
if [[ ",$skip," == *",fuzz,"* ]]; then
  echo "test: SKIPPED fuzz (skipped by request: --skip fuzz)"
else
  scripts/fuzz.sh --seconds 20 --jobs 2
fi
[ "$tests_status" = 0 ] || { echo "test: some tests failed (above)" >&2; exit "$tests_status"; }
