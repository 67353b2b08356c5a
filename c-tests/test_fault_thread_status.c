/*
 * test_fault_thread_status.c: issue 17 item 3 through the C API, on real userfaultfd:
 *  1. the fault thread survives signals (a no-op SIGUSR1 handler installed without
 *     SA_RESTART, sent to it with tgkill) and bursts of pcr_incoming_resend_pending, in
 *     both wait modes: every page is served, every resend returns >= 0, and
 *     pcr_incoming_fault_thread_status reports no failure;
 *  2. a fault thread that stops on a fatal error (its userfaultfd replaced by a directory,
 *     whose read(2) fails with EISDIR) leaves a failed state that
 *     pcr_incoming_fault_thread_status reports, already from fault_thread_stopping, which
 *     runs once on the fault thread;
 *  3. NULL arguments give -EINVAL.
 */
#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"
#include "harness/pcr_touch.h"

#include <sys/syscall.h>

static atomic_int fault_tid;
static atomic_int stopping_calls, stopping_off_thread;
static PcrFaultThreadStatus status_in_stopping;
static struct PcrIncoming *volatile current_mis;

static void started_cb(void *opaque)
{
    (void)opaque;
    atomic_store(&fault_tid, (int)syscall(SYS_gettid));
}

static void stopping_cb(void *opaque)
{
    (void)opaque;
    char name[32] = "";
    pthread_getname_np(pthread_self(), name, sizeof name);
    if (strcmp(name, "postcopy/fault") != 0)
        atomic_fetch_add(&stopping_off_thread, 1);
    CHECK_EQ(pcr_incoming_fault_thread_status(current_mis, &status_in_stopping), 0);
    atomic_fetch_add(&stopping_calls, 1);
}

static void on_sigusr1(int sig)
{
    (void)sig;
}

static atomic_bool storm_stop;
static atomic_ullong signals_sent, resends_done;
static atomic_int resend_errors;

static void *signaller(void *arg)
{
    (void)arg;
    int tid = atomic_load(&fault_tid);
    while (!atomic_load(&storm_stop)) {
        if (syscall(SYS_tgkill, getpid(), tid, SIGUSR1) != 0)
            break;
        if (atomic_fetch_add(&signals_sent, 1) % 64 == 63)
            sched_yield();
    }
    return NULL;
}

static void *resender(void *arg)
{
    vmm *v = arg;
    while (!atomic_load(&storm_stop)) {
        if (pcr_incoming_resend_pending(v->mis) < 0)
            atomic_fetch_add(&resend_errors, 1);
        atomic_fetch_add(&resends_done, 1);
    }
    return NULL;
}

#define PAGES 256

static void phase_survive(uint32_t spin_wait_us)
{
    printf("phase 1: signals and resend bursts, spin_wait_us %u\n", spin_wait_us);
    if (pcr_under_valgrind()) {
        /* Valgrind serialises the threads: the signal and wake-up floods starve the fault
         * thread there (the run times out). The plain, ASan and UBSan builds run it. */
        printf("  under valgrind: phase 1 left out (floods starve valgrind's threads)\n");
        return;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigusr1;
    sa.sa_flags = 0; /* no SA_RESTART */
    sigemptyset(&sa.sa_mask);
    CHECK_EQ(sigaction(SIGUSR1, &sa, NULL), 0);

    vmm v;
    vmm_init(&v, SERVE_DIRECT);
    v.ops.fault_thread_started = started_cb;
    v.ops.spin_wait_us = spin_wait_us;
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, PAGES);
    vmm_create(&v);
    atomic_store(&fault_tid, 0);
    CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
    CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0);
    for (int i = 0; i < 5000 && atomic_load(&fault_tid) == 0; i++)
        pcr_sleep_ms(1);
    CHECK(atomic_load(&fault_tid) != 0);

    atomic_store(&storm_stop, false);
    atomic_store(&signals_sent, 0);
    atomic_store(&resends_done, 0);
    atomic_store(&resend_errors, 0);
    pthread_t sig, res;
    CHECK_EQ(pthread_create(&sig, NULL, signaller, NULL), 0);
    CHECK_EQ(pthread_create(&res, NULL, resender, &v), 0);
    for (uint64_t p = 0; p < PAGES / 2; p++)
        vmm_check_page(&v, 0, p * 4096);
    /* Enough signals and empty wake-ups to kill the thread of d48cf57. */
    while (atomic_load(&signals_sent) < 500000 || atomic_load(&resends_done) < 20000)
        pcr_sleep_ms(1);
    for (uint64_t p = PAGES / 2; p < PAGES; p++)
        vmm_check_page(&v, 0, p * 4096);
    atomic_store(&storm_stop, true);
    pthread_join(sig, NULL);
    pthread_join(res, NULL);
    printf("  %llu signals, %llu resends\n", (unsigned long long)atomic_load(&signals_sent),
           (unsigned long long)atomic_load(&resends_done));
    CHECK_EQ(atomic_load(&resend_errors), 0);

    PcrFaultThreadStatus st;
    memset(&st, 0xff, sizeof st);
    CHECK_EQ(pcr_incoming_fault_thread_status(v.mis, &st), 0);
    CHECK(!st.failed && !st.panicked);
    CHECK_EQ(st.error, 0);
    PcrStats s = vmm_stats(&v);
    CHECK_EQ_U64(s.pages_placed, PAGES);
    vmm_check_stats_invariant(&s);
    CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
    vmm_check_no_anomaly(&v);
    vmm_destroy(&v);
}

