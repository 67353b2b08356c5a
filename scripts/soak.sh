#!/usr/bin/env bash
# Soak test (not part of scripts/test.sh): 16 faulting threads and at least 1 million
# userfaultfd faults over every block kind (private and shared anonymous, memfd, hugetlbfs
# memfd, private anonymous hugetlb), with requested-page servers, a background placer and
# a duplicate placer racing throughout; every page checked and the counters reconciled at
# the end of every round. See tests/soak.rs.
#
#   bash scripts/soak.sh
#
# Environment: PCR_SOAK_FAULTS (default 1000000), PCR_SOAK_SECONDS (the test's own
# watchdog deadline, default 570). Holds /tmp/pcr-test.lock while it runs (the test raises
# vm.nr_hugepages; this script puts the old value back whatever happens) and kills the test
# after 600 s, so nothing can hang. Prints the figures on its last `soak:` line.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --release --test soak --no-run

exec 9>/tmp/pcr-test.lock
flock 9
hugepages=/proc/sys/vm/nr_hugepages
old=$(cat "$hugepages" 2>/dev/null || echo "")
restore() {
    if [ -n "$old" ] && [ "$(cat "$hugepages")" != "$old" ]; then
        echo "$old" >"$hugepages" || true
    fi
}
trap restore EXIT

start=$(date +%s)
status=0
timeout --kill-after=10 600 \
    cargo test --release --test soak -- --ignored --nocapture --test-threads=1 || status=$?
echo "soak: exit $status after $(($(date +%s) - start)) s (vm.nr_hugepages back to ${old:-?})"
exit $status
