#!/usr/bin/env bash
# Builds postcopy-ram and runs its C tests and packaging checks (CMake + ctest).
#
#   bash scripts/c-tests.sh [extra ctest arguments, e.g. -R fault or -L valgrind]
#
# Works from any directory and can be re-run at will. On Debian/Ubuntu as root it first
# installs what is missing (cmake, pkg-config, a C compiler, make, binutils, valgrind), running
# `apt-get update` only when the package lists are missing or an install fails. The Rust
# toolchain (cargo, Rust >= 1.75) must already be installed (https://rustup.rs).
#
# Environment: PCR_C_TESTS_BUILD_DIR (default <repo>/build/c-tests), CARGO_TARGET_DIR
# (honoured by cargo and CMake alike), PCR_CTEST_JOBS (default: number of CPUs).
# Exits non-zero when anything fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PCR_C_TESTS_BUILD_DIR:-$ROOT/build/c-tests}"
JOBS="${PCR_CTEST_JOBS:-$(nproc 2>/dev/null || echo 2)}"
START=$(date +%s)

log() { printf '\n==> %s\n' "$*"; }

# ---- tools --------------------------------------------------------------------------
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v make >/dev/null 2>&1 || missing+=(make)
{ command -v nm && command -v objdump; } >/dev/null 2>&1 || missing+=(binutils)
{ command -v valgrind && [ -f /usr/include/valgrind/valgrind.h ]; } >/dev/null 2>&1 || missing+=(valgrind)

if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "error: missing ${missing[*]} and cannot install them (needs root and apt-get)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
        apt-get update
    fi
    if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
        apt-get update
        apt-get install -y --no-install-recommends "${missing[@]}"
    fi
fi

CARGO="$(command -v cargo || true)"
if [ -z "$CARGO" ] && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    CARGO="${CARGO_HOME:-$HOME/.cargo}/bin/cargo"
    export PATH="$(dirname "$CARGO"):$PATH"
fi
if [ -z "$CARGO" ]; then
    echo "error: cargo not found: install Rust (>= 1.75), e.g. with rustup (https://rustup.rs)" >&2
    exit 1
fi

# ---- build --------------------------------------------------------------------------
log "cargo build --release (in $ROOT)"
(cd "$ROOT" && "$CARGO" build --release)

log "configuring the C tests in $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DPOSTCOPY_RAM_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DPOSTCOPY_RAM_TEST_VALGRIND=ON -DPOSTCOPY_RAM_TEST_ASAN=ON -DPOSTCOPY_RAM_TEST_UBSAN=ON

log "building"
cmake --build "$BUILD" -j "$JOBS"

# ---- test ---------------------------------------------------------------------------
log "ctest (-j $JOBS)"
status=0
(cd "$BUILD" && ctest --output-on-failure -j "$JOBS" "$@") || status=$?

log "done in $(( $(date +%s) - START )) s: $([ $status -eq 0 ] && echo PASSED || echo "FAILED ($status)")"
exit $status
