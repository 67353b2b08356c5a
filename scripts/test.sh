#!/usr/bin/env bash
# Every test, Rust and C, from a fresh clone on a fresh machine (the README's test command).
#
# Runs every runner, even after one fails, and ends with exactly one line
#   all tests: N passed, M failed, K skipped
# counted from the runners' own results; exits non-zero when anything failed. A skip is
# counted as a skip, never as a pass, and its reason is listed above that line: Rust tests
# that call `common::skip` (recorded in the file named by PCR_TEST_SKIP_LOG) and #[ignore]d
# tests (the child-process helpers `helper_*_as_child` are not tests and are not counted),
# ctest's skipped tests, a fuzz or Miri step that cannot run, and the QEMU check's skips.
# A runner that exits non-zero without reporting a failed test (a build error) counts as
# one failure.
#
# For trying parts of it while developing (the default runs everything; each step left out
# is counted as one skip): PCR_TEST_RUST=0, PCR_TEST_MIRI=0, PCR_TEST_C=0, PCR_TEST_FUZZ=0,
# PCR_TEST_QEMU=0, PCR_TEST_MIGRATE=0; PCR_TEST_CARGO_ARGS replaces cargo test's selection
# (default "--workspace --all-targets", e.g. "--test blocktime"); PCR_TEST_CTEST_ARGS is
# passed to ctest (e.g. "-R fault").
set -uo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: >"$work/counts"  # one line per runner: LABEL PASSED FAILED SKIPPED
: >"$work/skips"   # one line per skip: what: reason
: >"$work/fails"   # one line per runner failure that no test reported

count() { # LABEL PASSED FAILED SKIPPED
  echo "$1 $2 $3 $4" >>"$work/counts"
}

step_skipped() { # LABEL REASON: a whole step that does not run
  echo "SKIP: $2"
  count "$1" 0 0 1
  echo "$1: $2" >>"$work/skips"
}

# The failed count of LABEL, given the runner's exit status RC: a runner that failed
# without a failed test in its count (a build error) counts as one failure.
failures() { # LABEL RC FAILED-COUNTED
  if [ "$2" -ne 0 ] && [ "$3" -eq 0 ]; then
    echo "$1: exited with status $2 before reporting a failed test (see its output above)" >>"$work/fails"
    echo 1
  else
    echo "$3"
  fi
}

