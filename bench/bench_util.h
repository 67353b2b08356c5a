/*
 * Shared helpers of the postcopy-ram benchmarks (bench/fault_rtt.c, bench/place_bench.c):
 * clock, statistics, table rows, a raw userfaultfd, and the library's normal setup
 * sequence for one anonymous RAM block.
 *
 * Header-only on purpose: each benchmark is one `cc` command (see scripts/bench.sh).
 * Nothing here asserts on timings; failures of a placement or a setup step abort the
 * program with a message, because the numbers would be meaningless.
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "postcopy_ram.h"

#ifndef MAP_HUGETLB
#define MAP_HUGETLB 0x40000
#endif
#ifndef USERFAULTFD_IOC_NEW /* linux/userfaultfd.h before 6.1 */
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

#define KiB (1024UL)
#define MiB (1024UL * 1024UL)

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* ---------------------------------------------------------------- statistics */

static inline int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Percentile p (0..100) of v[0..n) by linear interpolation between closest ranks.
 * Sorts a copy; v is left alone. */
static inline double percentile(const double *v, size_t n, double p)
{
    if (n == 0)
        return 0.0;
    double *s = malloc(n * sizeof *s);
    if (!s)
        die("out of memory");
    memcpy(s, v, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_double);
    double rank = p / 100.0 * (double)(n - 1);
    size_t lo = (size_t)rank;
    size_t hi = lo + 1 < n ? lo + 1 : lo;
    double r = s[lo] + (s[hi] - s[lo]) * (rank - (double)lo);
    free(s);
    return r;
}

static inline double median(const double *v, size_t n) { return percentile(v, n, 50.0); }

/* ------------------------------------------------------------------- table */

/* One row of the results table (all columns are filled from per-round values):
 *   | benchmark | unit | library median [p10-p90] | baseline | baseline median [p10-p90]
 *   | ratio median [p10-p90] | target | result |
 * `lib[i]` and `base[i]` are the values of round i (measured back to back, alternating).
 * The ratio is computed per round pair, lib[i]/base[i], then summarised, so that slow
 * drifts of the VM hit both sides of a pair alike. `higher_better` is 1 for throughput
 * (ratio = lib/base throughput, target is a minimum) and 0 for latency (ratio = lib/base
 * time, target is a maximum). `target` <= 0 means "no target" (information only). */
static inline void print_row(const char *name, const char *unit, const double *lib, const char *base_name,
                      const double *base, size_t rounds, int higher_better, double target)
{
    double *ratio = malloc(rounds * sizeof *ratio);
    if (!ratio)
        die("out of memory");
    for (size_t i = 0; i < rounds; i++)
        ratio[i] = base[i] != 0 ? lib[i] / base[i] : 0;
    double rm = median(ratio, rounds);
    char tgt[32] = "-", res[16] = "info";
    if (target > 0) {
        snprintf(tgt, sizeof tgt, "%s %.2fx", higher_better ? ">=" : "<=", target);
        int ok = higher_better ? rm >= target : rm <= target;
        snprintf(res, sizeof res, "%s", ok ? "PASS" : "MISS");
    }
    printf("| %-34s | %-8s | %9.3f [%.3f-%.3f] | %-22s | %9.3f [%.3f-%.3f] | %5.3f [%.3f-%.3f] | %-8s | %-4s |\n",
           name, unit, median(lib, rounds), percentile(lib, rounds, 10), percentile(lib, rounds, 90), base_name,
           median(base, rounds), percentile(base, rounds, 10), percentile(base, rounds, 90), rm,
           percentile(ratio, rounds, 10), percentile(ratio, rounds, 90), tgt, res);
    fflush(stdout);
    free(ratio);
}

/* ---------------------------------------------------------- raw userfaultfd */

/* A userfaultfd opened the plain way: syscall(SYS_userfaultfd, O_CLOEXEC|O_NONBLOCK),
 * then UFFDIO_API with no feature beyond what the page kind needs. */
static inline int raw_uffd_open(int hugetlb)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        /* Unprivileged hosts may only have /dev/userfaultfd (and valgrind may not know
         * the syscall): same descriptor, other door. */
        int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (dev >= 0) {
            fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
            close(dev);
        }
        if (fd < 0)
            die("userfaultfd: %s", strerror(errno));
    }
    struct uffdio_api api = { .api = UFFD_API, .features = hugetlb ? UFFD_FEATURE_MISSING_HUGETLBFS : 0 };
    if (ioctl(fd, UFFDIO_API, &api) != 0)
        die("UFFDIO_API: %s", strerror(errno));
    return fd;
}

