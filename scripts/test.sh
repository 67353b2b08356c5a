#!/usr/bin/env bash
# Every test, Rust and C, from a fresh clone on a fresh machine (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

log=$(mktemp)
trap 'rm -f "$log" "$log.qemu"' EXIT

echo "== Rust tests (library, wire codecs, fault storm, KVM guest, end-to-end migrations)"
cargo test --workspace --all-targets 2>&1 | tee -a "$log"

echo "== Miri: the C entry points' pointer checks and the discard walk's callback (undefined behaviour a plain run cannot see)"
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  # A fresh machine: bring the nightly toolchain's Miri (the fuzz step needs nightly too).
  rustup component add --toolchain nightly miri rust-src >/dev/null 2>&1 ||
    rustup toolchain install nightly --profile minimal --component miri,rust-src >/dev/null 2>&1 || true
fi
if cargo +nightly miri --version >/dev/null 2>&1; then
  MIRIFLAGS=-Zmiri-disable-isolation cargo +nightly miri test --test ffi_soundness 2>&1 | tee -a "$log"
else
  echo "SKIP: Miri is not installed (rustup component add --toolchain nightly miri rust-src)"
fi

echo "== C tests (CMake + ctest: seed prototypes, real userfaultfd, dlopen, static, packaging, valgrind/ASan, KVM migration)"
bash scripts/c-tests.sh 2>&1 | tee -a "$log"

echo "== Fuzz smoke run (cargo-fuzz/libFuzzer, every target, 60 s in all)"
bash scripts/fuzz.sh 2>&1 | tee -a "$log"

echo "== QEMU 7.2 with the library in place of its postcopy-ram.c: QEMU's postcopy qtests, capped recovery, interop (scripts/qemu-check.sh)"
if [ "${PCR_TEST_QEMU:-1}" = 0 ]; then
  echo "SKIP: PCR_TEST_QEMU=0 (the QEMU check is left out of this run)"
else
  bash scripts/qemu-check.sh 2>&1 | tee "$log.qemu"
  # Its closing line "N passed, M failed", named for the count below.
  tail -1 "$log.qemu" | sed 's/^/qemu-check: /' >>"$log"
  rm -f "$log.qemu"
fi

echo "== The main command: a real postcopy migration (256 MiB, 4 faulting threads)"
cargo migrate --quiet

# One closing line over both runners, counted from their own summaries above.
awk '/^test result:/ { p += $4; f += $6 }
     /^(fuzz|qemu-check): [0-9]+ passed, [0-9]+ failed$/ { p += $2; f += $4 }
     /tests passed, [0-9]+ tests failed out of/ { p += $NF - $(NF-5); f += $(NF-5) }
     END { printf "all tests: %d passed, %d failed\n", p, f; exit (f > 0) }' "$log"
