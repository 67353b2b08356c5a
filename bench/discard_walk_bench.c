/*
 * Benchmark: the library's discard walk (pcr_discard_walk, through the C ABI) against a
 * plain C word scan doing the same job, in the same run, alternating.
 *
 * The job: the dirty-or-unsent bitmap of a 64 GiB guest with 4 KiB pages (16 Mi bits,
 * 2 MiB of bitmap); canonicalise to host pages (host ratio 1 or 512), then report every run
 * of set bits through a callback. The C side is written the way QEMU's ram.c walks its
 * bitmaps: find_next_bit / find_next_zero_bit over 64-bit words (skipping zero words,
 * ctz on the first interesting one), and a per-host-page canonicalisation pass.
 *
 * Both sides get a fresh copy of the pattern before each timed call (not timed), call the
 * same callback through a function pointer, and must produce the same run count, the same
 * checksum of (start, npages) and the same canonicalised bitmap.
 *
 * Build and run: see bench/README-discard-walk.md. Exit status 0 when both sides agree on
 * every pattern, 1 otherwise.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "postcopy_ram.h"

#define NBITS ((size_t)1 << 24) /* 64 GiB / 4 KiB */
#define NWORDS (NBITS / 64)
#define ROUNDS 21

/* ---- the plain C word scan ---------------------------------------------------------- */

static size_t find_next_bit(const uint64_t *bm, size_t nbits, size_t from)
{
    size_t nwords = (nbits + 63) / 64, w, r;
    uint64_t cur;
    if (from >= nbits) {
        return nbits;
    }
    w = from / 64;
    cur = bm[w] & (~0ull << (from % 64));
    while (!cur) {
        if (++w >= nwords) {
            return nbits;
        }
        cur = bm[w];
    }
    r = w * 64 + (size_t)__builtin_ctzll(cur);
    return r < nbits ? r : nbits;
}

static size_t find_next_zero_bit(const uint64_t *bm, size_t nbits, size_t from)
{
    size_t nwords = (nbits + 63) / 64, w, r;
    uint64_t cur;
    if (from >= nbits) {
        return nbits;
    }
    w = from / 64;
    cur = ~bm[w] & (~0ull << (from % 64));
    while (!cur) {
        if (++w >= nwords) {
            return nbits;
        }
        cur = ~bm[w];
    }
    r = w * 64 + (size_t)__builtin_ctzll(cur);
    return r < nbits ? r : nbits;
}

/* Makes every host page of `ratio` pages with any page set wholly set. */
static void c_canonicalise(uint64_t *bm, size_t nbits, size_t ratio)
{
    size_t nwords = (nbits + 63) / 64, w, i;
    uint64_t tail = nbits % 64 ? (1ull << (nbits % 64)) - 1 : ~0ull;
    if (ratio == 1 || nwords == 0) {
        return;
    }
    if (ratio >= 64) {
        size_t g = ratio / 64;
        /* Whole groups of g words first, then the last (maybe partial) group. */
        size_t full_groups = (nwords - 1) / g;
        for (w = 0; w < full_groups * g; w += g) {
            uint64_t any = 0, all = ~0ull;
            for (i = w; i < w + g; i++) {
                any |= bm[i];
                all &= bm[i];
            }
            if (any && all != ~0ull) {
                for (i = w; i < w + g; i++) {
                    bm[i] = ~0ull;
                }
            }
        }
        {
            uint64_t any = 0;
            for (i = w; i < nwords; i++) {
                any |= i == nwords - 1 ? bm[i] & tail : bm[i];
            }
            if (any) {
                for (i = w; i < nwords; i++) {
                    bm[i] |= i == nwords - 1 ? tail : ~0ull;
                }
            }
        }
        return;
    }
    for (w = 0; w < nwords; w++) {
        uint64_t v = bm[w], lane = (1ull << ratio) - 1, out = v;
        unsigned s;
        if (v == 0 || v == ~0ull) {
            continue;
        }
        for (s = 0; s < 64; s += (unsigned)ratio) {
            if (v & (lane << s)) {
                out |= lane << s;
            }
        }
        if (w == nwords - 1) {
            out = (v & ~tail) | (out & tail);
        }
        bm[w] = out;
    }
}

typedef int (*walk_cb)(void *opaque, uint64_t start, uint64_t npages);

__attribute__((noinline)) static int c_walk(uint64_t *bm, size_t nbits, size_t ratio, walk_cb cb, void *opaque)
{
    size_t from = 0;
    c_canonicalise(bm, nbits, ratio);
    for (;;) {
        size_t s = find_next_bit(bm, nbits, from), e;
        int rc;
        if (s >= nbits) {
            return 0;
        }
        e = find_next_zero_bit(bm, nbits, s + 1);
        rc = cb(opaque, s, e - s);
        if (rc) {
            return rc;
        }
        from = e;
    }
}

/* ---- shared callback, patterns, timing ------------------------------------------------- */

struct tally {
    uint64_t runs;
    uint64_t checksum;
};

