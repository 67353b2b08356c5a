/* The test lifecycle (pcr_check.h). */
#include "pcr_check.h"
#include "pcr_log.h"

const char *pcr_test_name = "test";
static long pcr_hp_orig = -1;            /* nr_hugepages to put back, -1: untouched */
static char pcr_hp_path[128];            /* the nr_hugepages file we changed */
static char pcr_hp_orig_text[32];        /* its original content, for the signal path */

static void pcr_hugepages_restore_signal_safe(void)
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

static void pcr_hugepages_restore(void)
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

static void pcr_fatal_signal(int sig)
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

void pcr_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: FAIL: ", pcr_test_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1); /* atexit handlers put the huge page pool back */
}

void pcr_skip(const char *fmt, ...)
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

bool pcr_under_valgrind(void)
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

double pcr_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void pcr_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- descriptors -------------------------------------------------------------------- */

int pcr_count_fds(void)
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

void pcr_list_fds(void)
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
void pcr_test_begin_common(const char *name, unsigned timeout_s)
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
void pcr_test_begin(const char *name, unsigned timeout_s)
{
    pcr_test_begin_common(name, timeout_s);
}
#endif

void pcr_test_pass(void)
{
    printf("%s: PASS\n", pcr_test_name);
}

/* ---- huge pages ---------------------------------------------------------------------- */

long pcr_read_long(const char *path)
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

bool pcr_write_long(const char *path, long v)
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
void pcr_hugepages_require(long needed)
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

