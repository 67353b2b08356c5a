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
# Ends with one line `c-tests: N passed, M failed, K skipped`, after a line
# `skipped: TEST: REASON` per skipped test (a test skips with exit code 77, ctest's
# SKIP_RETURN_CODE, after printing `SKIP: reason`; ctest counts it in "out of N", this
# count does not). Exits non-zero when anything fails, or when the build stops before ctest
# (then counted as one failure).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PCR_C_TESTS_BUILD_DIR:-$ROOT/build/c-tests}"
JOBS="${PCR_CTEST_JOBS:-$(nproc 2>/dev/null || echo 2)}"
START=$(date +%s)

log() { printf '\n==> %s\n' "$*"; }

# A failure before ctest's own count (tools, build, configure) still ends with the count.
counted=
trap 'rc=$?; if [ -z "$counted" ] && [ $rc -ne 0 ]; then
  echo "c-tests: stopped with status $rc before ctest ran"; echo "c-tests: 0 passed, 1 failed, 0 skipped"; fi' EXIT

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
out="$BUILD/ctest.out"
(cd "$BUILD" && ctest --output-on-failure -j "$JOBS" "$@") 2>&1 | tee "$out" || status=$?

log "done in $(( $(date +%s) - START )) s: $([ $status -eq 0 ] && echo PASSED || echo "FAILED ($status)")"
# ctest's "X% tests passed, F tests failed out of N" counts skipped tests in N (and in the
# passed percentage): the skipped ones are those listed as "(Skipped)" (or "(Disabled)")
# under "The following tests did not run:". Each one's reason is its "SKIP: " line in
# ctest's log of the run.
total=$(sed -nE 's/^.*tests passed, ([0-9]+) tests? failed out of ([0-9]+)$/\2/p' "$out" | tail -1)
failed=$(sed -nE 's/^.*tests passed, ([0-9]+) tests? failed out of ([0-9]+)$/\1/p' "$out" | tail -1)
skipped_names=$(awk '/^The following tests did not run:/ { on = 1; next }
                     on && /^[[:space:]]+[0-9]+ - .* \((Skipped|Disabled)\)$/ { print $3; next }
                     on { on = 0 }' "$out")
skipped=0
for t in $skipped_names; do
    skipped=$((skipped + 1))
    why=$(awk -v t="$t" '$0 ~ "^[0-9]+/[0-9]+ Test: " { cur = $0; sub(/^[0-9]+\/[0-9]+ Test: /, "", cur) }
                         cur == t && /SKIP: / { sub(/^.*SKIP: /, ""); print; exit }' \
              "$BUILD/Testing/Temporary/LastTest.log" 2>/dev/null)
    echo "skipped: $t: ${why:-no reason printed (ctest: Skipped)}"
done
if [ -z "$total" ]; then
    # No count from ctest: it found no tests (a -R that matches nothing) or stopped.
    total=0
    failed=$([ $status -eq 0 ] && echo 0 || echo 1)
fi
counted=1
echo "c-tests: $((total - failed - skipped)) passed, $failed failed, $skipped skipped"
exit $status
