/*
 * place_bench: placement throughput of the library vs the same work done directly.
 *
 *   place_bench 4k [rounds] [region_mib]
 *       pcr_place_page          vs raw UFFDIO_COPY loop   vs memcpy into populated memory
 *       pcr_place_page_zero     vs raw UFFDIO_ZEROPAGE loop
 *       pcr_place_pages (64K)   vs per-page pcr_place_page (same source)
 *       pcr_place_pages_zero    vs per-page pcr_place_page_zero
 *       (+ information rows: the batched calls vs one raw ioctl per 64 KiB run)
 *   place_bench 2m [rounds] [region_mib]
 *       the same first comparison with 2 MiB pages (MAP_HUGETLB anonymous memory); prints
 *       a "skipped" line and exits 0 when huge pages cannot be had.
 *   place_bench profile [pages]
 *       each way of placing 4 KiB pages once, untimed, for valgrind --tool=callgrind
 *       (scripts/bench.sh --callgrind).
 *
 * Setup: the library's normal sequence (pcr_incoming_new with foreach_ram_block
 * and request_page, pcr_incoming_init, pcr_incoming_enable_notify) on one
 * anonymous block; the raw side has its own userfaultfd (syscall, UFFDIO_API,
 * UFFDIO_REGISTER MISSING) on its own region. Pages are placed from a small, cache-hot
 * source, as QEMU places from its temporary page. Before every round each area is re-armed
 * untimed with MADV_DONTNEED (pages missing again; placement ignores the library's
 * "received" bits); the memcpy side copies into an area populated once beforehand.
 * Variants alternate chunk by chunk (256 KiB; one page for 2 MiB pages), see compare().
 */
#include "bench_util.h"

#define RUN (64 * KiB) /* the batched calls place 64 KiB runs */

enum variant {
    LIB_PLACE,        /* pcr_place_page per page, source: one page */
    RAW_COPY,         /* UFFDIO_COPY per page, source: one page */
    MEMCPY,           /* memcpy per page into populated memory, source: one page */
    LIB_ZERO,         /* pcr_place_page_zero per page */
    RAW_ZERO,         /* UFFDIO_ZEROPAGE per page */
    LIB_RUNS,         /* pcr_place_pages per 64 KiB run, source: 64 KiB */
    LIB_RUN_PAGES,    /* pcr_place_page per page, source: the same 64 KiB */
    RAW_RUNS,         /* UFFDIO_COPY per 64 KiB run */
    LIB_ZERO_RUNS,    /* pcr_place_pages_zero per 64 KiB run */
    RAW_ZERO_RUNS,    /* UFFDIO_ZEROPAGE per 64 KiB run */
};

struct bench {
    size_t ps;          /* page size */
    size_t len;         /* bytes each variant places per round */
    size_t chunk;       /* bytes per timed chunk (variants alternate chunk by chunk) */
    struct lib_side lib;
    char *lib_region;   /* 2 * len: room for two library variants of one comparison */
    int uffd;
    char *raw_region;   /* 2 * len, registered with the raw userfaultfd */
    char *memcpy_region;
    char *src;          /* RUN bytes, or one huge page */
    size_t src_len;
};

