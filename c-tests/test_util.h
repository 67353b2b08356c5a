/*
 * test_util.h: a small C "VMM" harness for the postcopy-ram C tests.
 *
 * - CHECK* macros that print file:line and exit(1); SKIP() exits with 77 (ctest
 *   SKIP_RETURN_CODE); a watchdog alarm turns a hang into a failure.
 * - A log capture installed with pcr_set_log_callback: tests assert how many lines a
 *   call produced (LOG_EXPECT_ONE), every captured line is echoed to stderr.
 * - Guest RAM blocks of several kinds (private anonymous, shared anonymous, memfd, hugetlb
 *   via MAP_HUGETLB or memfd_create(MFD_HUGETLB)) with deterministic page content
 *   f(block, offset), a foreach_ram_block callback, and a request_page callback that checks
 *   and records every request and serves it (from the fault thread, from a server thread
 *   through pcr_get_tmp_page, or not at all).
 * - Touch helpers: a direct load/store, or (under valgrind, where a thread blocked in a
 *   page fault inside valgrind's JIT holds valgrind's global lock, so the library's fault
 *   thread never runs and the process hangs, even for SIGTERM) the same access performed
 *   by the kernel inside a pipe write/read, where the thread blocks in a syscall and
 *   valgrind lets the other threads run. Chosen by RUNNING_ON_VALGRIND, or forced with
 *   PCR_TOUCH=syscall / PCR_TOUCH=direct.
 * - Huge page pool management: raises /proc/sys/vm/nr_hugepages when needed and puts the
 *   original value back on every exit path (exit, failed check, signals, watchdog).
 * - /proc/self/fd counting for descriptor-leak checks.
 *
 * Tests call the library directly; only test_dlopen.c goes through a table of function
 * pointers (see PCR() below).
 */
#ifndef POSTCOPY_RAM_TEST_UTIL_H
#define POSTCOPY_RAM_TEST_UTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/mman.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "postcopy_ram.h"

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define PCR_HAVE_VALGRIND_H 1
#endif
#endif

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif
#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << MAP_HUGE_SHIFT)
#endif

#define PCR_SKIP_CODE 77
#define PCR_HUGE_PAGE_SIZE (2u * 1024u * 1024u)

/* ---- the library --------------------------------------------------------------------
 * Tests call the library directly. Only test_dlopen.c, which is not linked with it and
 * defines PCR_TEST_NO_DIRECT_LINK, goes through the table API, filled by dlsym(); the
 * shared helpers below reach the library through PCR(name), which is `name` or
 * `API.name` accordingly. */
#ifdef PCR_TEST_NO_DIRECT_LINK
#define PCR_API_FUNCTIONS(X)                                                                 \
    X(pcr_incoming_new)                                                                    \
    X(pcr_incoming_free)                                                                   \
    X(pcr_incoming_supported_by_host)                                                      \
    X(pcr_incoming_init)                                                                   \
    X(pcr_incoming_cleanup)                                                                \
    X(pcr_incoming_enable_notify)                                                          \
    X(pcr_place_page)                                                                      \
    X(pcr_place_page_zero)                                                                 \
    X(pcr_get_tmp_page)                                                                    \
    X(pcr_incoming_get_stats)                                                              \
    X(pcr_set_log_callback)                                                                \
    X(pcr_version)                                                                         \
    X(pcr_state_get)

typedef struct pcr_api {
#define PCR_API_FIELD(name) __typeof__(&name) name;
    PCR_API_FUNCTIONS(PCR_API_FIELD)
#undef PCR_API_FIELD
} pcr_api;

static pcr_api API;
#define PCR(name) (API.name)
#else
#define PCR(name) name
#endif

/* ---- failing, skipping, watchdog, huge page restore ------------------------------- */

static const char *pcr_test_name = "test";
static long pcr_hp_orig = -1;            /* nr_hugepages to put back, -1: untouched */
static char pcr_hp_path[128];            /* the nr_hugepages file we changed */
static char pcr_hp_orig_text[32];        /* its original content, for the signal path */

static inline void pcr_hugepages_restore_signal_safe(void)
{
    if (pcr_hp_orig < 0)
        return;
    int fd = open(pcr_hp_path, O_WRONLY);
    if (fd >= 0) {
        ssize_t n = write(fd, pcr_hp_orig_text, strlen(pcr_hp_orig_text));
        (void)n;
        close(fd);
    }
}

static inline void pcr_hugepages_restore(void)
{
    if (pcr_hp_orig < 0)
        return;
    pcr_hugepages_restore_signal_safe();
    FILE *f = fopen(pcr_hp_path, "r");
    long now = -1;
    if (f) {
        if (fscanf(f, "%ld", &now) != 1)
            now = -1;
        fclose(f);
    }
    if (now != pcr_hp_orig)
        fprintf(stderr, "%s: WARNING: could not put %s back to %ld (now %ld)\n", pcr_test_name,
                pcr_hp_path, pcr_hp_orig, now);
    else
        fprintf(stderr, "%s: %s put back to %ld\n", pcr_test_name, pcr_hp_path, pcr_hp_orig);
    pcr_hp_orig = -1;
}

