#!/bin/sh
# ctest e2e.kvm_migration: a postcopy migration whose destination workload is a KVM guest
# running on the migrating RAM (pure postcopy: every page reaches the guest through a vCPU
# fault that the library serves). Exit 77 (skip) without KVM or userfaultfd.
migrate="$1"
if [ ! -x "$migrate" ]; then
    echo "FAIL: $migrate was not built"; exit 1
fi
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo "SKIP: /dev/kvm is missing or not accessible"; exit 77
fi
out=$("$migrate" --kvm --size 64M --precopy-rounds 0 --quiet 2>&1)
rc=$?
echo "$out"
# Skips only on the command's own refusal to start (its first check), never on other words
# of a failed run's output.
if [ $rc -ne 0 ]; then
    case "$out" in
        "postcopy-migrate: --kvm: "*) echo "SKIP: KVM unusable here"; exit 77 ;;
        "postcopy-migrate: this host cannot do postcopy: "*) echo "SKIP: userfaultfd unusable here"; exit 77 ;;
    esac
fi
[ $rc -eq 0 ] || { echo "FAIL: exit status $rc"; exit 1; }
echo "$out" | grep -q "KVM guest checksum .* MATCH" || { echo "FAIL: guest checksum"; exit 1; }
echo "$out" | grep -q "memory checksum .*: MATCH" || { echo "FAIL: memory checksum"; exit 1; }
faults=$(echo "$out" | awk '/^destination library/ {print $3}')
[ "${faults:-0}" -gt 0 ] || { echo "FAIL: no vCPU fault reached the library"; exit 1; }
echo "PASS: $faults vCPU faults served"