/* Places [dst, dst + bytes) the way variant v does; returns the seconds it took. */
static double place_chunk(struct bench *b, enum variant v, char *dst, size_t bytes)
{
    PcrIncoming *mis = b->lib.mis;
    size_t ps = b->ps;
    uint64_t t0 = now_ns();
    switch (v) {
    case LIB_PLACE:
        for (size_t off = 0; off < bytes; off += ps) {
            int rc = pcr_place_page(mis, dst + off, b->src, ps);
            if (rc != 0)
                die("pcr_place_page: %s", strerror(-rc));
        }
        break;
    case RAW_COPY:
        for (size_t off = 0; off < bytes; off += ps)
            raw_copy(b->uffd, dst + off, b->src, ps);
        break;
    case MEMCPY:
        for (size_t off = 0; off < bytes; off += ps)
            memcpy(dst + off, b->src, ps);
        break;
    case LIB_ZERO:
        for (size_t off = 0; off < bytes; off += ps) {
            int rc = pcr_place_page_zero(mis, dst + off, ps);
            if (rc != 0)
                die("pcr_place_page_zero: %s", strerror(-rc));
        }
        break;
    case RAW_ZERO:
        for (size_t off = 0; off < bytes; off += ps)
            raw_zeropage(b->uffd, dst + off, ps);
        break;
    case LIB_RUNS:
        for (size_t off = 0; off < bytes; off += RUN) {
            ptrdiff_t n = pcr_place_pages(mis, dst + off, b->src, RUN);
            if (n != (ptrdiff_t)(RUN / ps))
                die("pcr_place_pages returned %td", n);
        }
        break;
    case LIB_RUN_PAGES:
        for (size_t off = 0; off < bytes; off += ps) {
            int rc = pcr_place_page(mis, dst + off, b->src + off % RUN, ps);
            if (rc != 0)
                die("pcr_place_page: %s", strerror(-rc));
        }
        break;
    case RAW_RUNS:
        for (size_t off = 0; off < bytes; off += RUN)
            raw_copy(b->uffd, dst + off, b->src, RUN);
        break;
    case LIB_ZERO_RUNS:
        for (size_t off = 0; off < bytes; off += RUN) {
            ptrdiff_t n = pcr_place_pages_zero(mis, dst + off, RUN);
            if (n != (ptrdiff_t)(RUN / ps))
                die("pcr_place_pages_zero returned %td", n);
        }
        break;
    case RAW_ZERO_RUNS:
        for (size_t off = 0; off < bytes; off += RUN)
            raw_zeropage(b->uffd, dst + off, RUN);
        break;
    }
    return (double)(now_ns() - t0) / 1e9;
}

static int is_lib(enum variant v)
{
    return v == LIB_PLACE || v == LIB_ZERO || v == LIB_RUNS || v == LIB_RUN_PAGES || v == LIB_ZERO_RUNS;
}

/* Compares `count` variants over `rounds` rounds. In a round each variant places its own
 * len-byte area once (re-armed untimed before the round), chunk by chunk, the variants
 * taking turns chunk after chunk (order rotated every chunk): so both sides of a ratio see
 * the same moments of this noisy VM. A round's value for a variant is its typical chunk
 * (chunk bytes / median chunk time: a chunk hit by another tenant's burst does not move it),
 * in GiB/s, or millions of pages per second when `mpages`. One untimed warm-up round first. */
static void compare(struct bench *b, const enum variant *vs, size_t count, size_t rounds, double **out, int mpages)
{
    char *area[8];
    size_t lib_slot = 0, raw_slot = 0, chunks = b->len / b->chunk;
    for (size_t k = 0; k < count; k++) {
        if (is_lib(vs[k]))
            area[k] = b->lib_region + lib_slot++ * b->len;
        else if (vs[k] == MEMCPY)
            area[k] = b->memcpy_region;
        else
            area[k] = b->raw_region + raw_slot++ * b->len;
        if (lib_slot > 2 || raw_slot > 2)
            die("compare: too many variants of one side");
    }
    double *t[8];
    for (size_t k = 0; k < count; k++)
        if (!(t[k] = malloc(chunks * sizeof(double))))
            die("out of memory");
    for (size_t r = 0; r <= rounds; r++) {
        for (size_t k = 0; k < count; k++)
            if (vs[k] != MEMCPY)
                rearm(area[k], b->len);
        for (size_t c = 0; c < chunks; c++) {
            for (size_t i = 0; i < count; i++) {
                size_t k = (c + i) % count;
                t[k][c] = place_chunk(b, vs[k], area[k] + c * b->chunk, b->chunk);
            }
        }
        if (r == 0)
            continue; /* warm-up */
        for (size_t k = 0; k < count; k++) {
            double s = median(t[k], chunks);
            out[k][r - 1] = mpages ? (double)(b->chunk / b->ps) / s / 1e6 : (double)b->chunk / s / (double)(1UL << 30);
        }
    }
    for (size_t k = 0; k < count; k++)
        free(t[k]);
}

