# Compiled dependencies kept between runs, keyed by content (sourced by scripts/test.sh and
# scripts/fuzz.sh).
#
# A fresh clone compiles some 400 crates of dependencies before any of Atrium's own, and the
# fuzz build compiles them again with the fuzzer's instrumentation. What they compile to depends
# only on the toolchain, the lock file, the manifests (features and profiles) and the build
# flags, so, like downloads and guest images, it is kept under ~/.cache/atrium/build/NAME-KEY,
# KEY a hash of all of those. Atrium's own crates (the packages named atrium-*) are never kept:
# they are compiled from the clone every time. Cargo checks every restored unit against its
# fingerprint as usual and compiles again anything that does not match, so a stale or partial
# cache costs time, never correctness. Without a cache (a fresh machine) the build is cold and
# keeps its dependencies for the next run.

# Prints the cache key for NAME: a hash of the compiler's `rustc -vV` (of TOOLCHAIN, e.g.
# "nightly"; empty: the one cargo uses here), every manifest and lock file of the repository,
# the flags in the environment and EXTRA (anything else that changes the build, e.g. the fuzz
# build's flags). Run it from the repository's root.
build_cache_key() { # NAME TOOLCHAIN EXTRA
  local name=$1 toolchain=$2 extra=$3 sum
  sum=$({
    echo "format 1"
    if [ -n "$toolchain" ]; then rustup run "$toolchain" rustc -vV; else rustc -vV; fi
    echo "RUSTFLAGS=${RUSTFLAGS:-} extra=$extra"
    git ls-files -z -- '*Cargo.toml' '*Cargo.lock' '.cargo/config*' | sort -z | xargs -0 sha256sum
  } | sha256sum)
  echo "$name-${sum:0:16}"
}

# The units of Atrium's own packages in a cargo profile folder: their hashes, as an
# alternation for grep (empty when there are none).
_build_cache_own_hashes() { # PROFILE_DIR
  find "$1/.fingerprint" -mindepth 1 -maxdepth 1 -name 'atrium-*' -printf '%f\n' 2>/dev/null |
    sed 's/.*-//' | sort -u | paste -sd'|'
}

# Copies the kept dependencies for KEY into TARGET_DIR's profile folders (SUBDIR: "debug",
# "release", "x86_64-unknown-linux-gnu/release"...) that have not been built into yet (a fresh
# clone); a folder that has, keeps its own. Nothing happens without a cache.
build_cache_restore() { # TARGET_DIR KEY SUBDIR...
  local target=$1 key=$2 src="$ATRIUM_CACHE/build/$2"
  shift 2
  if [ ! -d "$src" ]; then
    echo "build cache: none for $key; dependencies compile from scratch and are kept after the build"
    return 0
  fi
  local sub
  for sub in "$@"; do
    [ -d "$src/$sub" ] || continue
    if [ -d "$target/$sub/.fingerprint" ]; then
      echo "build cache: $target/$sub was built before; it keeps its own dependencies"
      continue
    fi
    mkdir -p "$target/$sub"
    # Modification times are kept: cargo compares them with the sources'. A copy that fails
    # half-way is removed: the build is then cold, never built on a part.
    if ! (tar -C "$src/$sub" -cf - . | tar -C "$target/$sub" -xf -); then
      rm -rf "${target:?}/$sub"
      echo "build cache: could not restore $src/$sub; dependencies compile from scratch" >&2
      continue
    fi
    echo "build cache: dependencies restored into $target/$sub from $src/$sub ($(du -sh "$src/$sub" | cut -f1))"
  done
}

# Keeps the compiled dependencies of TARGET_DIR's profile folders under KEY, unless that key is
# kept already; then removes all but the newest two keys of the same name. Call after a build
# that succeeded. Fails (keeping nothing) if the copy fails: callers go on without it.
build_cache_save() { # TARGET_DIR KEY SUBDIR...
  local target=$1 key=$2 dest="$ATRIUM_CACHE/build/$2"
  shift 2
  [ -d "$dest" ] && return 0
  local tmp="$dest.partial.$$" sub own
  rm -rf "$tmp"
  mkdir -p "$tmp"
  for sub in "$@"; do
    [ -d "$target/$sub/.fingerprint" ] || continue
    own=$(_build_cache_own_hashes "$target/$sub")
    mkdir -p "$tmp/$sub"
    # Every unit is NAME-HASH (a folder in .fingerprint and build, files NAME-HASH.EXT in deps);
    # the units of Atrium's packages are left out by their hashes.
    (cd "$target/$sub" && find .fingerprint build deps -mindepth 1 -maxdepth 1 -printf '%p\n' |
      { if [ -n "$own" ]; then grep -Ev -- "-($own)(\.[^/]*)?\$"; else cat; fi; } |
      tar -cf - -T -) | tar -C "$tmp/$sub" -xf - || { rm -rf "$tmp"; return 1; }
  done
  mv "$tmp" "$dest"
  echo "build cache: dependencies kept in $dest ($(du -sh "$dest" | cut -f1))"
  local name=${key%-*}
  find "$ATRIUM_CACHE/build" -mindepth 1 -maxdepth 1 -name "$name-*" ! -name '*.partial.*' -printf '%T@ %p\n' |
    sort -rn | tail -n +3 | cut -d' ' -f2- | xargs -r rm -rf
  # A run that stopped half-way leaves a partial folder: removed when older than a day.
  find "$ATRIUM_CACHE/build" -mindepth 1 -maxdepth 1 -name '*.partial.*' -mtime +0 -exec rm -rf {} +
}
