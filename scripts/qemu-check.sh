#!/usr/bin/env bash
# QEMU 7.2 with migration/postcopy-ram.c replaced by integrations/qemu-7.2/postcopy-ram.c
# (a thin shim over libpostcopy_ram), checked against an unpatched build of the same source
# and against Debian's own qemu-system-x86 7.2.
#
#   bash scripts/qemu-check.sh
#
# Steps (the builds cached, so a second run rebuilds nothing):
#   1. build dependencies and Debian's qemu-system-x86 7.2 (apt, root);
#   2. Debian bookworm's qemu source (apt-get source, deb-src enabled through a private
#      sources file and lists directory: the machine's apt configuration is not touched);
#   3. the stock build and the patched build (ninja -j2), outside the clone, under
#      $PCR_QEMU_CACHE (default /var/cache/postcopy-ram-qemu); the library is installed by
#      CMake into a prefix there and linked through its pkg-config file; the patched build
#      compiles the shim with its test instrumentation on (PCR_QEMU_CHECK);
#   4. every postcopy qtest that 7.2's migration-test registers (eight, listed from its
#      source) against the patched build, each passed only when its TAP output shows it ran
#      (plan 1..1, "ok 1 <path>", no SKIP); the shipped shim compiled without the
#      instrumentation and checked to hold none of it; a bandwidth-capped recovery whose
#      library counters show every pending request re-sent; the migration failing cleanly
#      (source guest running on) when the library returns NULL for the source's discards
#      (LD_PRELOAD) and when a vhost-user-style shared userfaultfd is registered at ADVISE;
#      interop with Debian's binary both ways (KVM guest writing memory, postcopy driven
#      through QMP, pages requested in postcopy), and a migration that ends in precopy
#      reporting postcopy-blocktime as the stock build does.
# A step that fails against the patched build is run against the stock build (where it has
# a stock counterpart): if it fails there too, it counts as skipped, with the stock build's
# output shown, not as passed nor failed.
# Leaves target/qemu/qemu-system-x86_64 (patched) and target/qemu/qemu-system-x86_64.stock.
# Ends with one line "N passed, M failed, K skipped" ("0 passed, 0 failed, 1 skipped" after
# a SKIP line on a host without KVM, root or a userfaultfd this process can open).
#
# Environment: PCR_QEMU_CACHE (cache dir), PCR_QEMU_JOBS (default 2),
# PCR_QEMU_STEPS=REGEX (development: run only the steps whose names match; the others are
# neither run nor counted).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${PCR_QEMU_CACHE:-/var/cache/postcopy-ram-qemu}
JOBS=${PCR_QEMU_JOBS:-2}
STEPS=${PCR_QEMU_STEPS:-}
OUT=$ROOT/target/qemu
LOGS=$OUT/logs
# What the check cannot do without: KVM (the qtests and guests run under it, QEMU is built
# with --disable-tcg), root (apt installs, the build cache) and a userfaultfd (postcopy;
# 7.2's migration-test registers its postcopy tests only when it can open one): probed by
# opening one as migration-test does (scripts/qemu/uffd_probe.py), not by a sysctl file.
skip() {
  echo "SKIP: the QEMU check needs $1"
  echo "0 passed, 0 failed, 1 skipped"
  exit 0
}
[ -w /dev/kvm ] || skip "/dev/kvm (KVM), which this host does not offer"
[ "$(id -u)" = 0 ] || skip "root (apt installs Debian's QEMU build dependencies)"
uffd=$(python3 "$ROOT/scripts/qemu/uffd_probe.py" 2>&1) ||
  skip "a userfaultfd, which this process cannot open: $uffd"
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
skipped=0
record() { # name ok|fail|skip seconds [reason]
  case $2 in
    ok) pass=$((pass + 1)); echo "ok   $1 (${3}s)" ;;
    skip) skipped=$((skipped + 1)); echo "SKIP $1 (${3}s): $4" ;;
    *) fail=$((fail + 1)); echo "FAIL $1 (${3}s)${4:+: $4}" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$OUT/results.tsv"
}
selected() { [ -z "$STEPS" ] || [[ $1 =~ $STEPS ]]; }
: >"$OUT/results.tsv"
echo "userfaultfd: $uffd"

