/*
 * test_recovery.c: issue 10 through the C API, on real userfaultfd (also run under
 * valgrind and ASan):
 *  1. a failing request_page keeps its page pending and pauses requests; later faults
 *     are recorded, not sent; pcr_incoming_resend_pending re-sends them (first one named)
 *     and the threads complete with the right data; pcr_incoming_pause_requests;
 *  2. fault_thread_started / _stopping run on the fault thread; block_opaque comes with
 *     every request (the harness checks it); never_send_shut;
 *  3. pcr_incoming_mark_received + placements + a live discard give an exact
 *     RECV_BITMAP (decoded with pcr_wire's format: be64 size, LE bits, be64 end mark);
 *  4. pcr_incoming_abort: a thread blocked on a missing page gets SIGBUS (poison, Linux
 *     6.6) or a zero page (older kernels, and the result says so), never hangs;
 *  5. blocktime: register_vcpu + get_blocktime, readable after cleanup;
 *  6. NULL and misuse give -EINVAL / -EDEADLK, never a crash.
 */
#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"
#include "harness/pcr_touch.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/syscall.h>

typedef struct toucher {
    vmm *v;
    int bi;
    uint64_t off;
    uint64_t value;
    bool may_fault; /* the page may be poisoned (phase 3) */
    int sigbus;     /* 1: the read raised SIGBUS; 2: the kernel's access failed (EFAULT) */
    pthread_t thread;
} toucher;

static __thread sigjmp_buf *volatile bus_jmp;
static volatile sig_atomic_t sigbus_count;
static volatile uintptr_t sigbus_addr;

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
    (void)sig;
    (void)ctx;
    sigbus_count++;
    sigbus_addr = (uintptr_t)info->si_addr;
    if (bus_jmp)
        siglongjmp(*bus_jmp, 1);
    _exit(3); /* a SIGBUS nobody expected */
}

/* Reads a page that may be poisoned. Directly, catching SIGBUS; under valgrind (where a
 * thread blocked in a fault holds valgrind's lock) through write(2) to a pipe, where the
 * kernel's access to a poisoned page fails with EFAULT instead. */
static void read_may_fault(toucher *t)
{
    const void *addr = t->v->blocks[t->bi].host + t->off;
    if (!pcr_under_valgrind()) {
        sigjmp_buf env;
        if (sigsetjmp(env, 1)) {
            bus_jmp = NULL;
            t->sigbus = 1;
            return;
        }
        bus_jmp = &env;
        t->value = *(const volatile uint64_t *)addr;
        bus_jmp = NULL;
        return;
    }
    int p[2];
    CHECK(pipe(p) == 0);
    ssize_t n = write(p[1], addr, sizeof t->value);
    if (n < 0 && errno == EFAULT)
        t->sigbus = 2;
    else if (n == (ssize_t)sizeof t->value)
        CHECK(read(p[0], &t->value, sizeof t->value) == (ssize_t)sizeof t->value);
    else
        CHECK_MSG(false, "write from guest memory: %s", strerror(errno));
    close(p[0]);
    close(p[1]);
}

static void *toucher_main(void *arg)
{
    toucher *t = arg;
    if (!t->may_fault) {
        t->value = pcr_touch_read(t->v->blocks[t->bi].host + t->off);
        return NULL;
    }
    read_may_fault(t);
    return NULL;
}

static void touch_async_ex(toucher *t, vmm *v, int bi, uint64_t page, bool may_fault)
{
    memset(t, 0, sizeof *t);
    t->may_fault = may_fault;
    t->v = v;
    t->bi = bi;
    t->off = page * v->blocks[bi].real_page_size;
    CHECK(pthread_create(&t->thread, NULL, toucher_main, t) == 0);
}

static void touch_async(toucher *t, vmm *v, int bi, uint64_t page)
{
    touch_async_ex(t, v, bi, page, false);
}

static int thread_started_calls, thread_stopping_calls, callbacks_off_thread;

static bool on_fault_thread(void)
{
    char name[32] = "";
    pthread_getname_np(pthread_self(), name, sizeof name);
    return strcmp(name, "postcopy/fault") == 0;
}

static void started_cb(void *opaque)
{
    (void)opaque;
    thread_started_calls++;
    callbacks_off_thread += !on_fault_thread();
}

static void stopping_cb(void *opaque)
{
    (void)opaque;
    thread_stopping_calls++;
    callbacks_off_thread += !on_fault_thread();
}

static void wait_pending(vmm *v, uint64_t n)
{
    for (int i = 0; i < 5000 && vmm_stats(v).pending_pages != n; i++)
        pcr_sleep_ms(1);
    CHECK_EQ_U64(vmm_stats(v).pending_pages, n);
}

