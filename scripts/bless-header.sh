#!/usr/bin/env bash
# Rewrites include/postcopy_ram.h with the header build.rs generates from the sources (the
# build itself never touches tracked files). Review the diff and commit it.
set -euo pipefail
cd "$(dirname "$0")/.."
PCR_BLESS_HEADER=1 cargo test --quiet --test header committed_header_is_current
git --no-pager diff --stat -- include/postcopy_ram.h