static int count_run(void *opaque, uint64_t start, uint64_t npages)
{
    struct tally *t = opaque;
    t->runs++;
    t->checksum = (t->checksum ^ start) * 0x100000001b3ull + npages;
    return 0;
}

/* Through a volatile pointer, so neither side gets the callback inlined. */
static walk_cb volatile callback = count_run;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static void set_range(uint64_t *bm, size_t from, size_t len)
{
    size_t i;
    for (i = from; i < from + len && i < NBITS; i++) {
        bm[i / 64] |= 1ull << (i % 64);
    }
}

/* Alternating runs and gaps with lengths uniform in 1..max_len. */
static void pattern_runs(uint64_t *bm, size_t max_len)
{
    size_t i = 0;
    int set = 0;
    memset(bm, 0, NWORDS * 8);
    while (i < NBITS) {
        size_t len = 1 + (size_t)(rng() % max_len);
        if (set) {
            set_range(bm, i, len);
        }
        set = !set;
        i += len;
    }
}

/* Each page set with probability 1 / one_in. */
static void pattern_scattered(uint64_t *bm, uint64_t one_in)
{
    size_t i;
    memset(bm, 0, NWORDS * 8);
    for (i = 0; i < NBITS; i++) {
        if (rng() % one_in == 0) {
            bm[i / 64] |= 1ull << (i % 64);
        }
    }
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return v[n / 2];
}

/* Times both walks on `pattern`; returns 0 when they agree. */
static int bench(const char *name, const uint64_t *pattern, size_t ratio)
{
    static uint64_t work_lib[NWORDS], work_c[NWORDS];
    double t_lib[ROUNDS], t_c[ROUNDS];
    struct tally lib = {0, 0}, c = {0, 0};
    int round, ok = 1;

    for (round = 0; round < ROUNDS; round++) {
        int side;
        for (side = 0; side < 2; side++) {
            /* Alternate which side goes first. */
            int do_lib = (side == 0) == (round % 2 == 0);
            double t0, t1;
            int rc;
            if (do_lib) {
                struct tally t = {0, 0};
                memcpy(work_lib, pattern, sizeof(work_lib));
                t0 = now_us();
                rc = pcr_discard_walk(work_lib, NBITS, ratio, callback, &t);
                t1 = now_us();
                t_lib[round] = t1 - t0;
                lib = t;
            } else {
                struct tally t = {0, 0};
                memcpy(work_c, pattern, sizeof(work_c));
                t0 = now_us();
                rc = c_walk(work_c, NBITS, ratio, callback, &t);
                t1 = now_us();
                t_c[round] = t1 - t0;
                c = t;
            }
            if (rc != 0) {
                printf("%s: walk returned %d\n", name, rc);
                ok = 0;
            }
        }
    }
    if (lib.runs != c.runs || lib.checksum != c.checksum) {
        printf("MISMATCH %s ratio %zu: library %llu runs (checksum %016llx), C %llu runs (checksum %016llx)\n", name,
               ratio, (unsigned long long)lib.runs, (unsigned long long)lib.checksum, (unsigned long long)c.runs,
               (unsigned long long)c.checksum);
        ok = 0;
    }
    if (memcmp(work_lib, work_c, sizeof(work_lib)) != 0) {
        printf("MISMATCH %s ratio %zu: canonicalised bitmaps differ\n", name, ratio);
        ok = 0;
    }
    {
        double ml = median(t_lib, ROUNDS), mc = median(t_c, ROUNDS);
        printf("%-22s ratio %3zu  runs %8llu  checksum %016llx %s  library %9.1f us  C %9.1f us  library/C %.2f\n",
               name, ratio, (unsigned long long)lib.runs, (unsigned long long)lib.checksum, ok ? "same" : "DIFF", ml,
               mc, ml / mc);
    }
    return ok ? 0 : 1;
}

int main(void)
{
    static uint64_t pattern[NWORDS];
    int bad = 0;

    printf("discard walk over %zu pages (%zu KiB of bitmap), median of %d alternating rounds\n", NBITS,
           NWORDS * 8 / 1024, ROUNDS);

    pattern_runs(pattern, 1u << 19); /* few long runs: ~64 runs of ~256 Ki pages */
    bad |= bench("few long runs", pattern, 1);
    bad |= bench("few long runs", pattern, 512);

    pattern_runs(pattern, 128); /* many runs: ~260 Ki runs of 1..128 pages */
    bad |= bench("many runs", pattern, 1);
    bad |= bench("many runs", pattern, 512);

    pattern_scattered(pattern, 64); /* scattered single pages: ~256 Ki of them */
    bad |= bench("scattered pages", pattern, 1);

    pattern_scattered(pattern, 4096); /* sparse: ~4 Ki pages, ~12% of 2 MiB host pages */
    bad |= bench("sparse scattered pages", pattern, 1);
    bad |= bench("sparse scattered pages", pattern, 512);

    printf(bad ? "RESULT: library and C walks DISAGREE\n" : "RESULT: library and C walks agree on every pattern\n");
    return bad;
}
