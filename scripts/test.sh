#!/usr/bin/env bash
# Every test, Rust and C, from a fresh clone on a fresh machine (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

# build.rs leaves include/ alone with this set, so tests/header.rs can tell whether the
# committed header is stale.
export POSTCOPY_RAM_CHECK_HEADER=1

echo "== Rust tests (library, wire codecs, fault storm, KVM guest, end-to-end migrations)"
cargo test --workspace --all-targets

echo "== C tests (CMake + ctest: seed prototypes, real userfaultfd, dlopen, static, packaging, valgrind/ASan)"
bash scripts/c-tests.sh

echo "== The main command: a real postcopy migration (256 MiB, 4 faulting threads)"
cargo migrate --quiet
