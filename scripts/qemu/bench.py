#!/usr/bin/env python3
"""Side by side: the same postcopy migration into the stock QEMU 7.2 destination and into
the patched one (libpostcopy_ram), from the stock source, alternating, ROUNDS times each.
The guest (scripts/qemu/guest.py) keeps sweeping its memory; the migration goes to
postcopy at once, so all of its RAM arrives in postcopy, requested or pushed.

  python3 scripts/qemu/bench.py --stock BIN --patched BIN [--rounds 5] [--mem 128]
                                [--postcopy-bandwidth BYTES_PER_S]

With the push unlimited, how many pages the guest faults on depends on where its sweep is
when postcopy starts (from none to thousands, either build); with the push capped low
(--postcopy-bandwidth 8388608, say) the guest runs ahead of it and pulls most of its memory
through faults in every run, which compares the request paths of the two destinations.

Per destination, medians over the rounds of: total time and downtime (source's
query-migrate), postcopy blocktime (destination's query-migrate, postcopy-blocktime on),
and, from separate traced runs, the fault latency (first request of a page to its
placement, from QEMU's trace events). Prints a Markdown table with the ratio
patched/stock (at most 1.0 means the patched destination is no slower).

Not like for like (BENCHMARKS.md, "Inside QEMU 7.2"): the fault latency rows time
different intervals in the two builds (stock traces every fault its fault thread reads,
the patched build only the requests it sends), and total time and blocktime grow with the
number of pages a run faults on, which depends on where the guest's sweep is when
postcopy starts; compare blocktime per page request (blocktime_ms / postcopy_requests of
the per-round lines) instead.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def one(src, dst, logdir, mem, trace, bandwidth):
    cmd = [sys.executable, os.path.join(HERE, "qmp_migrate.py"), "bench", "--src", src,
           "--dst", dst, "--logdir", logdir, "--mem", str(mem),
           "--postcopy-bandwidth", str(bandwidth)] + (["--trace"] if trace else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError("%s failed:\n%s%s" % (" ".join(cmd), r.stdout, r.stderr))
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stock", required=True)
    ap.add_argument("--patched", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mem", type=int, default=128)
    ap.add_argument("--logdir", default="target/qemu/logs/bench")
    ap.add_argument("--postcopy-bandwidth", type=int, default=0,
                    help="max-postcopy-bandwidth in bytes/s (0: unlimited); a low cap makes "
                    "the guest pull most of its memory through faults")
    args = ap.parse_args()
    res = {"stock": [], "patched": []}
    lat = {"stock": [], "patched": []}
    print("load average at start: %s" % open("/proc/loadavg").read().split()[:3],
          file=sys.stderr, flush=True)
    for r in range(args.rounds):
        # The order alternates between rounds, so that a drift of the machine's load
        # favours neither side.
        for side in (("stock", "patched") if r % 2 == 0 else ("patched", "stock")):
            d = os.path.join(args.logdir, side)
            os.makedirs(d, exist_ok=True)
            dst = getattr(args, side)
            m = one(args.stock, dst, d, args.mem, False, args.postcopy_bandwidth)
            res[side].append(m)
            t = one(args.stock, dst, d, args.mem, True, args.postcopy_bandwidth)
            if t.get("fault_latency"):
                lat[side].append(t["fault_latency"])
            print("round %d %-7s %s | traced: %s" % (r + 1, side, json.dumps(m),
                                                     json.dumps(t.get("fault_latency"))),
                  file=sys.stderr, flush=True)

    def med(side, key):
        vals = [m[key] for m in res[side] if m.get(key) is not None]
        return statistics.median(vals) if vals else None

    def lmed(side, key):
        vals = [x[key] for x in lat[side]]
        return statistics.median(vals) if vals else None

    rows = [("total time (ms)", med("stock", "total_ms"), med("patched", "total_ms")),
            ("downtime (ms)", med("stock", "downtime_ms"), med("patched", "downtime_ms")),
            ("postcopy blocktime (ms)", med("stock", "blocktime_ms"),
             med("patched", "blocktime_ms")),
            ("page requests (source)", med("stock", "postcopy_requests"),
             med("patched", "postcopy_requests")),
            ("fault latency p50 (us)", lmed("stock", "p50_us"), lmed("patched", "p50_us")),
            ("fault latency p99 (us)", lmed("stock", "p99_us"), lmed("patched", "p99_us")),
            ("fault latency mean (us)", lmed("stock", "mean_us"), lmed("patched", "mean_us"))]
    def per_round(key):
        """patched/stock of each round (the two runs of a round are back to back)."""
        rs = [b[key] / a[key] for a, b in zip(res["stock"], res["patched"])
              if a.get(key) and b.get(key) is not None]
        if not rs:
            return "n/a"
        return "%.2f [%.2f-%.2f]" % (statistics.median(rs), min(rs), max(rs))

    def total(side, key):
        return sum(m[key] for m in res[side] if m.get(key) is not None)

    print("postcopy push: %s" % ("unlimited" if not args.postcopy_bandwidth else
                                 "capped at %d bytes/s" % args.postcopy_bandwidth))
    print("| %d rounds, guest %d MiB | stock 7.2: median | patched: median | patched/stock: "
          "ratio of medians | per round: median [min-max] | sum over rounds |" % (
              args.rounds, args.mem))
    print("|---|---:|---:|---:|---:|---:|")
    keys = {"total time (ms)": "total_ms", "downtime (ms)": "downtime_ms",
            "postcopy blocktime (ms)": "blocktime_ms",
            "page requests (source)": "postcopy_requests"}
    for name, a, b in rows:
        ratio = "%.2f" % (b / a) if a and b is not None else "n/a"
        fa = "%.0f" % a if a is not None else "n/a"
        fb = "%.0f" % b if b is not None else "n/a"
        k = keys.get(name)
        pr = per_round(k) if k else "-"
        sums = "%.2f" % (total("patched", k) / total("stock", k)) if k and total(
            "stock", k) else "-"
        print("| %s | %s | %s | %s | %s | %s |" % (name, fa, fb, ratio, pr, sums))


if __name__ == "__main__":
    main()