static double **alloc_results(size_t count, size_t rounds)
{
    double **out = calloc(count, sizeof *out);
    for (size_t k = 0; out && k < count; k++)
        if (!(out[k] = calloc(rounds, sizeof(double))))
            out = NULL;
    if (!out)
        die("out of memory");
    return out;
}

/* "profile" mode: each way of placing `pages` 4 KiB pages once, in its own function, so
 * that `valgrind --tool=callgrind` attributes user-space instructions per call (the kernel's
 * work is invisible to it): scripts/bench.sh --callgrind. */
__attribute__((noinline)) static void prof_lib_place_page(struct bench *b, char *dst, size_t bytes)
{
    place_chunk(b, LIB_PLACE, dst, bytes);
}
__attribute__((noinline)) static void prof_raw_copy(struct bench *b, char *dst, size_t bytes)
{
    place_chunk(b, RAW_COPY, dst, bytes);
}
__attribute__((noinline)) static void prof_lib_place_page_zero(struct bench *b, char *dst, size_t bytes)
{
    place_chunk(b, LIB_ZERO, dst, bytes);
}
__attribute__((noinline)) static void prof_raw_zeropage(struct bench *b, char *dst, size_t bytes)
{
    place_chunk(b, RAW_ZERO, dst, bytes);
}
__attribute__((noinline)) static void prof_lib_place_pages_64k(struct bench *b, char *dst, size_t bytes)
{
    place_chunk(b, LIB_RUNS, dst, bytes);
}
__attribute__((noinline)) static void prof_raw_copy_64k(struct bench *b, char *dst, size_t bytes)
{
    place_chunk(b, RAW_RUNS, dst, bytes);
}