echo "== dependencies"
qemu_install_deps

echo "== source (Debian bookworm qemu 7.2)"
SRC=$(qemu_fetch_source)
echo "source: $SRC"

echo "== stock build"
qemu_build stock "$SRC"
install -m 0755 "$CACHE/stock/build/qemu-system-x86_64" "$OUT/qemu-system-x86_64.stock"
echo "== library (CMake, into $CACHE/pcr-prefix)"
pcr_install_library
echo "== patched build"
qemu_build patched "$SRC"
install -m 0755 "$CACHE/patched/build/qemu-system-x86_64" "$OUT/qemu-system-x86_64"

# A migration step (qmp_migrate.py MODE) between two binaries; its output in $LOGS/NAME.log.
migrate_step() { # mode src dst logname [args...]
  local mode=$1 a=$2 b=$3 name=$4
  shift 4
  python3 "$ROOT/scripts/qemu/qmp_migrate.py" "$mode" --src "$(qemu_binary "$a")" \
    --dst "$(qemu_binary "$b")" --logdir "$LOGS/$name" "$@" 9>&- >"$LOGS/$name.log" 2>&1
}

mapfile -t QTESTS < <(qemu_postcopy_qtests "$SRC")
echo "== QEMU's postcopy qtests (${#QTESTS[@]} registered by 7.2's migration-test.c) against the patched build"
[ ${#QTESTS[@]} -gt 0 ] || record "postcopy qtests listed from migration-test.c" fail 0 "none found"
for t in "${QTESTS[@]}"; do
  name="qtest /x86_64/migration/$t"
  selected "$name" || continue
  s=$(date +%s)
  log=$LOGS/qtest-patched-${t//\//-}.log
  v=$(qemu_qtest patched "$t" "$log")
  if [ "$v" = ok ]; then
    record "$name" ok $(($(date +%s) - s))
  elif [ "${v%%:*}" = skip ]; then
    record "$name" skip $(($(date +%s) - s)) "${v#skip: }"
  else
    # The same case against the stock build: a failure there too is not the shim's.
    slog=$LOGS/qtest-stock-${t//\//-}.log
    sv=$(qemu_qtest stock "$t" "$slog")
    if [ "$sv" != ok ]; then
      record "$name" skip $(($(date +%s) - s)) "fails on the stock build too (patched: ${v#fail: }; stock: ${sv#*: }); stock's output:"
      qemu_qtest_failure_summary "$slog" | sed 's/^/    /'
    else
      record "$name" fail $(($(date +%s) - s)) "${v#fail: } (passes on the stock build)"
      qemu_qtest_failure_summary "$log" | sed 's/^/    /'
    fi
  fi
done

name="shipped shim: no test instrumentation (PCR_QEMU_CHECK off)"
if selected "$name"; then
  echo "== the shim as shipped, compiled without the check's instrumentation"
  s=$(date +%s)
  st=ok why=
  if ! inst=$(qemu_compile_shipped_shim "$OUT/shipped-postcopy-ram.o" 2>"$LOGS/shipped-shim.log"); then
    st=fail why="does not compile: $(tail -3 "$LOGS/shipped-shim.log" | tr '\n' ' ')"
  else
    for w in PCR_QEMU_STATS PCR_QEMU_FAKE_SHARED_UFD; do
      # The instrumented object holds the string (so the search can find it), the shipped none.
      echo "    $w: $(grep -a -c "$w" "$inst") in the check's build, $(grep -a -c "$w" "$OUT/shipped-postcopy-ram.o") in the shipped shim"
      grep -a -q "$w" "$inst" || { st=fail why="${why:+$why; }$w not even in the instrumented build's object"; }
      ! grep -a -q "$w" "$OUT/shipped-postcopy-ram.o" || { st=fail why="${why:+$why; }$w in the shipped shim's object"; }
    done
  fi
  record "$name" "$st" $(($(date +%s) - s)) "$why"
fi

name="capped recovery: every pending request re-sent"
if selected "$name"; then
  echo "== recovery with the postcopy bandwidth capped (library counters)"
  s=$(date +%s)
  if migrate_step recovery patched patched recovery; then st=ok; else st=fail; fi
  record "$name" "$st" $(($(date +%s) - s))
  sed 's/^/    /' "$LOGS/recovery.log" | tail -15
fi

echo "== failures that must fail the migration cleanly (the source's guest runs on)"
preload_built=
# pcr_discard_send_init fails for the guest RAM block only: the other blocks' discards go
# out, so nothing but the shim can notice the missing ones.
for call in pcr_source_new pcr_discard_send_init; do
  name="source: $call returning NULL fails the migration"
  selected "$name" || continue
  s=$(date +%s)
  [ -n "$preload_built" ] || gcc -shared -fPIC -Wall -Wextra -Werror -I"$CACHE/pcr-prefix/include" \
    -o "$OUT/pcr_fail_preload.so" "$ROOT/scripts/qemu/pcr_fail_preload.c" -ldl
  preload_built=1
  extra=()
  [ "$call" = pcr_discard_send_init ] && extra=(--fail-block pc.ram)
  if migrate_step discard-fails patched patched "fail-$call" --fail "$call" \
    --preload "$OUT/pcr_fail_preload.so" "${extra[@]}"; then st=ok; else st=fail; fi
  record "$name" "$st" $(($(date +%s) - s))
  tail -6 "$LOGS/fail-$call.log" | sed 's/^/    /'
done
name="destination: a shared (vhost-user) userfaultfd is refused at ADVISE"
if selected "$name"; then
  s=$(date +%s)
  if migrate_step shared-ufd-refused stock patched shared-ufd; then st=ok; else st=fail; fi
  record "$name" "$st" $(($(date +%s) - s))
  tail -6 "$LOGS/shared-ufd.log" | sed 's/^/    /'
fi

echo "== interop with Debian's qemu-system-x86 7.2 (KVM guest writing memory, QMP postcopy)"
# Each against the patched build; its stock counterpart runs only when it fails.
for p in debian:patched patched:debian; do
  a=${p%%:*}
  b=${p##*:}
  name="interop $a -> $b"
  selected "$name" || continue
  s=$(date +%s)
  if migrate_step interop "$a" "$b" "interop-$a-$b"; then
    record "$name" ok $(($(date +%s) - s))
    grep -E 'completed|inconclusive' "$LOGS/interop-$a-$b.log" | sed 's/^/    /'
  else
    sa=${a/patched/stock} sb=${b/patched/stock}
    if ! migrate_step interop "$sa" "$sb" "interop-$sa-$sb"; then
      record "$name" skip $(($(date +%s) - s)) "fails with the stock build too ($sa -> $sb); its output:"
      tail -15 "$LOGS/interop-$sa-$sb.log" | sed 's/^/    /'
    else
      record "$name" fail $(($(date +%s) - s)) "passes with the stock build ($sa -> $sb)"
      tail -15 "$LOGS/interop-$a-$b.log" | sed 's/^/    /'
    fi
  fi
done

name="precopy-only finish: destination's postcopy-blocktime as stock's"
if selected "$name"; then
  echo "== a migration that ends in precopy reports postcopy-blocktime as stock 7.2 does"
  s=$(date +%s)
  st=ok stock_st=ok why=
  migrate_step precopy-only stock stock precopy-only-stock || stock_st=fail
  migrate_step precopy-only stock patched precopy-only-patched || st=fail
  for b in stock patched; do
    echo "    stock -> $b: $(tail -1 "$LOGS/precopy-only-$b.log")"
  done
  if [ "$stock_st" = fail ]; then
    [ "$st" = ok ] || why="fails with the stock destination too"
    [ "$st" = ok ] && why="the stock destination (the reference) fails"
    st=skip
  elif [ "$st" = ok ] && [ "$(tail -1 "$LOGS/precopy-only-stock.log")" != "$(tail -1 "$LOGS/precopy-only-patched.log")" ]; then
    st=fail why="the two destinations report different figures"
  fi
  record "$name" "$st" $(($(date +%s) - s)) "$why"
fi

echo "qemu-check took $(($(date +%s) - t_start))s; logs in $LOGS"
echo "$pass passed, $fail failed, $skipped skipped"
[ "$fail" -eq 0 ]
