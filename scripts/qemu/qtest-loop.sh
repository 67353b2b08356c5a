#!/usr/bin/env bash
# Runs QEMU postcopy qtests again and again against both builds, alternating, to measure how
# often each fails (a flaky test shows up here, not in one run of qemu-check.sh). Needs the
# builds of scripts/qemu-check.sh (same cache).
#
#   bash scripts/qemu/qtest-loop.sh [ROUNDS [TEST...]]
#   e.g. bash scripts/qemu/qtest-loop.sh 30 postcopy/preempt/recovery/plain
#
# Default: 10 rounds of every postcopy qtest 7.2 registers (eight). A run counts as passed
# only when its TAP output shows it ran and passed (qemu_qtest); a failed run's log (QEMU's
# stderr, every QMP exchange, stacks when it hung) is kept in target/qemu/logs/loop/;
# passing ones are removed. PCR_QTEST_LOAD=N adds N busy loops for the duration (load as on a shared CI host).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${PCR_QEMU_CACHE:-/var/cache/postcopy-ram-qemu}
OUT=$ROOT/target/qemu
LOGS=$OUT/logs/loop
# shellcheck source=scripts/qemu/lib.sh
. "$ROOT/scripts/qemu/lib.sh"
rounds=${1:-10}
shift || true
src=$(ls -d "$CACHE"/src/qemu-7.2* | head -1)
tests=${*:-$(qemu_postcopy_qtests "$src" | tr '\n' ' ')}
for side in stock patched; do
  [ -x "$CACHE/$side/build/qemu-system-x86_64" ] || { echo "no $side build in $CACHE: run scripts/qemu-check.sh first" >&2; exit 2; }
done
mkdir -p "$LOGS"
exec 9>"$CACHE/.lock"
flock 9
load=()
for _ in $(seq 1 "${PCR_QTEST_LOAD:-0}"); do
  (while :; do :; done) 9>&- &
  load+=($!)
done
trap '[ ${#load[@]} -eq 0 ] || kill "${load[@]}" 2>/dev/null' EXIT
declare -A pass fail
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); ${#load[@]} busy loops"
for r in $(seq 1 "$rounds"); do
  for t in $tests; do
    for side in stock patched; do
      k="$side $t"
      log=$LOGS/$side-${t//\//-}-$r.log
      v=$(qemu_qtest "$side" "$t" "$log")
      if [ "$v" = ok ]; then
        pass[$k]=$((${pass[$k]:-0} + 1))
        rm -f "$log" "$log.tap"
      else
        fail[$k]=$((${fail[$k]:-0} + 1))
        echo "FAIL round $r: $k (load $(cut -d' ' -f1 /proc/loadavg)): $v; log $log"
        qemu_qtest_failure_summary "$log" | sed 's/^/    /'
      fi
    done
  done
done
for t in $tests; do
  for side in stock patched; do
    k="$side $t"
    echo "$k: ${pass[$k]:-0} passed, ${fail[$k]:-0} failed"
  done
done
