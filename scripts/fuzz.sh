#!/usr/bin/env bash
# Coverage-guided fuzzing of the wire decoders, the discard-command handler, the discard walk
# and the C entry points (cargo-fuzz / libFuzzer with ASan, nightly Rust; see fuzz/README.md).
#
#   bash scripts/fuzz.sh              smoke run: every target, 60 s in all (in scripts/test.sh)
#   bash scripts/fuzz.sh SECONDS [T]  every target (or just T) for SECONDS each
#
# Installs what is missing: the nightly toolchain (rustup) and cargo-fuzz (crates.io). Skips
# every target, saying why, only when no nightly toolchain or no cargo-fuzz can be had (no
# network). New inputs go to a temporary directory, so the committed corpus
# (fuzz/corpus/<target>) stays as it is; a crashing input is kept in fuzz/artifacts/<target>/.
# Ends with `fuzz: N passed, M failed, K skipped` (after a line `skipped: TARGET: REASON` per
# skipped target); a build failure fails every target.
set -euo pipefail
cd "$(dirname "$0")/.."

# The smoke run fuzzes 56 s in all, so that with libFuzzer's start-up it stays within 60 s.
SMOKE_TOTAL=56
per=${1:-}
only=${2:-}

targets=()
for f in fuzz/fuzz_targets/*.rs; do
    t=$(basename "$f" .rs)
    if [ -z "$only" ] || [ "$only" = "$t" ]; then
        targets+=("$t")
    fi
done
if [ ${#targets[@]} -eq 0 ]; then
    echo "no fuzz target named $only" >&2
    exit 2
fi
if [ -z "$per" ]; then
    per=$((SMOKE_TOTAL / ${#targets[@]}))
fi

# Every target skipped, for REASON (the host lacks what fuzzing needs).
skip_all() {
    for t in "${targets[@]}"; do
        echo "skipped: $t: $1"
    done
    echo "fuzz: 0 passed, 0 failed, ${#targets[@]} skipped"
    exit 0
}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "nightly toolchain missing: rustup toolchain install nightly --profile minimal"
    rustup toolchain install nightly --profile minimal ||
        skip_all "no nightly Rust toolchain could be installed (cargo-fuzz needs one)"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz missing: cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked ||
        skip_all "cargo-fuzz is not installed and could not be (cargo install cargo-fuzz --locked)"
fi

echo "building ${#targets[@]} fuzz targets (nightly, ASan)"
if ! (cd fuzz && cargo +nightly fuzz build); then
    echo "the fuzz targets do not build: every target fails"
    echo "fuzz: 0 passed, ${#targets[@]} failed, 0 skipped"
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    status=0
    (cd fuzz && cargo +nightly fuzz run "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$per" -timeout=10 -print_final_stats=1) >"$work/$t.log" 2>&1 ||
        status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -1)
    cov=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$work/$t.log" | tail -1 |
        sed 's/.*\(cov: [0-9]*\) \(ft: [0-9]*\).*/\1, \2/' || true)
    if [ $status -eq 0 ]; then
        passed=$((passed + 1))
        echo "fuzz $t: ${runs:-?} runs in $per s, no crash ($cov)"
    else
        failed=$((failed + 1))
        echo "fuzz $t: FAILED (exit $status); the log:"
        tail -60 "$work/$t.log"
    fi
done
echo "fuzz: $passed passed, $failed failed, 0 skipped"
[ $failed -eq 0 ]