static void phase_pending_and_resend(void)
{
    printf("phase 1: failed requests stay pending; resend_pending; pause_requests\n");
    vmm v;
    vmm_init(&v, SERVE_DIRECT);
    v.ops.fault_thread_started = started_cb;
    v.ops.fault_thread_stopping = stopping_cb;
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 32);
    vmm_add_block(&v, "other", BLK_MEMFD_SHARED, 8);
    vmm_create(&v);
    CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
    CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0);
    pthread_mutex_lock(&v.lock);
    v.fail_requests = 1;
    pthread_mutex_unlock(&v.lock);
    toucher t[4];
    touch_async(&t[0], &v, 0, 3);
    wait_pending(&v, 1);
    touch_async(&t[1], &v, 0, 9);
    touch_async(&t[2], &v, 1, 2);
    touch_async(&t[3], &v, 0, 3); /* same page: a duplicate */
    wait_pending(&v, 3);
    PcrStats s = vmm_stats(&v);
    CHECK_EQ_U64(s.request_errors, 1);
    CHECK_EQ_U64(s.paused_faults, 2);
    CHECK_EQ(vmm_nreqs(&v), 1); /* only the failed one reached the callback */
    int n = pcr_incoming_resend_pending(v.mis);
    CHECK_EQ(n, 3);
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i].thread, NULL);
        CHECK_EQ_U64(t[i].value, pcr_word(t[i].bi, t[i].off));
    }
    CHECK(v.reqs[1].named); /* the first re-sent request names its block */
    s = vmm_stats(&v);
    CHECK_EQ_U64(s.resent, 3);
    CHECK_EQ_U64(s.pending_pages, 0);
    vmm_check_stats_invariant(&s);

    /* The host pauses first: faults are recorded, then resumed with pause_requests(false). */
    CHECK_EQ(pcr_incoming_pause_requests(v.mis, true), 0);
    size_t before = vmm_nreqs(&v);
    touch_async(&t[0], &v, 0, 20);
    wait_pending(&v, 1);
    CHECK_EQ(vmm_nreqs(&v), before);
    CHECK_EQ(pcr_incoming_pause_requests(v.mis, false), 1);
    pthread_join(t[0].thread, NULL);
    CHECK_EQ_U64(t[0].value, pcr_word(0, 20 * 4096));
    CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
    CHECK_EQ(v.shut_calls, 1);
    CHECK(!v.shut_failed); /* recovered: not a failure */
    CHECK_EQ(thread_started_calls, 1);
    CHECK_EQ(thread_stopping_calls, 1);
    CHECK_EQ(callbacks_off_thread, 0);
    CHECK_EQ(pcr_incoming_resend_pending(v.mis), -EINVAL); /* after cleanup */
    vmm_check_no_anomaly(&v); /* includes: block_opaque matched every request's block */
    vmm_destroy(&v);
}

static void phase_recv_bitmap_and_never_shut(void)
{
    printf("phase 2: received bitmap (marks, placements, discards); never_send_shut\n");
    vmm v;
    vmm_init(&v, SERVE_NONE);
    v.ops.never_send_shut = true;
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 70);
    vmm_create(&v);
    uint8_t *h = v.blocks[0].host;
    CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
    /* precopy: the host copied pages 0..3 and 65 itself */
    CHECK_EQ(pcr_incoming_mark_received(v.mis, h, 4 * 4096), 0);
    CHECK_EQ(pcr_incoming_mark_received(v.mis, h + 65 * 4096, 4096), 0);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_mark_received(v.mis, h + 1, 4096), -EINVAL), "target");
    CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0);
    CHECK_EQ(vmm_place(&v, 0, 10 * 4096, v.direct_buf), 0);
    CHECK_EQ(pcr_incoming_discard_range(v.mis, "pc.ram", 2 * 4096, 4096), 0); /* after LISTEN */
    ptrdiff_t len = pcr_incoming_recv_bitmap_len(v.mis, "pc.ram");
    CHECK_EQ(len, 8 + 16 + 8); /* 70 bits: two words */
    uint8_t buf[64];
    LOG_EXPECT_ONE(CHECK(pcr_incoming_encode_recv_bitmap(v.mis, "pc.ram", buf, 10) < 0), "");
    CHECK_EQ(pcr_incoming_encode_recv_bitmap(v.mis, "pc.ram", buf, sizeof buf), len);
    uint64_t size = 0, mark = 0, w0 = 0, w1 = 0;
    for (int i = 0; i < 8; i++) {
        size = size << 8 | buf[i];
        mark = mark << 8 | buf[24 + i];
        w0 |= (uint64_t)buf[8 + i] << (8 * i);
        w1 |= (uint64_t)buf[16 + i] << (8 * i);
    }
    CHECK_EQ_U64(size, 16);
    CHECK_EQ_U64(mark, 0x0123456789abcdefULL);
    CHECK_EQ_U64(w0, (1ULL << 0) | (1ULL << 1) | (1ULL << 3) | (1ULL << 10));
    CHECK_EQ_U64(w1, 1ULL << (65 - 64));
    CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
    CHECK_EQ(v.shut_calls, 0); /* never_send_shut */
    vmm_destroy(&v);
}