# Counts a libtest run (cargo test, cargo miri test) from its output LOG and the skip
# records SKIPS (binary TAB test TAB reason): a recorded test that passed is a skip, not a
# pass; an ignored test is a skip, except the child-process helpers.
count_libtest() { # LABEL LOG SKIPS RC
  local line p f s
  line=$(awk -v label="$1" -v skips="$3" -v out="$work/skips" '
    function short(b) { sub(/-[0-9a-f]+$/, "", b); return b }
    function name_of(l, result) {
      sub(/^test /, "", l); sub(" \\.\\.\\. " result ".*$", "", l); sub(/ - should panic$/, "", l)
      return l
    }
    FILENAME == skips {
      split($0, r, "\t"); k = r[1] SUBSEP r[2]
      if (!(k in why)) { why[k] = r[3]; order[++n] = k }
      next
    }
    /^ *Running .*\([^()]*\)$/ {
      bin = $0; sub(/^.*\(/, "", bin); sub(/\)$/, "", bin); sub(/^.*\//, "", bin); next
    }
    # A test that ran: "test NAME ... RESULT", where a log line of the test (written
    # straight to stderr, not captured) may come between the dots and the result.
    /^test .* \.\.\. ignored/ {
      t = name_of($0, "ignored"); why_ign = $0; sub(/^.* \.\.\. ignored,? ?/, "", why_ign)
      if (t ~ /(^|::)helper_[A-Za-z0-9_]*_as_child$/) next
      ignored++
      print label ": " short(bin) "::" t ": ignored" (why_ign != "" ? " (" why_ign ")" : "") >> out
      next
    }
    /^test .* \.\.\. / { t = $0; sub(/^test /, "", t); sub(/ \.\.\. .*$/, "", t); sub(/ - should panic$/, "", t)
                       ran[bin SUBSEP t] = 1
                       if ($0 ~ / \.\.\. FAILED$/) bad[bin SUBSEP t] = 1
                       next }
    # The failed tests, listed one per line under the last "failures:" before the result.
    /^failures:$/ { nf = 0; next }
    /^    [^ ]+$/ { listed[++nf] = substr($0, 5); next }
    /^test result: / {
      p += $4; f += $6
      for (i = 1; i <= nf; i++) bad[bin SUBSEP listed[i]] = 1
      nf = 0
    }
    END {
      for (i = 1; i <= n; i++) {
        k = order[i]; split(k, kb, SUBSEP)
        if ((k in ran) && !(k in bad)) {
          p--; s++
          print label ": " short(kb[1]) "::" kb[2] ": " why[k] >> out
        } else if (!(k in bad)) {
          print label ": " short(kb[1]) "::" kb[2] ": recorded a skip, but no test of that name ran (counted as libtest did): " why[k] >> out
        }
      }
      printf "%d %d %d\n", p, f, s + ignored
    }' "$3" "$2")
  read -r p f s <<<"$line"
  f=$(failures "$1" "$4" "$f")
  echo "$1: $p passed, $f failed, $s skipped"
  count "$1" "$p" "$f" "$s"
}

# Counts a runner that ends with its own line "[WORD: ]N passed, M failed[, K skipped]"
# and prints a line "skipped: WHAT: REASON" or "SKIP: REASON" per skip (without the K
# field, the SKIP lines are the skips). No such line: the runner failed.
count_summary() { # LABEL LOG RC
  local line p f s
  line=$(grep -E '^([A-Za-z0-9_-]+: )?[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$' "$2" | tail -1)
  if [ -z "$line" ]; then
    count "$1" 0 1 0
    echo "$1: ended (status $3) without its closing count" >>"$work/fails"
    return
  fi
  line=${line#*: }
  p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
  f=$(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
  if [[ $line == *skipped ]]; then
    s=$(echo "$line" | sed -E 's/.*, ([0-9]+) skipped$/\1/')
    grep -E '^(skipped: |SKIP)' "$2" | sed -E "s/^(skipped: |SKIP:? ?)/$1: /" >>"$work/skips"
  else
    s=$(grep -cE '^SKIP' "$2")
    grep -E '^SKIP' "$2" | sed -E "s/^SKIP:? ?/$1: /" >>"$work/skips"
  fi
  count "$1" "$p" "$(failures "$1" "$3" "$f")" "$s"
}

echo "== Dependencies (cmake, pkg-config, valgrind)"
bash scripts/install-deps.sh
rc=$?
[ $rc -eq 0 ] || count install-deps 0 "$(failures install-deps $rc 0)" 0

echo "== Rust tests (library, wire codecs, fault storm, KVM guest, end-to-end migrations)"
if [ "${PCR_TEST_RUST:-1}" = 0 ]; then
  step_skipped rust "PCR_TEST_RUST=0 (the Rust tests are left out of this run)"
else
  export PCR_TEST_SKIP_LOG="$work/rust.skips"
  : >"$PCR_TEST_SKIP_LOG"
  # shellcheck disable=SC2086 # a list of arguments
  cargo test --no-fail-fast ${PCR_TEST_CARGO_ARGS:---workspace --all-targets} 2>&1 | tee "$work/rust.log"
  rc=${PIPESTATUS[0]}
  count_libtest rust "$work/rust.log" "$PCR_TEST_SKIP_LOG" "$rc"
fi

echo "== Miri: the C entry points' pointer checks and the discard walk's callback (undefined behaviour a plain run cannot see)"
if [ "${PCR_TEST_MIRI:-1}" = 0 ]; then
  step_skipped miri "PCR_TEST_MIRI=0 (Miri is left out of this run)"
else
  if ! cargo +nightly miri --version >/dev/null 2>&1; then
    # A fresh machine: bring the nightly toolchain's Miri (the fuzz step needs nightly too).
    rustup component add --toolchain nightly miri rust-src >/dev/null 2>&1 ||
      rustup toolchain install nightly --profile minimal --component miri,rust-src >/dev/null 2>&1 || true
  fi
  if cargo +nightly miri --version >/dev/null 2>&1; then
    export PCR_TEST_SKIP_LOG="$work/miri.skips"
    : >"$PCR_TEST_SKIP_LOG"
    MIRIFLAGS=-Zmiri-disable-isolation cargo +nightly miri test --no-fail-fast --test ffi_soundness 2>&1 |
      tee "$work/miri.log"
    rc=${PIPESTATUS[0]}
    count_libtest miri "$work/miri.log" "$PCR_TEST_SKIP_LOG" "$rc"
  else
    step_skipped miri "Miri is not installed and could not be (rustup component add --toolchain nightly miri rust-src)"
  fi
fi
unset PCR_TEST_SKIP_LOG

echo "== C tests (CMake + ctest: seed prototypes, real userfaultfd, dlopen, static, packaging, valgrind/ASan, KVM migration)"
if [ "${PCR_TEST_C:-1}" = 0 ]; then
  step_skipped c-tests "PCR_TEST_C=0 (the C tests are left out of this run)"
else
  # shellcheck disable=SC2086 # a list of arguments
  bash scripts/c-tests.sh ${PCR_TEST_CTEST_ARGS:-} 2>&1 | tee "$work/c.log"
  count_summary c-tests "$work/c.log" "${PIPESTATUS[0]}"
fi

echo "== Fuzz smoke run (cargo-fuzz/libFuzzer, every target, 60 s in all)"
if [ "${PCR_TEST_FUZZ:-1}" = 0 ]; then
  step_skipped fuzz "PCR_TEST_FUZZ=0 (fuzzing is left out of this run)"
else
  bash scripts/fuzz.sh 2>&1 | tee "$work/fuzz.log"
  count_summary fuzz "$work/fuzz.log" "${PIPESTATUS[0]}"
fi

echo "== QEMU 7.2 with the library in place of its postcopy-ram.c: QEMU's postcopy qtests, capped recovery, interop (scripts/qemu-check.sh)"
if [ "${PCR_TEST_QEMU:-1}" = 0 ]; then
  step_skipped qemu-check "PCR_TEST_QEMU=0 (the QEMU check is left out of this run)"
else
  bash scripts/qemu-check.sh 2>&1 | tee "$work/qemu.log"
  count_summary qemu-check "$work/qemu.log" "${PIPESTATUS[0]}"
fi

echo "== The main command: a real postcopy migration (256 MiB, 4 faulting threads)"
if [ "${PCR_TEST_MIGRATE:-1}" = 0 ]; then
  step_skipped migrate "PCR_TEST_MIGRATE=0 (the main command is left out of this run)"
else
  cargo migrate --quiet
  rc=$?
  if [ $rc -eq 0 ]; then count migrate 1 0 0; else count migrate 0 1 0; fi
fi

echo "== Summary"
awk '!($1 in p) { order[++n] = $1 } { p[$1] += $2; f[$1] += $3; s[$1] += $4 }
     END { for (i = 1; i <= n; i++) { l = order[i]
             printf "%-12s %d passed, %d failed, %d skipped\n", l ":", p[l], f[l], s[l] } }' "$work/counts"
if [ -s "$work/skips" ]; then
  echo "skipped, and why:"
  sed 's/^/  /' "$work/skips"
fi
if [ -s "$work/fails" ]; then
  echo "failures no test reported:"
  sed 's/^/  /' "$work/fails"
fi
awk '{ p += $2; f += $3; s += $4 }
     END { printf "all tests: %d passed, %d failed, %d skipped\n", p, f, s; exit (f > 0) }' "$work/counts"