static inline void pcr_fatal_signal(int sig)
{
    static const char msg[] = "FATAL: signal (watchdog timeout or crash) in the test\n";
    ssize_t n = write(2, msg, sizeof msg - 1);
    (void)n;
    pcr_hugepages_restore_signal_safe();
    signal(sig, SIG_DFL);
    if (sig == SIGALRM)
        _exit(1);
    raise(sig);
}

__attribute__((noreturn, format(printf, 1, 2))) static inline void pcr_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: FAIL: ", pcr_test_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1); /* atexit handlers put the huge page pool back */
}

__attribute__((noreturn, format(printf, 1, 2))) static inline void pcr_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("SKIP: ");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
    exit(PCR_SKIP_CODE);
}

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond))                                                                         \
            pcr_fail("%s:%d: CHECK(%s)", __FILE__, __LINE__, #cond);                         \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                 \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "%s:%d: CHECK(%s): ", __FILE__, __LINE__, #cond);               \
            pcr_fail(__VA_ARGS__);                                                           \
        }                                                                                    \
    } while (0)

#define CHECK_EQ(actual, expected)                                                           \
    do {                                                                                     \
        long long pcr_a_ = (long long)(actual), pcr_e_ = (long long)(expected);              \
        if (pcr_a_ != pcr_e_)                                                                \
            pcr_fail("%s:%d: %s == %lld, expected %s == %lld", __FILE__, __LINE__, #actual,  \
                     pcr_a_, #expected, pcr_e_);                                             \
    } while (0)

#define CHECK_EQ_U64(actual, expected)                                                       \
    do {                                                                                     \
        uint64_t pcr_a_ = (uint64_t)(actual), pcr_e_ = (uint64_t)(expected);                 \
        if (pcr_a_ != pcr_e_)                                                                \
            pcr_fail("%s:%d: %s == %" PRIu64 " (%#" PRIx64 "), expected %s == %" PRIu64      \
                     " (%#" PRIx64 ")",                                                      \
                     __FILE__, __LINE__, #actual, pcr_a_, pcr_a_, #expected, pcr_e_, pcr_e_);\
    } while (0)

#define CHECK_STR(actual, expected)                                                          \
    do {                                                                                     \
        const char *pcr_a_ = (actual), *pcr_e_ = (expected);                                 \
        if (pcr_a_ == NULL || strcmp(pcr_a_, pcr_e_) != 0)                                   \
            pcr_fail("%s:%d: %s == \"%s\", expected \"%s\"", __FILE__, __LINE__, #actual,    \
                     pcr_a_ ? pcr_a_ : "(null)", pcr_e_);                                    \
    } while (0)

static inline bool pcr_under_valgrind(void)
{
    const char *env = getenv("PCR_TOUCH");
    if (env && strcmp(env, "syscall") == 0)
        return true;
    if (env && strcmp(env, "direct") == 0)
        return false;
#ifdef PCR_HAVE_VALGRIND_H
    return RUNNING_ON_VALGRIND != 0;
#else
    return false;
#endif
}

static inline double pcr_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void pcr_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- log capture ------------------------------------------------------------------- */

typedef struct pcr_log {
    pthread_mutex_t lock;
    int count;        /* lines since the last pcr_log_reset */
    int errors;       /* of which level 1 */
    int total;        /* lines since the start */
    int last_level;
    char last[1024];
    bool quiet;       /* do not echo to stderr */
} pcr_log;

static pcr_log LOG = {.lock = PTHREAD_MUTEX_INITIALIZER};

static inline void pcr_log_cb(void *opaque, int level, const char *message)
{
    pcr_log *log = opaque;
    pthread_mutex_lock(&log->lock);
    log->count++;
    log->total++;
    if (level == 1)
        log->errors++;
    log->last_level = level;
    snprintf(log->last, sizeof log->last, "%s", message ? message : "(null)");
    if (!log->quiet)
        fprintf(stderr, "  [lib L%d] %s\n", level, message ? message : "(null)");
    pthread_mutex_unlock(&log->lock);
}

static inline void pcr_log_reset(void)
{
    pthread_mutex_lock(&LOG.lock);
    LOG.count = 0;
    LOG.errors = 0;
    LOG.last[0] = 0;
    LOG.last_level = 0;
    pthread_mutex_unlock(&LOG.lock);
}

static inline int pcr_log_count(void)
{
    pthread_mutex_lock(&LOG.lock);
    int n = LOG.count;
    pthread_mutex_unlock(&LOG.lock);
    return n;
}

/* Lines at warn level or above are captured (the library logs failures at error level). */
static inline void pcr_log_install(void)
{
    PCR(pcr_set_log_callback)(pcr_log_cb, &LOG, 2);
}

static inline void pcr_log_expect_(int expected, const char *substr, const char *what,
                                   const char *file, int line)
{
    pthread_mutex_lock(&LOG.lock);
    int n = LOG.count, level = LOG.last_level;
    char last[1024];
    snprintf(last, sizeof last, "%s", LOG.last);
    pthread_mutex_unlock(&LOG.lock);
    if (n != expected)
        pcr_fail("%s:%d: %s logged %d line(s), expected %d (last: \"%s\")", file, line, what, n,
                 expected, last);
    if (expected > 0 && level != 1)
        pcr_fail("%s:%d: %s logged at level %d, expected 1 (error): \"%s\"", file, line, what,
                 level, last);
    if (expected > 0 && substr && !strstr(last, substr))
        pcr_fail("%s:%d: %s logged \"%s\", expected it to mention \"%s\"", file, line, what, last,
                 substr);
}

/* Runs `stmt` and checks that it logged exactly one error line (mentioning `substr` unless
 * NULL). */
#define LOG_EXPECT_ONE(stmt, substr)                                                         \
    do {                                                                                     \
        pcr_log_reset();                                                                     \
        stmt;                                                                                \
        pcr_log_expect_(1, (substr), #stmt, __FILE__, __LINE__);                             \
    } while (0)

/* Runs `stmt` and checks that it logged nothing at warn level or above. */
#define LOG_EXPECT_NONE(stmt)                                                                \
    do {                                                                                     \
        pcr_log_reset();                                                                     \
        stmt;                                                                                \
        pcr_log_expect_(0, NULL, #stmt, __FILE__, __LINE__);                                 \
    } while (0)

/* ---- descriptors -------------------------------------------------------------------- */

static inline int pcr_count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        pcr_fail("opendir(/proc/self/fd): %s", strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

static inline void pcr_list_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    if (!d)
        return;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], target[300];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        target[n > 0 ? n : 0] = 0;
        fprintf(stderr, "  fd %s -> %s\n", e->d_name, target);
    }
    closedir(d);
}

/* ---- test start ---------------------------------------------------------------------- */

/* Names the test, arms the watchdog and fatal-signal handlers, installs the log capture.
 * Call first in main(). */
static inline void pcr_test_begin_common(const char *name, unsigned timeout_s)
{
    pcr_test_name = name;
    setvbuf(stdout, NULL, _IOLBF, 0);
    atexit(pcr_hugepages_restore);
    signal(SIGALRM, pcr_fatal_signal);
    signal(SIGTERM, pcr_fatal_signal);
    signal(SIGINT, pcr_fatal_signal);
    signal(SIGSEGV, pcr_fatal_signal);
    signal(SIGBUS, pcr_fatal_signal);
    signal(SIGABRT, pcr_fatal_signal);
    signal(SIGPIPE, SIG_IGN);
    if (pcr_under_valgrind())
        timeout_s *= 10;
    alarm(timeout_s);
    pcr_log_install();
    printf("%s: library %s, touching pages %s\n", name, PCR(pcr_version)(),
           pcr_under_valgrind() ? "through syscalls (valgrind / PCR_TOUCH=syscall)" : "directly");
}

#ifndef PCR_TEST_NO_DIRECT_LINK
static inline void pcr_test_begin(const char *name, unsigned timeout_s)
{
    pcr_test_begin_common(name, timeout_s);
}
#endif

static inline void pcr_test_pass(void)
{
    printf("%s: PASS\n", pcr_test_name);
}

/* ---- huge pages ---------------------------------------------------------------------- */

static inline long pcr_read_long(const char *path)
{
    FILE *f = fopen(path, "r");
    long v = -1;
    if (!f)
        return -1;
    if (fscanf(f, "%ld", &v) != 1)
        v = -1;
    fclose(f);
    return v;
}

static inline bool pcr_write_long(const char *path, long v)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return false;
    bool ok = fprintf(f, "%ld\n", v) > 0;
    ok = (fclose(f) == 0) && ok;
    return ok;
}

/* Makes sure at least `needed` free 2 MiB huge pages exist, raising the pool
 * (/proc/sys/vm/nr_hugepages when 2 MiB is the default huge page size, else the sysfs
 * file of the 2 MiB pool) if needed; the original size is put back at exit. Skips the test
 * when they cannot be had. */
static inline void pcr_hugepages_require(long needed)
{
    const char *sys_nr = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
    const char *sys_free = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";
    if (access(sys_nr, F_OK) != 0)
        pcr_skip("no 2 MiB huge page support on this kernel (%s missing)", sys_nr);
    long default_kb = -1;
    FILE *mi = fopen("/proc/meminfo", "r");
    if (mi) {
        char line[256];
        while (fgets(line, sizeof line, mi))
            if (sscanf(line, "Hugepagesize: %ld kB", &default_kb) == 1)
                break;
        fclose(mi);
    }
    const char *nr_path = default_kb == 2048 ? "/proc/sys/vm/nr_hugepages" : sys_nr;
    long free_pages = pcr_read_long(sys_free);
    long nr = pcr_read_long(nr_path);
    if (free_pages >= needed) {
        printf("%s: %ld free 2 MiB huge pages, %ld needed\n", pcr_test_name, free_pages, needed);
        return;
    }
    if (nr < 0)
        pcr_skip("cannot read %s", nr_path);
    snprintf(pcr_hp_path, sizeof pcr_hp_path, "%s", nr_path);
    snprintf(pcr_hp_orig_text, sizeof pcr_hp_orig_text, "%ld\n", nr);
    pcr_hp_orig = nr;
    long want = nr + (needed - free_pages);
    if (!pcr_write_long(nr_path, want)) {
        int e = errno;
        pcr_hugepages_restore();
        pcr_skip("cannot raise %s to %ld: %s", nr_path, want, strerror(e));
    }
    free_pages = pcr_read_long(sys_free);
    printf("%s: raised %s from %ld to %ld (%ld free now)\n", pcr_test_name, nr_path, nr, want,
           free_pages);
    if (free_pages < needed) {
        pcr_hugepages_restore();
        pcr_skip("only %ld free 2 MiB huge pages after raising the pool, %ld needed", free_pages,
                 needed);
    }
}

/* ---- guest RAM ------------------------------------------------------------------------- */

typedef enum pcr_block_kind {
    BLK_ANON_PRIVATE,  /* MAP_PRIVATE|MAP_ANONYMOUS, 4 KiB pages */
    BLK_ANON_SHARED,   /* MAP_SHARED|MAP_ANONYMOUS (shmem), 4 KiB pages */
    BLK_MEMFD_SHARED,  /* memfd_create + MAP_SHARED, 4 KiB pages */
    BLK_HUGE_ANON,     /* MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB, 2 MiB pages */
    BLK_HUGE_MEMFD,    /* memfd_create(MFD_HUGETLB) + MAP_SHARED, 2 MiB pages */
} pcr_block_kind;

static inline const char *pcr_kind_name(pcr_block_kind k)
{
    switch (k) {
    case BLK_ANON_PRIVATE: return "private anonymous";
    case BLK_ANON_SHARED: return "shared anonymous";
    case BLK_MEMFD_SHARED: return "shared memfd";
    case BLK_HUGE_ANON: return "MAP_HUGETLB anonymous";
    case BLK_HUGE_MEMFD: return "hugetlb memfd";
    }
    return "?";
}

#define VMM_MAX_BLOCKS 8
#define VMM_MAX_REQS 4096

typedef struct vmm_block {
    char name[64];
    pcr_block_kind kind;
    uint8_t *host;
    uint64_t ram_offset; /* offset in the guest RAM address space */
    uint64_t length;     /* as described to the library (tests may corrupt it) */
    uint64_t page_size;  /* as described to the library (tests may corrupt it) */
    uint64_t map_length; /* what was mapped */
    uint64_t real_page_size;
    int fd;              /* memfd, or -1 */
    bool shared;
    uint8_t *zero_pages; /* per page: serve it as a zero page */
} vmm_block;

typedef struct vmm_request {
    int block;       /* index in vmm.blocks, -1 if unknown */
    bool named;      /* block_name was not NULL */
    uint64_t offset;
    uint64_t length;
} vmm_request;

typedef enum vmm_serve {
    SERVE_DIRECT, /* place from the request callback, on the fault thread */
    SERVE_THREAD, /* queue to a server thread that assembles pages in pcr_get_tmp_page */
    SERVE_NONE,   /* record only; the test places pages itself */
} vmm_serve;

typedef struct vmm {
    vmm_block blocks[VMM_MAX_BLOCKS];
    int nblocks;
    uint64_t next_ram_offset;
    struct PcrIncoming *mis;
    PcrIncomingOps ops;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    vmm_serve serve;
    vmm_request reqs[VMM_MAX_REQS];
    size_t nreqs;
    size_t queue_head;    /* next request the server thread serves */
    int last_named;       /* block of the last successful named request */
    int fail_requests;    /* fail this many coming requests with -EIO */
    int failed_requests;
    int anomalies;
    char anomaly[512];
    uint8_t *direct_buf;  /* SERVE_DIRECT page buffer (fault thread only) */
    size_t direct_buf_len;
    /* placements made by the harness */
    uint64_t placed, zero_placed, eexist;
    void *tmp_page;       /* what pcr_get_tmp_page returned to the server */
    pthread_t server;
    bool server_running, server_quit;
    int foreach_rc;       /* returned by foreach_ram_block after visiting (0 normally) */
    bool foreach_null_name; /* describe block 0 with a NULL name */
    /* callbacks seen */
    int nstates;                 /* state_changed calls */
    PcrState states[64][2]; /* the first 64 of them: old, new */
    PcrState last_state[2]; /* the last one */
    int shut_calls;
    bool shut_failed;
    int balloon_calls;
    bool balloon_inhibited;
    int discard_cb_calls;
    uint64_t discard_cb_bytes;
    pthread_t fault_thread_seen; /* thread that ran request_page */
    bool fault_thread_known;
} vmm;

static inline uint64_t pcr_mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* The content of the 8 bytes at byte offset `off` (a multiple of 8) of block `b`. */
static inline uint64_t pcr_word(int b, uint64_t off)
{
    return pcr_mix(((uint64_t)(b + 1) << 56) ^ off ^ 0x5eed5eed5eedULL) | 1; /* never 0 */
}

static inline void pcr_fill_page(int b, uint64_t page_off, uint8_t *dst, uint64_t page_size)
{
    uint64_t *w = (uint64_t *)(void *)dst;
    for (uint64_t i = 0; i < page_size / 8; i++)
        w[i] = pcr_word(b, page_off + i * 8);
}

static inline vmm_block *vmm_add_block(vmm *v, const char *name, pcr_block_kind kind,
                                       uint64_t pages)
{
    CHECK(v->nblocks < VMM_MAX_BLOCKS);
    vmm_block *b = &v->blocks[v->nblocks];
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "%s", name);
    b->kind = kind;
    b->fd = -1;
    b->real_page_size = (kind == BLK_HUGE_ANON || kind == BLK_HUGE_MEMFD) ? PCR_HUGE_PAGE_SIZE
                                                                         : (uint64_t)getpagesize();
    b->page_size = b->real_page_size;
    b->length = b->map_length = pages * b->real_page_size;
    int prot = PROT_READ | PROT_WRITE;
    void *p = MAP_FAILED;
    switch (kind) {
    case BLK_ANON_PRIVATE:
        p = mmap(NULL, b->map_length, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        break;
    case BLK_ANON_SHARED:
        b->shared = true;
        p = mmap(NULL, b->map_length, prot, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        break;
    case BLK_MEMFD_SHARED:
    case BLK_HUGE_MEMFD: {
        unsigned flags = MFD_CLOEXEC | (kind == BLK_HUGE_MEMFD ? MFD_HUGETLB | MFD_HUGE_2MB : 0);
        b->fd = (int)syscall(SYS_memfd_create, name, flags);
        if (b->fd < 0) {
            if (kind == BLK_HUGE_MEMFD)
                pcr_skip("memfd_create(MFD_HUGETLB): %s", strerror(errno));
            pcr_fail("memfd_create(%s): %s", name, strerror(errno));
        }
        if (ftruncate(b->fd, (off_t)b->map_length) != 0)
            pcr_fail("ftruncate(memfd %s, %" PRIu64 "): %s", name, b->map_length, strerror(errno));
        b->shared = true;
        p = mmap(NULL, b->map_length, prot, MAP_SHARED, b->fd, 0);
        break;
    }
    case BLK_HUGE_ANON:
        p = mmap(NULL, b->map_length, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB,
                 -1, 0);
        if (p == MAP_FAILED)
            pcr_skip("mmap(MAP_HUGETLB, %" PRIu64 " bytes): %s", b->map_length, strerror(errno));
        break;
    }
    if (p == MAP_FAILED) {
        if (kind == BLK_HUGE_MEMFD)
            pcr_skip("mmap of a hugetlb memfd (%" PRIu64 " bytes): %s", b->map_length,
                     strerror(errno));
        pcr_fail("mmap of block %s (%s): %s", name, pcr_kind_name(kind), strerror(errno));
    }
    b->host = p;
    CHECK((uintptr_t)b->host % b->real_page_size == 0);
    b->ram_offset = v->next_ram_offset;
    v->next_ram_offset += b->map_length;
    b->zero_pages = calloc(pages, 1);
    CHECK(b->zero_pages != NULL);
    v->nblocks++;
    return b;
}

static inline int vmm_block_index(const vmm *v, const char *name)
{
    for (int i = 0; i < v->nblocks; i++)
        if (strcmp(v->blocks[i].name, name) == 0)
            return i;
    return -1;
}

static inline void vmm_anomaly(vmm *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void vmm_anomaly(vmm *v, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: ANOMALY: %s\n", pcr_test_name, buf);
    /* caller holds v->lock or is single-threaded */
    v->anomalies++;
    snprintf(v->anomaly, sizeof v->anomaly, "%s", buf);
}

/* Places page `off` of block `b` with its content (or as a zero page if so marked), from
 * `buf`. Returns what the library returned. */
static inline int vmm_place(vmm *v, int bi, uint64_t off, uint8_t *buf)
{
    vmm_block *b = &v->blocks[bi];
    uint64_t page = off / b->real_page_size;
    int rc;
    if (b->zero_pages[page]) {
        rc = PCR(pcr_place_page_zero)(v->mis, b->host + off, b->real_page_size);
    } else {
        pcr_fill_page(bi, off, buf, b->real_page_size);
        rc = PCR(pcr_place_page)(v->mis, b->host + off, buf, b->real_page_size);
    }
    pthread_mutex_lock(&v->lock);
    if (rc == 0 && b->zero_pages[page])
        v->zero_placed++;
    else if (rc == 0)
        v->placed++;
    else if (rc == -EEXIST)
        v->eexist++;
    else
        vmm_anomaly(v, "placing %s+%#" PRIx64 " returned %d (%s)", b->name, off, rc, strerror(-rc));
    pthread_mutex_unlock(&v->lock);
    return rc;
}

static inline int vmm_foreach_cb(void *opaque, PcrRamBlockVisitor visit, void *ctx)
{
    vmm *v = opaque;
    for (int i = 0; i < v->nblocks; i++) {
        vmm_block *b = &v->blocks[i];
        PcrRamBlock d = {
            .name = (i == 0 && v->foreach_null_name) ? NULL : b->name,
            .host = b->host,
            .offset = b->ram_offset,
            .length = b->length,
            .page_size = b->page_size,
            .fd = b->fd,
            .fd_offset = 0,
            .shared = b->shared,
        };
        int rc = visit(&d, ctx);
        if (rc != 0)
            return rc;
    }
    return v->foreach_rc;
}

static inline int vmm_request_cb(void *opaque, const char *block_name, uint64_t offset,
                                 uint64_t length)
{
    vmm *v = opaque;
    pthread_mutex_lock(&v->lock);
    if (!v->fault_thread_known) {
        v->fault_thread_seen = pthread_self();
        v->fault_thread_known = true;
    } else if (!pthread_equal(v->fault_thread_seen, pthread_self())) {
        vmm_anomaly(v, "request_page called from two different threads");
    }
    int bi;
    if (block_name) {
        bi = vmm_block_index(v, block_name);
        if (bi < 0)
            vmm_anomaly(v, "request for unknown block \"%s\"", block_name);
    } else {
        bi = v->last_named;
        if (bi < 0)
            vmm_anomaly(v, "request without block name before any named request");
    }
    if (bi >= 0) {
        vmm_block *b = &v->blocks[bi];
        if (offset % b->real_page_size != 0)
            vmm_anomaly(v, "request %s+%#" PRIx64 ": offset not aligned to %#" PRIx64, b->name,
                        offset, b->real_page_size);
        if (length != b->real_page_size)
            vmm_anomaly(v, "request %s+%#" PRIx64 ": length %#" PRIx64 " != page size %#" PRIx64,
                        b->name, offset, length, b->real_page_size);
        if (offset + length > b->map_length)
            vmm_anomaly(v, "request %s+%#" PRIx64 " past the block end", b->name, offset);
    }
    if (v->nreqs >= VMM_MAX_REQS) {
        vmm_anomaly(v, "too many requests");
        pthread_mutex_unlock(&v->lock);
        return -ENOSPC;
    }
    v->reqs[v->nreqs++] = (vmm_request){bi, block_name != NULL, offset, length};
    if (v->fail_requests > 0) {
        v->fail_requests--;
        v->failed_requests++;
        pthread_cond_broadcast(&v->cond);
        pthread_mutex_unlock(&v->lock);
        return -EIO;
    }
    if (bi >= 0)
        v->last_named = bi;
    vmm_serve serve = v->serve;
    pthread_cond_broadcast(&v->cond);
    pthread_mutex_unlock(&v->lock);
    if (serve == SERVE_DIRECT && bi >= 0 && length == v->blocks[bi].real_page_size &&
        offset % length == 0 && offset + length <= v->blocks[bi].map_length)
        vmm_place(v, bi, offset, v->direct_buf);
    return 0;
}

static inline void vmm_state_cb(void *opaque, PcrState old_state, PcrState new_state)
{
    vmm *v = opaque;
    pthread_mutex_lock(&v->lock);
    if (v->nstates < 64) {
        v->states[v->nstates][0] = old_state;
        v->states[v->nstates][1] = new_state;
    }
    v->nstates++;
    v->last_state[0] = old_state;
    v->last_state[1] = new_state;
    pthread_mutex_unlock(&v->lock);
}

static inline void vmm_shut_cb(void *opaque, bool failed)
{
    vmm *v = opaque;
    pthread_mutex_lock(&v->lock);
    v->shut_calls++;
    v->shut_failed = failed;
    pthread_mutex_unlock(&v->lock);
}

static inline void vmm_balloon_cb(void *opaque, bool inhibit)
{
    vmm *v = opaque;
    pthread_mutex_lock(&v->lock);
    v->balloon_calls++;
    v->balloon_inhibited = inhibit;
    pthread_mutex_unlock(&v->lock);
}

/* A discard_range callback that does what the library's default does for the block kinds
 * used here, and counts. */
static inline int vmm_discard_cb(void *opaque, const PcrRamBlock *block, uint64_t start,
                                 uint64_t length)
{
    vmm *v = opaque;
    pthread_mutex_lock(&v->lock);
    v->discard_cb_calls++;
    v->discard_cb_bytes += length;
    pthread_mutex_unlock(&v->lock);
    uint8_t *addr = (uint8_t *)block->host + start;
    if (block->fd >= 0) {
        if (fallocate(block->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      (off_t)(block->fd_offset + start), (off_t)length) != 0)
            return -errno;
        return 0;
    }
    if (madvise(addr, length, block->shared ? MADV_REMOVE : MADV_DONTNEED) != 0)
        return -errno;
    return 0;
}

static inline void vmm_init(vmm *v, vmm_serve serve)
{
    memset(v, 0, sizeof *v);
    pthread_mutex_init(&v->lock, NULL);
    pthread_cond_init(&v->cond, NULL);
    v->serve = serve;
    v->last_named = -1;
    v->ops.foreach_ram_block = vmm_foreach_cb;
    v->ops.request_page = vmm_request_cb;
    v->ops.state_changed = vmm_state_cb;
    v->ops.shut = vmm_shut_cb;
    v->ops.balloon_inhibit = vmm_balloon_cb;
    v->ops.target_page_size = 4096;
}

/* Creates the library's destination for `v` (call after adding the blocks). */
static inline void vmm_create(vmm *v)
{
    size_t largest = 4096;
    for (int i = 0; i < v->nblocks; i++)
        if (v->blocks[i].real_page_size > largest)
            largest = v->blocks[i].real_page_size;
    v->direct_buf_len = largest;
    v->direct_buf = aligned_alloc(4096, largest);
    CHECK(v->direct_buf != NULL);
    v->mis = PCR(pcr_incoming_new)(&v->ops, v);
    CHECK(v->mis != NULL);
}

static inline void *vmm_server_main(void *arg)
{
    vmm *v = arg;
    pthread_mutex_lock(&v->lock);
    for (;;) {
        while (!v->server_quit && v->queue_head == v->nreqs)
            pthread_cond_wait(&v->cond, &v->lock);
        if (v->queue_head == v->nreqs && v->server_quit)
            break;
        vmm_request r = v->reqs[v->queue_head++];
        pthread_mutex_unlock(&v->lock);
        if (r.block >= 0 && r.offset % v->blocks[r.block].real_page_size == 0 &&
            r.offset + r.length <= v->blocks[r.block].map_length) {
            void *tmp = PCR(pcr_get_tmp_page)(v->mis);
            pthread_mutex_lock(&v->lock);
            if (tmp == NULL)
                vmm_anomaly(v, "pcr_get_tmp_page returned NULL");
            else if (v->tmp_page != NULL && v->tmp_page != tmp)
                vmm_anomaly(v, "pcr_get_tmp_page moved from %p to %p", v->tmp_page, tmp);
            v->tmp_page = tmp;
            pthread_mutex_unlock(&v->lock);
            if (tmp)
                vmm_place(v, r.block, r.offset, tmp);
        }
        pthread_mutex_lock(&v->lock);
    }
    pthread_mutex_unlock(&v->lock);
    return NULL;
}

static inline void vmm_start_server(vmm *v)
{
    pthread_mutex_lock(&v->lock);
    v->server_quit = false;
    v->queue_head = v->nreqs; /* serve requests from now on */
    pthread_mutex_unlock(&v->lock);
    CHECK(pthread_create(&v->server, NULL, vmm_server_main, v) == 0);
    v->server_running = true;
}

static inline void vmm_stop_server(vmm *v)
{
    if (!v->server_running)
        return;
    pthread_mutex_lock(&v->lock);
    v->server_quit = true;
    pthread_cond_broadcast(&v->cond);
    pthread_mutex_unlock(&v->lock);
    pthread_join(v->server, NULL);
    v->server_running = false;
}

/* Waits until at least `n` requests were recorded (or `timeout_ms` passed). */
static inline bool vmm_wait_requests(vmm *v, size_t n, unsigned timeout_ms)
{
    double end = pcr_now() + timeout_ms / 1000.0 * (pcr_under_valgrind() ? 10 : 1);
    pthread_mutex_lock(&v->lock);
    while (v->nreqs < n && pcr_now() < end) {
        pthread_mutex_unlock(&v->lock);
        pcr_sleep_ms(1);
        pthread_mutex_lock(&v->lock);
    }
    bool ok = v->nreqs >= n;
    pthread_mutex_unlock(&v->lock);
    return ok;
}

static inline size_t vmm_nreqs(vmm *v)
{
    pthread_mutex_lock(&v->lock);
    size_t n = v->nreqs;
    pthread_mutex_unlock(&v->lock);
    return n;
}

static inline void vmm_check_no_anomaly(vmm *v)
{
    pthread_mutex_lock(&v->lock);
    int n = v->anomalies;
    char last[512];
    snprintf(last, sizeof last, "%s", v->anomaly);
    pthread_mutex_unlock(&v->lock);
    if (n)
        pcr_fail("%d anomal%s in callbacks, last: %s", n, n == 1 ? "y" : "ies", last);
}

static inline PcrStats vmm_stats_now(vmm *v)
{
    PcrStats s;
    memset(&s, 0xff, sizeof s);
    CHECK_EQ(PCR(pcr_incoming_get_stats)(v->mis, &s), 0);
    return s;
}

/* The counters once the fault thread is done with the messages it has read. The fault
 * thread counts a fault when it reads it and the request when request_page returns; a
 * callback that places the page itself wakes the faulting thread before that, so a test
 * that reads the counters right after its touch returned may see the fault without its
 * request. Waits (up to 2 s) until every fault read is accounted for. */
static inline PcrStats vmm_stats(vmm *v)
{
    double end = pcr_now() + (pcr_under_valgrind() ? 20.0 : 2.0);
    for (;;) {
        PcrStats s = vmm_stats_now(v);
        if (s.faults == s.requests + s.request_errors + s.duplicate_faults + s.late_faults +
                            s.faults_outside ||
            pcr_now() > end)
            return s;
        pcr_sleep_ms(1);
    }
}

/* Every fault message is exactly one of: a request made, a request that failed, a duplicate,
 * a late fault, a fault outside the blocks. */
static inline void vmm_check_stats_invariant(const PcrStats *s)
{
    CHECK_EQ_U64(s->faults, s->requests + s->request_errors + s->duplicate_faults +
                                s->late_faults + s->faults_outside);
}

static inline void vmm_destroy(vmm *v)
{
    vmm_stop_server(v);
    if (v->mis)
        PCR(pcr_incoming_free)(v->mis);
    v->mis = NULL;
    for (int i = 0; i < v->nblocks; i++) {
        vmm_block *b = &v->blocks[i];
        if (b->host)
            munmap(b->host, b->map_length);
        if (b->fd >= 0)
            close(b->fd);
        free(b->zero_pages);
        b->host = NULL;
        b->fd = -1;
        b->zero_pages = NULL;
    }
    v->nblocks = 0;
    free(v->direct_buf);
    v->direct_buf = NULL;
    pthread_cond_destroy(&v->cond);
    pthread_mutex_destroy(&v->lock);
}

/* Whether the (base) page at `addr` is resident, by mincore(2), without touching it. */
static inline bool pcr_resident(void *addr)
{
    unsigned char vec[1] = {0};
    if (mincore(addr, 1, vec) != 0)
        pcr_fail("mincore(%p): %s", addr, strerror(errno));
    return (vec[0] & 1) != 0;
}

/* ---- touching guest memory --------------------------------------------------------------- */

/* Reads the 8 bytes at `addr`. Natively a plain load (the thread blocks in the page fault
 * until the page is placed). Under valgrind the kernel does the access inside write(2) to a
 * pipe, so that the thread blocks in a syscall, where valgrind lets the other threads (the
 * library's fault thread) run. */
static inline uint64_t pcr_touch_read(const void *addr)
{
    uint64_t value = 0;
    if (!pcr_under_valgrind()) {
        value = *(const volatile uint64_t *)addr;
        return value;
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        pcr_fail("pipe2: %s", strerror(errno));
    ssize_t n = write(p[1], addr, sizeof value);
    if (n != (ssize_t)sizeof value)
        pcr_fail("write(pipe, %p): %zd (%s)", addr, n, strerror(errno));
    n = read(p[0], &value, sizeof value);
    if (n != (ssize_t)sizeof value)
        pcr_fail("read(pipe): %zd (%s)", n, strerror(errno));
    close(p[0]);
    close(p[1]);
    return value;
}

/* Writes `value` to the 8 bytes at `addr` (see pcr_touch_read). */
static inline void pcr_touch_write(void *addr, uint64_t value)
{
    if (!pcr_under_valgrind()) {
        *(volatile uint64_t *)addr = value;
        return;
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        pcr_fail("pipe2: %s", strerror(errno));
    ssize_t n = write(p[1], &value, sizeof value);
    if (n != (ssize_t)sizeof value)
        pcr_fail("write(pipe): %zd (%s)", n, strerror(errno));
    n = read(p[0], addr, sizeof value);
    if (n != (ssize_t)sizeof value)
        pcr_fail("read(pipe, %p): %zd (%s)", addr, n, strerror(errno));
    close(p[0]);
    close(p[1]);
}

/* Checks that page `off` of block `bi` (present) holds its content, or zeros if it was
 * served as a zero page. */
static inline void vmm_check_page(vmm *v, int bi, uint64_t off)
{
    vmm_block *b = &v->blocks[bi];
    const uint64_t *w = (const uint64_t *)(const void *)(b->host + off);
    bool zero = b->zero_pages[off / b->real_page_size];
    for (uint64_t i = 0; i < b->real_page_size / 8; i++) {
        uint64_t want = zero ? 0 : pcr_word(bi, off + i * 8);
        if (w[i] != want)
            pcr_fail("block %s page +%#" PRIx64 " word %" PRIu64 ": %#" PRIx64 ", expected %#" PRIx64
                     " (%s page)",
                     b->name, off, i, w[i], want, zero ? "zero" : "data");
    }
}

#endif /* POSTCOPY_RAM_TEST_UTIL_H */
