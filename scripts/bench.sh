#!/usr/bin/env bash
# Benchmarks of postcopy-ram against the same work done directly on userfaultfd (project
# issue 5). One command:
#
#   bash scripts/bench.sh               # the whole run (well under 2 minutes)
#   bash scripts/bench.sh --callgrind   # also: user-space instructions per placement
#                                       # (valgrind --tool=callgrind, deterministic)
#
# It builds the library (cargo build --release) and the C programs of bench/ with plain cc
# (linked to target/release/libpostcopy_ram.so through an rpath), then runs:
#   bench/fault_rtt.c    4 KiB fault round trip: library fault thread + request_page +
#                        pcr_place_page vs a C poll/read/UFFDIO_COPY thread; blocking
#                        and spinning (spin_wait_us) variants; faults back to back, then
#                        sparse faults (100 us apart, spin 200 us)
#   bench/place_bench.c  pcr_place_page / _zero / _pages / _pages_zero vs raw ioctls and
#                        memcpy, 4 KiB pages and 2 MiB MAP_HUGETLB pages
# Library and baseline are measured in the same process, alternating (ABAB...) at a fine
# grain, and summarised per round; the table shows medians, p10-p90 across rounds, and the
# per-round ratio library/baseline against the issue's targets. Nothing here asserts on
# timings: PASS/MISS is information.
#
# Huge pages: when run as root, vm.nr_hugepages is raised by what the 2 MiB benchmark needs
# and lowered by the same amount on exit (even on error or ^C); otherwise that benchmark
# prints why it is skipped.
#
# Knobs (environment): BENCH_SPIN_US (default 50), BENCH_FAULT_ROUNDS (31),
# BENCH_SPARSE_GAP_US (100), BENCH_SPARSE_SPIN_US (200), BENCH_SPARSE_ROUNDS (15),
# BENCH_PLACE_ROUNDS (21), BENCH_HUGE_MIB (64), BENCH_PIN_TOUCHER (CPU number: pin the
# faulting thread of the fault benchmark; default: not pinned), CC (default cc).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CALLGRIND=0
for arg in "$@"; do
    case $arg in
    --callgrind) CALLGRIND=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

SPIN_US=${BENCH_SPIN_US:-50}
FAULT_ROUNDS=${BENCH_FAULT_ROUNDS:-31}
SPARSE_ROUNDS=${BENCH_SPARSE_ROUNDS:-15}
SPARSE_GAP_US=${BENCH_SPARSE_GAP_US:-100}
SPARSE_SPIN_US=${BENCH_SPARSE_SPIN_US:-200}
PLACE_ROUNDS=${BENCH_PLACE_ROUNDS:-21}
HUGE_MIB=${BENCH_HUGE_MIB:-64}
CC=${CC:-cc}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$TARGET_DIR/bench