/* The descriptor of this process's userfaultfd, or -1. */
static int find_uffd(void)
{
    DIR *d = opendir("/proc/self/fd");
    CHECK(d != NULL);
    int found = -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char path[300], target[128];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n <= 0)
            continue;
        target[n] = 0;
        if (strcmp(target, "anon_inode:[userfaultfd]") == 0)
            found = atoi(e->d_name);
    }
    closedir(d);
    return found;
}

static void phase_fatal_error(void)
{
    printf("phase 2: a fatal read error is a failed state, told to fault_thread_stopping\n");
    vmm v;
    vmm_init(&v, SERVE_DIRECT);
    v.ops.fault_thread_stopping = stopping_cb;
    v.ops.spin_wait_us = 0;
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 8);
    vmm_create(&v);
    current_mis = v.mis;
    atomic_store(&stopping_calls, 0);
    CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
    CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0);
    PcrFaultThreadStatus st;
    CHECK_EQ(pcr_incoming_fault_thread_status(v.mis, &st), 0);
    CHECK(!st.failed);
    int uffd = find_uffd();
    CHECK(uffd >= 0);
    int dir = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(dir >= 0);
    /* The fault thread's next read(2) fails with EISDIR; the wake-up makes it read. */
    CHECK_EQ(dup2(dir, uffd), uffd);
    close(dir);
    (void)pcr_incoming_pause_requests(v.mis, true);
    for (int i = 0; i < 5000 && atomic_load(&stopping_calls) == 0; i++)
        pcr_sleep_ms(1);
    CHECK_EQ(atomic_load(&stopping_calls), 1);
    CHECK_EQ(atomic_load(&stopping_off_thread), 0);
    CHECK(status_in_stopping.failed);
    CHECK(!status_in_stopping.panicked);
    CHECK_EQ(status_in_stopping.error, EISDIR);
    CHECK_EQ(pcr_incoming_fault_thread_status(v.mis, &st), 0);
    CHECK(st.failed && !st.panicked);
    CHECK_EQ(st.error, EISDIR);
    CHECK_EQ(pcr_incoming_resend_pending(v.mis), -ESRCH);
    /* The descriptor is no userfaultfd any more: cleanup's unregister fails (logged). */
    CHECK(pcr_incoming_cleanup(v.mis) < 0);
    CHECK(v.shut_calls == 1 && v.shut_failed);
    CHECK_EQ(pcr_incoming_fault_thread_status(v.mis, &st), 0);
    CHECK(st.failed);
    current_mis = NULL;
    vmm_destroy(&v);
}

static void phase_bad_inputs(void)
{
    printf("phase 3: NULL arguments\n");
    PcrFaultThreadStatus st;
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_fault_thread_status(NULL, &st), -EINVAL), "NULL");
    vmm v;
    vmm_init(&v, SERVE_DIRECT);
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 4);
    vmm_create(&v);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_fault_thread_status(v.mis, NULL), -EINVAL), "NULL");
    vmm_destroy(&v);
}

int main(void)
{
    pcr_test_begin("test_fault_thread_status", 120);
    phase_survive(0);
    phase_survive(1000000);
    phase_fatal_error();
    phase_bad_inputs();
    pcr_test_pass();
    return 0;
}
