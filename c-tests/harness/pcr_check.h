/*
 * The test lifecycle: CHECK* macros that print file:line and exit(1); pcr_skip() exits with
 * 77 (ctest SKIP_RETURN_CODE); pcr_test_begin() arms a watchdog alarm that turns a hang
 * into a failure and installs the log capture; huge page pool management that raises the
 * 2 MiB pool when needed and puts the original size back on every exit path (exit, failed
 * check, signals, watchdog); /proc/self/fd counting for descriptor-leak checks; time.
 */
#ifndef PCR_HARNESS_CHECK_H
#define PCR_HARNESS_CHECK_H

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

#include "pcr_lib.h"

/* The running test's name (pcr_test_begin). */
extern const char *pcr_test_name;

/* Prints "FAIL: ..." and exits 1 (atexit handlers put the huge page pool back). */
__attribute__((noreturn, format(printf, 1, 2))) void pcr_fail(const char *fmt, ...);
/* Prints "SKIP: ..." and exits 77. */
__attribute__((noreturn, format(printf, 1, 2))) void pcr_skip(const char *fmt, ...);

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

/* Whether pages must be touched through syscalls: under valgrind, or PCR_TOUCH=syscall
 * (PCR_TOUCH=direct forces plain loads and stores). */
bool pcr_under_valgrind(void);
/* CLOCK_MONOTONIC in seconds. */
double pcr_now(void);
void pcr_sleep_ms(unsigned ms);

/* Open descriptors of the process, and a listing of them on stderr. */
int pcr_count_fds(void);
void pcr_list_fds(void);

/* Names the test, arms the watchdog and fatal-signal handlers, installs the log capture.
 * Call first in main() (test_dlopen.c: pcr_test_begin_common, once its table is filled). */
void pcr_test_begin_common(const char *name, unsigned timeout_s);
#ifndef PCR_TEST_NO_DIRECT_LINK
void pcr_test_begin(const char *name, unsigned timeout_s);
#endif
void pcr_test_pass(void);

long pcr_read_long(const char *path);
bool pcr_write_long(const char *path, long v);
/* Makes sure at least `needed` free 2 MiB huge pages exist, raising the pool
 * (/proc/sys/vm/nr_hugepages when 2 MiB is the default huge page size, else the sysfs
 * file of the 2 MiB pool) if needed; the original size is put back at exit. Skips the test
 * when they cannot be had. */
void pcr_hugepages_require(long needed);

#endif /* PCR_HARNESS_CHECK_H */