# --- build ------------------------------------------------------------------------------
echo "building: cargo build --release" >&2
cargo build --release --quiet
SO=$TARGET_DIR/release/libpostcopy_ram.so
[ -f "$SO" ] || { echo "bench.sh: $SO not found after cargo build" >&2; exit 1; }
mkdir -p "$OUT/lib"
# The .so carries a SONAME (libpostcopy_ram.so.0.N): give the loader that name next to it.
ln -sf "$SO" "$OUT/lib/libpostcopy_ram.so"
SONAME=$(readelf -d "$SO" 2>/dev/null | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p' || true)
[ -n "$SONAME" ] && ln -sf "$SO" "$OUT/lib/$SONAME"
CFLAGS=(-O2 -g -std=gnu11 -Wall -Wextra -I"$ROOT/include" -I"$ROOT/bench")
LDFLAGS=(-L"$OUT/lib" -lpostcopy_ram -Wl,-rpath,"$OUT/lib" -lpthread)
for prog in fault_rtt place_bench; do
    echo "building: $CC bench/$prog.c -> $OUT/$prog" >&2
    "$CC" "${CFLAGS[@]}" -o "$OUT/$prog" "bench/$prog.c" "${LDFLAGS[@]}"
done

# --- huge pages -------------------------------------------------------------------------
HP_FILE=/proc/sys/vm/nr_hugepages
HP_ADDED=0
restore_hugepages() {
    if [ "$HP_ADDED" -gt 0 ]; then
        local now
        now=$(cat "$HP_FILE")
        echo $((now > HP_ADDED ? now - HP_ADDED : 0)) >"$HP_FILE" 2>/dev/null || true
        echo "vm.nr_hugepages restored to $(cat "$HP_FILE")" >&2
        HP_ADDED=0
    fi
}
trap restore_hugepages EXIT
trap 'exit 130' INT TERM
HP_BEFORE=$(cat "$HP_FILE" 2>/dev/null || echo 0)
HP_NEED=$((3 * HUGE_MIB / 2)) # three areas of HUGE_MIB MiB (library, raw, memcpy)
HP_FREE=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
if [ "$(awk '/^Hugepagesize:/ {print $2}' /proc/meminfo)" = 2048 ] && [ "${HP_FREE:-0}" -lt "$HP_NEED" ] &&
    [ -w "$HP_FILE" ]; then
    want=$((HP_BEFORE + HP_NEED - HP_FREE))
    if echo "$want" >"$HP_FILE" 2>/dev/null; then
        HP_ADDED=$(($(cat "$HP_FILE") - HP_BEFORE))
        [ "$HP_ADDED" -lt 0 ] && HP_ADDED=0
    fi
    echo "vm.nr_hugepages: $HP_BEFORE -> $(cat "$HP_FILE") (wanted $want)" >&2
fi

# --- run --------------------------------------------------------------------------------
model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
echo
echo "postcopy-ram benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) CPUs, ${model:-unknown CPU}, Linux $(uname -r), $(awk '/^MemTotal:/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo "library: $(git describe --always --dirty 2>/dev/null || echo unknown) (cargo build --release), C: $("$CC" --version | head -1)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| benchmark | unit | library: median [p10-p90] | baseline | baseline: median [p10-p90] | ratio lib/base: median [p10-p90] | target | result |"
echo "|---|---|---|---|---|---|---|---|"
start=$(date +%s)
"$OUT/fault_rtt" "$FAULT_ROUNDS" 8 60 "$SPIN_US"
"$OUT/fault_rtt" "$SPARSE_ROUNDS" 4 30 "$SPARSE_SPIN_US" "$SPARSE_GAP_US"
"$OUT/place_bench" 4k "$PLACE_ROUNDS" 32
"$OUT/place_bench" 2m "$((2 * PLACE_ROUNDS + 1))" "$HUGE_MIB"
echo
echo "Rounds: fault $FAULT_ROUNDS x (8 blocks x 60 faults per variant), sparse fault $SPARSE_ROUNDS x (4 x 30),"
echo "placement $PLACE_ROUNDS x 32 MiB (4K) and $((2 * PLACE_ROUNDS + 1)) x $HUGE_MIB MiB (2M)."
echo "us/fault: lower is better, the ratio compares times."
echo "GiB/s, Mpages/s: higher is better, the ratio compares throughputs. Spread: p10-p90 across rounds."
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); measuring took $(($(date +%s) - start)) s"

# --- optional: instruction counts -------------------------------------------------------
if [ "$CALLGRIND" = 1 ]; then
    echo
    if ! command -v valgrind >/dev/null || ! command -v callgrind_annotate >/dev/null; then
        echo "callgrind: valgrind not installed, skipped"
        exit 0
    fi
    PAGES=1024
    cg=$OUT/callgrind.out
    valgrind --tool=callgrind --callgrind-out-file="$cg" "$OUT/place_bench" profile "$PAGES" >/dev/null 2>&1
    echo "User-space instructions per call (callgrind, $PAGES pages placed twice each way; kernel work not counted):"
    echo
    echo "| path | instructions per call | per 4 KiB page |"
    echo "|---|---|---|"
    callgrind_annotate --inclusive=yes --threshold=100 "$cg" 2>/dev/null |
        awk -v pages="$PAGES" '
            /place_bench.c:prof_[a-z_0-9]+ \[/ {
                n = $1; gsub(",", "", n)
                match($0, /prof_[a-z_0-9]+/); f = substr($0, RSTART + 5, RLENGTH - 5)
                if (seen[f]++) next
                per_call = (f ~ /64k$/) ? 16 : 1
                calls = 2 * pages / per_call
                printf "| %s | %.0f | %.0f |\n", f, n / calls, n / (2 * pages)
            }' | sort
fi