static int profile(size_t pages)
{
    struct bench b = { .ps = 4 * KiB, .len = pages * 4 * KiB, .src_len = RUN };
    b.lib_region = map_region(b.len, 0);
    b.raw_region = map_region(b.len, 0);
    b.src = map_region(b.src_len, 0);
    if (!b.lib_region || !b.raw_region || !b.src)
        die("mmap: %s", strerror(errno));
    memset(b.src, 0x5a, b.src_len);
    lib_open(&b.lib, b.lib_region, b.len, b.ps, 0);
    b.uffd = raw_uffd_open(0);
    raw_uffd_register(b.uffd, b.raw_region, b.len);
    for (int i = 0; i < 2; i++) { /* twice: the second time with warm code */
        rearm(b.lib_region, b.len), prof_lib_place_page(&b, b.lib_region, b.len);
        rearm(b.raw_region, b.len), prof_raw_copy(&b, b.raw_region, b.len);
        rearm(b.lib_region, b.len), prof_lib_place_page_zero(&b, b.lib_region, b.len);
        rearm(b.raw_region, b.len), prof_raw_zeropage(&b, b.raw_region, b.len);
        rearm(b.lib_region, b.len), prof_lib_place_pages_64k(&b, b.lib_region, b.len);
        rearm(b.raw_region, b.len), prof_raw_copy_64k(&b, b.raw_region, b.len);
    }
    lib_close(&b.lib, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "profile") == 0)
        return profile(argc > 2 ? strtoul(argv[2], NULL, 0) : 1024);
    if (argc < 2 || (strcmp(argv[1], "4k") != 0 && strcmp(argv[1], "2m") != 0))
        die("usage: place_bench 4k|2m [rounds] [region_mib] | place_bench profile [pages]");
    int huge = strcmp(argv[1], "2m") == 0;
    size_t rounds = argc > 2 ? strtoul(argv[2], NULL, 0) : 15;
    size_t mib = argc > 3 ? strtoul(argv[3], NULL, 0) : (huge ? 64 : 32);
    if (rounds < 1 || mib < 2)
        die("rounds must be >= 1 and region_mib >= 2");

    struct bench b = { .ps = huge ? 2 * MiB : 4 * KiB, .len = mib * MiB, .chunk = huge ? 2 * MiB : 256 * KiB };
    b.src_len = huge ? 2 * MiB : RUN;
    /* Huge pages: one library area, one raw area (one comparison of three variants). */
    size_t areas = huge ? 1 : 2;
    b.lib_region = map_region(areas * b.len, huge);
    b.raw_region = map_region(areas * b.len, huge);
    b.memcpy_region = map_region(b.len, huge);
    if (!b.lib_region || !b.raw_region || !b.memcpy_region) {
        if (huge) {
            printf("| place_page 2M (hugetlb)            | GiB/s    | skipped: cannot map 3 x %zu MiB of MAP_HUGETLB "
                   "memory (%s); reserve %zu 2 MiB huge pages (vm.nr_hugepages) as root | - | - | - | - | SKIP |\n",
                   mib, strerror(errno), 3 * mib / 2);
            return 0;
        }
        die("mmap: %s", strerror(errno));
    }
    /* Populate the memcpy destination once (touching MAP_HUGETLB memory can SIGBUS when the
     * pool runs short, but the mmap above already reserved the pages). */
    memset(b.memcpy_region, 1, b.len);
    b.src = map_region(b.src_len, 0);
    if (!b.src)
        die("mmap: %s", strerror(errno));
    for (size_t i = 0; i < b.src_len; i++)
        b.src[i] = (char)(i * 7 + 1);

    lib_open(&b.lib, b.lib_region, areas * b.len, b.ps, 0);
    b.uffd = raw_uffd_open(huge);
    raw_uffd_register(b.uffd, b.raw_region, areas * b.len);

    const char *sz = huge ? "2M" : "4K";
    char name[64];
    {
        enum variant vs[] = { LIB_PLACE, RAW_COPY, MEMCPY };
        double **t = alloc_results(3, rounds);
        compare(&b, vs, 3, rounds, t, 0);
        snprintf(name, sizeof name, "place_page %s%s", sz, huge ? " (hugetlb)" : "");
        print_row(name, "GiB/s", t[0], "raw UFFDIO_COPY", t[1], rounds, 1, 0.97);
        print_row(name, "GiB/s", t[0], "memcpy (populated)", t[2], rounds, 1, huge ? 0.90 : 0);
        if (huge)
            print_row("(reference) raw UFFDIO_COPY 2M", "GiB/s", t[1], "memcpy (populated)", t[2], rounds, 1, 0);
    }
    if (!huge) {
        enum variant vs[] = { LIB_ZERO, RAW_ZERO };
        double **t = alloc_results(2, rounds);
        compare(&b, vs, 2, rounds, t, 1);
        print_row("place_page_zero 4K", "Mpages/s", t[0], "raw UFFDIO_ZEROPAGE", t[1], rounds, 1, 0.97);

        enum variant vr[] = { LIB_RUNS, LIB_RUN_PAGES, RAW_RUNS };
        t = alloc_results(3, rounds);
        compare(&b, vr, 3, rounds, t, 0);
        print_row("place_pages 64K runs", "GiB/s", t[0], "lib place_page per page", t[1], rounds, 1, 1.3);
        print_row("place_pages 64K runs", "GiB/s", t[0], "raw UFFDIO_COPY 64K", t[2], rounds, 1, 0);

        enum variant vz[] = { LIB_ZERO_RUNS, LIB_ZERO, RAW_ZERO_RUNS };
        t = alloc_results(3, rounds);
        compare(&b, vz, 3, rounds, t, 1);
        print_row("place_pages_zero 64K runs", "Mpages/s", t[0], "lib place_page_zero/page", t[1], rounds, 1, 1.3);
        print_row("place_pages_zero 64K runs", "Mpages/s", t[0], "raw UFFDIO_ZEROPAGE 64K", t[2], rounds, 1, 0);
    }

    PcrStats st;
    lib_close(&b.lib, &st);
    if (st.already_present != 0 || st.faults != 0)
        fprintf(stderr, "place_bench: note: %llu placements found the page present, %llu faults\n",
                (unsigned long long)st.already_present, (unsigned long long)st.faults);
    return 0;
}