static void phase_abort(void)
{
    printf("phase 3: abort: a blocked thread gets SIGBUS (or a zero page), never hangs\n");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGBUS, &sa, NULL) == 0);
    vmm v;
    vmm_init(&v, SERVE_NONE);
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 16);
    vmm_create(&v);
    CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
    CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0);
    CHECK_EQ(vmm_place(&v, 0, 0, v.direct_buf), 0);
    toucher t;
    touch_async_ex(&t, &v, 0, 5, true);
    wait_pending(&v, 1);
    PcrAbortResult r;
    CHECK_EQ(pcr_incoming_abort(v.mis, &r), 0);
    pthread_join(t.thread, NULL);
    CHECK_EQ_U64(r.pages_lost, 15);
    CHECK_EQ_U64(r.bytes_lost, 15 * 4096);
    if (r.poisoned && pcr_under_valgrind()) {
        CHECK_EQ(t.sigbus, 2); /* the kernel's own access: EFAULT */
    } else if (r.poisoned) {
        CHECK_EQ(t.sigbus, 1);
        CHECK_EQ(sigbus_addr, (uintptr_t)(v.blocks[0].host + 5 * 4096));
    } else {
        printf("no UFFDIO_POISON here: the lost pages were zero-filled\n");
        CHECK_EQ(t.sigbus, 0);
        CHECK_EQ_U64(t.value, 0);
    }
    CHECK_EQ_U64(vmm_stats(&v).pages_lost, 15);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_resend_pending(v.mis), -EPIPE), "abort");
    CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
    CHECK(v.shut_failed);
    vmm_destroy(&v);
}

static void phase_blocktime(void)
{
    printf("phase 4: blocktime, readable after cleanup\n");
    vmm v;
    vmm_init(&v, SERVE_NONE);
    v.ops.blocktime = true;
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 8);
    vmm_create(&v);
    CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
    CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0);
    toucher t;
    touch_async(&t, &v, 0, 1);
    wait_pending(&v, 1);
    pcr_sleep_ms(30);
    CHECK_EQ(vmm_place(&v, 0, 4096, v.direct_buf), 0);
    pthread_join(t.thread, NULL);
    CHECK_EQ(pcr_incoming_register_vcpu(v.mis, 2, (int32_t)syscall(SYS_gettid)), 0);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_register_vcpu(v.mis, PCR_MAX_VCPUS, 1), -EINVAL), "");
    CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
    PcrBlocktime bt;
    uint32_t per[4] = { 9, 9, 9, 9 };
    CHECK_EQ(pcr_incoming_get_blocktime(v.mis, &bt, per, 4), 0);
    CHECK(bt.enabled);
    CHECK_EQ(bt.vcpus, 1);
    CHECK_EQ_U64(bt.faults_timed, 1);
    CHECK(bt.latency_max_ns >= 25 * 1000 * 1000);
    uint64_t sum = 0;
    for (int i = 0; i < PCR_LATENCY_BUCKETS; i++)
        sum += bt.latency_buckets[i];
    CHECK_EQ_U64(sum, 1);
    CHECK_EQ(per[0], 0);
    CHECK_EQ(per[3], 0);
    printf("blocktime: thread ids %s, latency max %" PRIu64 " ns\n",
           bt.thread_id_available ? "available" : "unavailable", bt.latency_max_ns);
    vmm_destroy(&v);
}

static void phase_bad_inputs(void)
{
    printf("phase 5: NULL and misuse\n");
    PcrBlocktime bt;
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_resend_pending(NULL), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_pause_requests(NULL, true), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_abort(NULL, NULL), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_get_blocktime(NULL, &bt, NULL, 0), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK(pcr_incoming_recv_bitmap_len(NULL, "x") < 0), "NULL");
    vmm v;
    vmm_init(&v, SERVE_NONE);
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 4);
    vmm_create(&v);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_abort(v.mis, NULL), -EINVAL), "enable_notify");
    LOG_EXPECT_ONE(CHECK(pcr_incoming_recv_bitmap_len(v.mis, "pc.ram") < 0), "init");
    CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
    LOG_EXPECT_ONE(CHECK(pcr_incoming_encode_recv_bitmap(v.mis, NULL, NULL, 0) < 0), "NULL");
    LOG_EXPECT_ONE(CHECK(pcr_incoming_recv_bitmap_len(v.mis, "nope") < 0), "nope");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_get_blocktime(v.mis, &bt, NULL, 3), -EINVAL), "NULL");
    CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
    vmm_destroy(&v);
}

int main(void)
{
    pcr_test_begin("test_recovery", 60);
    phase_pending_and_resend();
    phase_recv_bitmap_and_never_shut();
    phase_abort();
    phase_blocktime();
    phase_bad_inputs();
    pcr_test_pass();
    return 0;
}
