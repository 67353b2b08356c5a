#!/usr/bin/env bash
# QEMU 7.2 with migration/postcopy-ram.c replaced by integrations/qemu-7.2/postcopy-ram.c
# (a thin shim over libpostcopy_ram), checked against an unpatched build of the same source
# and against Debian's own qemu-system-x86 7.2.
#
#   bash scripts/qemu-check.sh
#
# Steps (each cached, so a second run rebuilds nothing):
#   1. build dependencies and Debian's qemu-system-x86 7.2 (apt, root);
#   2. Debian bookworm's qemu source (apt-get source, deb-src enabled through a private
#      sources file and lists directory: the machine's apt configuration is not touched);
#   3. the stock build and the patched build (ninja -j2), outside the clone, under
#      $PCR_QEMU_CACHE (default /var/cache/postcopy-ram-qemu); the library is installed by
#      CMake into a prefix there and linked through its pkg-config file;
#   4. QEMU's five postcopy qtests against both builds, a bandwidth-capped recovery whose
#      library counters show every pending request re-sent, and interop with Debian's
#      binary both ways (KVM guest writing memory, postcopy driven through QMP), and a
#      migration that ends in precopy reporting postcopy-blocktime as the stock build does.
# Leaves target/qemu/qemu-system-x86_64 (patched) and target/qemu/qemu-system-x86_64.stock.
# Ends with one line "N passed, M failed" (after a SKIP line, "0 passed, 0 failed", on a host
# without KVM, root or userfaultfd).
#
# Environment: PCR_QEMU_CACHE (cache dir), PCR_QEMU_JOBS (default 2),
# PCR_QEMU_ONLY=stock|patched (build/test one side only, for development).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${PCR_QEMU_CACHE:-/var/cache/postcopy-ram-qemu}
JOBS=${PCR_QEMU_JOBS:-2}
ONLY=${PCR_QEMU_ONLY:-}
OUT=$ROOT/target/qemu
LOGS=$OUT/logs
# What the check cannot do without: KVM (the qtests and guests run under it, QEMU is built
# with --disable-tcg), root (apt installs, the build cache) and userfaultfd (postcopy).
skip() {
  echo "SKIP: the QEMU check needs $1"
  echo "0 passed, 0 failed"
  exit 0
}
[ -w /dev/kvm ] || skip "/dev/kvm (KVM), which this host does not offer"
[ "$(id -u)" = 0 ] || skip "root (apt installs Debian's QEMU build dependencies)"
grep -q . /proc/sys/vm/unprivileged_userfaultfd 2>/dev/null || [ -e /dev/userfaultfd ] ||
  skip "userfaultfd, which this kernel does not offer"
mkdir -p "$CACHE" "$OUT" "$LOGS"
# One check at a time per cache: the builds, the library prefix and the qtests' binaries are
# shared by every clone that uses it. (fd 9 is closed for the tests: a QEMU left behind by a
# failed test must not keep the lock.)
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
  echo "waiting for another qemu-check using $CACHE"
  flock 9
fi
# shellcheck source=scripts/qemu/lib.sh
. "$ROOT/scripts/qemu/lib.sh"

t_start=$(date +%s)
pass=0
fail=0
record() { # name status seconds
  if [ "$2" = ok ]; then pass=$((pass + 1)); echo "ok   $1 (${3}s)"; else fail=$((fail + 1)); echo "FAIL $1 (${3}s)"; fi
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$OUT/results.tsv"
}
: >"$OUT/results.tsv"

echo "== dependencies"
qemu_install_deps

echo "== source (Debian bookworm qemu 7.2)"
SRC=$(qemu_fetch_source)
echo "source: $SRC"

if [ "$ONLY" != patched ]; then
  echo "== stock build"
  qemu_build stock "$SRC"
  install -m 0755 "$CACHE/stock/build/qemu-system-x86_64" "$OUT/qemu-system-x86_64.stock"