static inline void raw_uffd_register(int fd, void *addr, size_t len)
{
    struct uffdio_register reg = {
        .range = { .start = (uintptr_t)addr, .len = len },
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    if (ioctl(fd, UFFDIO_REGISTER, &reg) != 0)
        die("UFFDIO_REGISTER: %s", strerror(errno));
}

/* One UFFDIO_COPY of len bytes; EEXIST (cannot happen in these benchmarks) wakes. */
static inline void raw_copy(int fd, void *dst, const void *src, size_t len)
{
    struct uffdio_copy c = { .dst = (uintptr_t)dst, .src = (uintptr_t)src, .len = len, .mode = 0 };
    while (ioctl(fd, UFFDIO_COPY, &c) != 0) {
        if (errno == EAGAIN)
            continue;
        if (errno == EEXIST) {
            struct uffdio_range r = { .start = (uintptr_t)dst, .len = len };
            ioctl(fd, UFFDIO_WAKE, &r);
            return;
        }
        die("UFFDIO_COPY at %p: %s", dst, strerror(errno));
    }
}

static inline void raw_zeropage(int fd, void *dst, size_t len)
{
    struct uffdio_zeropage z = { .range = { .start = (uintptr_t)dst, .len = len }, .mode = 0 };
    while (ioctl(fd, UFFDIO_ZEROPAGE, &z) != 0) {
        if (errno == EAGAIN)
            continue;
        die("UFFDIO_ZEROPAGE at %p: %s", dst, strerror(errno));
    }
}

/* ------------------------------------------------------------------ memory */

/* Private anonymous memory, 2 MiB aligned; MAP_HUGETLB when hugetlb. NULL if not possible. */
static inline void *map_region(size_t len, int hugetlb)
{
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | (hugetlb ? MAP_HUGETLB : 0);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    if (!hugetlb)
        madvise(p, len, MADV_NOHUGEPAGE); /* 4 KiB pages only, as pcr_incoming_prepare_discard does */
    return p;
}

/* Makes every page of a registered private anonymous region missing again. */
static inline void rearm(void *addr, size_t len)
{
    if (madvise(addr, len, MADV_DONTNEED) != 0)
        die("madvise(MADV_DONTNEED): %s", strerror(errno));
}

/* ----------------------------------------------- the library, normal sequence */

/* One destination with one anonymous RAM block ("bench") at `host`. */
struct lib_side {
    PcrIncoming *mis;
    PcrRamBlock block;
    const void *src;       /* what request_page places (fault benchmark) */
    unsigned long placed;  /* pages placed by request_page */
    bool blocktime;        /* lib_open turns blocktime accounting on */
};

static inline int lib_foreach(void *opaque, PcrRamBlockVisitor visit, void *ctx)
{
    struct lib_side *s = opaque;
    return visit(&s->block, ctx);
}

/* The "source": answers a page request at once by placing the page from the fault thread,
 * as a QEMU destination does when the page arrives (here with no network in between). */
static inline int lib_request_page(void *opaque, void *block_opaque, const char *block_name,
                                   uint64_t offset, uint64_t length)
{
    struct lib_side *s = opaque;
    (void)block_opaque;
    (void)block_name;
    int rc = pcr_place_page(s->mis, (char *)s->block.host + offset, (void *)s->src, (size_t)length);
    if (rc == 0 || rc == -EEXIST) {
        s->placed++;
        return 0;
    }
    return rc;
}

/* pcr_incoming_new + pcr_incoming_init + pcr_incoming_enable_notify.
 * init discards the whole block, so every page is missing afterwards. */
static inline void lib_open(struct lib_side *s, void *host, size_t len, size_t page_size, uint32_t spin_wait_us)
{
    s->block = (PcrRamBlock){
        .name = "bench", .host = host, .offset = 0, .length = len, .page_size = page_size,
        .fd = -1, .fd_offset = 0, .shared = false,
    };
    s->placed = 0;
    PcrIncomingOps ops = {
        .foreach_ram_block = lib_foreach,
        .request_page = lib_request_page,
        .target_page_size = 4096,
        .spin_wait_us = spin_wait_us,
        .blocktime = s->blocktime,
    };
    s->mis = pcr_incoming_new(&ops, s);
    if (!s->mis)
        die("pcr_incoming_new failed");
    int rc = pcr_incoming_init(s->mis, 0);
    if (rc != 0)
        die("pcr_incoming_init: %s", strerror(-rc));
    rc = pcr_incoming_enable_notify(s->mis);
    if (rc != 0)
        die("pcr_incoming_enable_notify: %s", strerror(-rc));
}

/* pcr_incoming_cleanup (joins the fault thread) + pcr_incoming_free;
 * the final counters go to *stats when not NULL. */
static inline void lib_close(struct lib_side *s, PcrStats *stats)
{
    int rc = pcr_incoming_cleanup(s->mis);
    if (rc != 0)
        die("pcr_incoming_cleanup: %s", strerror(-rc));
    if (stats && pcr_incoming_get_stats(s->mis, stats) != 0)
        die("pcr_incoming_get_stats failed");
    pcr_incoming_free(s->mis);
    s->mis = NULL;
}

#endif /* BENCH_UTIL_H */