fi
if [ "$ONLY" != stock ]; then
  echo "== library (CMake, into $CACHE/pcr-prefix)"
  pcr_install_library
  echo "== patched build"
  qemu_build patched "$SRC"
  install -m 0755 "$CACHE/patched/build/qemu-system-x86_64" "$OUT/qemu-system-x86_64"
fi

QTESTS="postcopy/plain postcopy/recovery/plain postcopy/preempt/plain postcopy/preempt/recovery/plain postcopy/tls/psk"
for side in stock patched; do
  [ -n "$ONLY" ] && [ "$ONLY" != "$side" ] && continue
  echo "== QEMU's postcopy qtests against the $side build"
  for t in $QTESTS; do
    s=$(date +%s)
    if qemu_run_qtest "$side" "$t" 9>&- >"$LOGS/qtest-$side-${t//\//-}.log" 2>&1; then st=ok; else st=fail; fi
    record "qtest $side /x86_64/migration/$t" "$st" $(($(date +%s) - s))
    [ "$st" = ok ] || qemu_qtest_failure_summary "$LOGS/qtest-$side-${t//\//-}.log" | sed 's/^/    /'
  done
done

if [ -z "$ONLY" ] || [ "$ONLY" = patched ]; then
  echo "== recovery with the postcopy bandwidth capped (library counters)"
  s=$(date +%s)
  if python3 "$ROOT/scripts/qemu/qmp_migrate.py" recovery \
      --src "$OUT/qemu-system-x86_64" --dst "$OUT/qemu-system-x86_64" \
      --logdir "$LOGS/recovery" 9>&- >"$LOGS/recovery.log" 2>&1; then st=ok; else st=fail; fi
  record "capped recovery: every pending request re-sent" "$st" $(($(date +%s) - s))
  sed 's/^/    /' "$LOGS/recovery.log" | tail -15
fi

echo "== interop with Debian's qemu-system-x86 7.2 (KVM guest writing memory, QMP postcopy)"
DEB=/usr/bin/qemu-system-x86_64
pairs="debian:debian"
[ "$ONLY" != stock ] && pairs="$pairs debian:patched patched:debian"
[ "$ONLY" != patched ] && pairs="$pairs debian:stock"
for p in $pairs; do
  a=${p%%:*}
  b=${p##*:}
  s=$(date +%s)
  if python3 "$ROOT/scripts/qemu/qmp_migrate.py" interop \
      --src "$(qemu_binary "$a")" --dst "$(qemu_binary "$b")" \
      --logdir "$LOGS/interop-$a-$b" 9>&- >"$LOGS/interop-$a-$b.log" 2>&1; then st=ok; else st=fail; fi
  record "interop $a -> $b" "$st" $(($(date +%s) - s))
  [ "$st" = ok ] || tail -15 "$LOGS/interop-$a-$b.log" | sed 's/^/    /'
done

if [ -z "$ONLY" ]; then
  echo "== a migration that ends in precopy reports postcopy-blocktime as stock 7.2 does"
  s=$(date +%s)
  st=ok
  for b in stock patched; do
    python3 "$ROOT/scripts/qemu/qmp_migrate.py" precopy-only --src "$(qemu_binary stock)" \
      --dst "$(qemu_binary "$b")" --logdir "$LOGS/precopy-only-$b" 9>&- >"$LOGS/precopy-only-$b.log" 2>&1 || st=fail
    echo "    stock -> $b: $(tail -1 "$LOGS/precopy-only-$b.log")"
  done
  [ "$st" = ok ] && [ "$(tail -1 "$LOGS/precopy-only-stock.log")" = "$(tail -1 "$LOGS/precopy-only-patched.log")" ] || st=fail
  record "precopy-only finish: destination's postcopy-blocktime as stock's" "$st" $(($(date +%s) - s))
fi

echo "qemu-check took $(($(date +%s) - t_start))s; logs in $LOGS"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
