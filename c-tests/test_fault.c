/*
 * test_fault.c: the destination side on real userfaultfd, driven like a hypervisor would.
 *
 * Three 4 KiB-page blocks (private anonymous, shared memfd, shared anonymous). Checks:
 * requests name the right block (NULL for same-block repeats, named again after a failed
 * request and after pcr_incoming_reset_request_block), with page-aligned offsets and
 * page-size lengths; faulting threads read exactly the placed bytes (zero for
 * pcr_place_page_zero pages), also for write faults; pages placed ahead of a touch
 * do not fault; pcr_place_page on a present page gives -EEXIST; the batched
 * pcr_place_pages*; the temporary page; many threads faulting on the same pages
 * (each page requested once); a failing request_page; cleanup while a thread is blocked;
 * stats match what happened; callbacks (state, balloon, shut); no descriptor leaked.
 *
 * Built twice: against the shared library (test_fault) and the static one
 * (test_fault_static).
 */
#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"
#include "harness/pcr_touch.h"
#ifdef PCR_TEST_SEED_ABI
#include "postcopy_ram_seed.h"
#endif

#define PC_PAGES 64
#define VGA_PAGES 16
#define SHM_PAGES 16
#define NTHREADS 4

typedef struct toucher {
    vmm *v;
    int bi;
    uint64_t off;
    bool write;
    uint64_t value;  /* written, or read */
    pthread_t thread;
} toucher;

static void *toucher_main(void *arg)
{
    toucher *t = arg;
    uint8_t *addr = t->v->blocks[t->bi].host + t->off;
    if (t->write)
        pcr_touch_write(addr + 8, t->value);
    else
        t->value = pcr_touch_read(addr);
    return NULL;
}

static void touch_async(toucher *t, vmm *v, int bi, uint64_t page, bool write, uint64_t value)
{
    t->v = v;
    t->bi = bi;
    t->off = page * v->blocks[bi].real_page_size;
    t->write = write;
    t->value = value;
    CHECK(pthread_create(&t->thread, NULL, toucher_main, t) == 0);
}

static uint64_t expected_word(vmm *v, int bi, uint64_t off)
{
    return v->blocks[bi].zero_pages[off / v->blocks[bi].real_page_size] ? 0 : pcr_word(bi, off);
}

/* Touch (bi, page) from a thread, wait for its request, check it, place it from this thread
 * (as QEMU's listen thread would), and check what the thread read. */
static void ordered_touch(vmm *v, int bi, uint64_t page, bool expect_named, bool write)
{
    size_t before = vmm_nreqs(v);
    toucher t;
    touch_async(&t, v, bi, page, write, 0xfeedface00000000ULL | page);
    CHECK_MSG(vmm_wait_requests(v, before + 1, 5000), "no request for %s page %" PRIu64,
              v->blocks[bi].name, page);
    vmm_request r = v->reqs[before];
    CHECK_EQ(r.block, bi);
    CHECK_MSG(r.named == expect_named, "request %zu for %s page %" PRIu64 ": named=%d, expected %d",
              before, v->blocks[bi].name, page, r.named, expect_named);
    CHECK_EQ_U64(r.offset, page * v->blocks[bi].real_page_size);
    CHECK_EQ_U64(r.length, v->blocks[bi].real_page_size);
    CHECK_EQ(vmm_place(v, bi, r.offset, v->direct_buf), 0);
    pthread_join(t.thread, NULL);
    CHECK_EQ(vmm_nreqs(v), before + 1);
    if (write) {
        const uint64_t *w = (const uint64_t *)(const void *)(v->blocks[bi].host + t.off);
        CHECK_EQ_U64(w[1], t.value);
        CHECK_EQ_U64(w[0], expected_word(v, bi, t.off));
        CHECK_EQ_U64(w[2], expected_word(v, bi, t.off + 16));
        /* Put the placed content back so that later whole-page checks hold. */
        ((uint64_t *)(void *)(v->blocks[bi].host + t.off))[1] = expected_word(v, bi, t.off + 8);
    } else {
        CHECK_EQ_U64(t.value, expected_word(v, bi, t.off));
        vmm_check_page(v, bi, t.off);
    }
}

typedef struct sweeper {
    vmm *v;
    int id;
    pthread_t thread;
    uint64_t pages_read;
} sweeper;

/* Reads the first word of every page of every block (pages PC_PAGES-8.. of pc.ram are kept
 * for later phases), starting at a different place per thread, and checks it. */
static void *sweeper_main(void *arg)
{
    sweeper *s = arg;
    vmm *v = s->v;
    for (int bi = 0; bi < v->nblocks; bi++) {
        vmm_block *b = &v->blocks[bi];
        uint64_t pages = b->map_length / b->real_page_size;
        uint64_t usable = bi == 0 ? pages - 8 : pages;
        for (uint64_t k = 0; k < usable; k++) {
            uint64_t page = (k + (uint64_t)s->id * 5) % usable;
            uint64_t off = page * b->real_page_size + (uint64_t)(s->id % 4) * 8;
            uint64_t got = pcr_touch_read(b->host + off);
            uint64_t want = expected_word(v, bi, off);
            if (got != want)
                pcr_fail("sweeper %d: %s+%#" PRIx64 " read %#" PRIx64 ", expected %#" PRIx64, s->id,
                         b->name, off, got, want);
            s->pages_read++;
        }
    }
    return NULL;
}

int main(void)
{
    pcr_test_begin("test_fault", 60);
    const int fds_before = pcr_count_fds();

#ifdef PCR_TEST_SEED_ABI
    LOG_EXPECT_NONE(CHECK(postcopy_ram_supported_by_host()));
#endif

    vmm v;
    vmm_init(&v, SERVE_NONE);
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, PC_PAGES);
    vmm_add_block(&v, "vga.vram", BLK_MEMFD_SHARED, VGA_PAGES);
    vmm_add_block(&v, "shm.ram", BLK_ANON_SHARED, SHM_PAGES);
    for (int p = 0; p < PC_PAGES; p++)
        v.blocks[0].zero_pages[p] = (p % 7 == 3);
    v.blocks[1].zero_pages[5] = 1;
    v.blocks[2].zero_pages[0] = 1;
    vmm_create(&v);
    const size_t ram_pages = (PC_PAGES + VGA_PAGES + SHM_PAGES) * (size_t)getpagesize() / 4096;
    uint64_t manual_placed = 0, manual_zero = 0, manual_eexist = 0;

    LOG_EXPECT_NONE(CHECK(pcr_incoming_supported_by_host(v.mis)));
#ifdef PCR_TEST_SEED_ABI
    LOG_EXPECT_NONE(CHECK(postcopy_ram_supported_by_host())); /* the newest live one: v */
#endif
    CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_NONE);
    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_init(v.mis, ram_pages), 0));
    CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_ADVISE);
#ifdef PCR_TEST_SEED_ABI
    CHECK_EQ(postcopy_state_get(), PCR_STATE_ADVISE);
#endif

    /* The temporary page: usable (as large as the largest page), and the same every time. */
    uint8_t *tmp = pcr_get_tmp_page(v.mis);
    CHECK(tmp != NULL);
    memset(tmp, 0xa5, (size_t)getpagesize());
    CHECK(pcr_get_tmp_page(v.mis) == tmp);
    CHECK(tmp[0] == 0xa5 && tmp[getpagesize() - 1] == 0xa5);

    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0));
    CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_LISTENING);
    CHECK_EQ(v.balloon_calls, 1);
    CHECK(v.balloon_inhibited);
    CHECK(pcr_get_tmp_page(v.mis) == tmp);

    /* Phase 1: one touch at a time; exact request sequence. */
    printf("phase 1: ordered faults\n");
    ordered_touch(&v, 0, 0, true, false);  /* first request names its block */
    ordered_touch(&v, 0, 1, false, false); /* same block: NULL */
    ordered_touch(&v, 0, 3, false, false); /* a zero page */
    ordered_touch(&v, 1, 0, true, false);  /* another block: named */
    ordered_touch(&v, 1, 1, false, true);  /* write fault, same block */
    ordered_touch(&v, 0, 2, true, true);   /* back to pc.ram: named */
    ordered_touch(&v, 2, 3, true, false);
    ordered_touch(&v, 2, 4, false, false);
    ordered_touch(&v, 1, 5, true, false);  /* zero page of the memfd block */
    ordered_touch(&v, 2, 0, true, false);  /* zero page of the shmem block */
    vmm_check_no_anomaly(&v);

    /* Phase 2: pages placed ahead of any touch (the background stream) never fault. */
    printf("phase 2: pages placed ahead, -EEXIST, batched placement\n");
    size_t nreq = vmm_nreqs(&v);
    for (uint64_t p = 10; p < 14; p++)
        CHECK(vmm_place(&v, 0, p * 4096, v.direct_buf) == 0);
    for (uint64_t p = 10; p < 14; p++) {
        uint64_t got = pcr_touch_read(v.blocks[0].host + p * 4096 + 64);
        CHECK_EQ_U64(got, expected_word(&v, 0, p * 4096 + 64));
        vmm_check_page(&v, 0, p * 4096);
    }
    CHECK_EQ(vmm_nreqs(&v), nreq);
    /* Placing a present page: -EEXIST, no log line at warn level, content unchanged. */
    pcr_fill_page(0, 10 * 4096, v.direct_buf, 4096);
    memset(v.direct_buf, 0x77, 64);
    LOG_EXPECT_NONE(CHECK_EQ(pcr_place_page(v.mis, v.blocks[0].host + 10 * 4096,
                                                     v.direct_buf, 4096), -EEXIST));
    LOG_EXPECT_NONE(CHECK_EQ(pcr_place_page_zero(v.mis, v.blocks[0].host + 11 * 4096, 4096),
                             -EEXIST));
    manual_eexist += 2;
    vmm_check_page(&v, 0, 10 * 4096);
    vmm_check_page(&v, 0, 11 * 4096);
    /* Batched: 4 data pages, then 2 zero pages. */
    {
        uint8_t *run = aligned_alloc(4096, 4 * 4096);
        CHECK(run != NULL);
        for (uint64_t p = 20; p < 24; p++) {
            v.blocks[0].zero_pages[p] = 0;
            pcr_fill_page(0, p * 4096, run + (p - 20) * 4096, 4096);
        }
        LOG_EXPECT_NONE(CHECK_EQ(pcr_place_pages(v.mis, v.blocks[0].host + 20 * 4096, run,
                                                          4 * 4096), 4));
        manual_placed += 4;
        for (uint64_t p = 24; p < 26; p++)
            v.blocks[0].zero_pages[p] = 1;
        LOG_EXPECT_NONE(CHECK_EQ(pcr_place_pages_zero(v.mis, v.blocks[0].host + 24 * 4096,
                                                               2 * 4096), 2));
        manual_zero += 2;
        for (uint64_t p = 20; p < 26; p++)
            vmm_check_page(&v, 0, p * 4096);
        /* A run over present pages only: nothing placed, nothing broken. */
        LOG_EXPECT_NONE(CHECK_EQ(pcr_place_pages(v.mis, v.blocks[0].host + 20 * 4096, run,
                                                          2 * 4096), 0));
        manual_eexist += 2;
        free(run);
    }
    CHECK_EQ(vmm_nreqs(&v), nreq);
    vmm_check_no_anomaly(&v);

    /* Phase 3: NTHREADS threads sweep every page, served by a server thread using the
     * temporary page; then the same for the already-present pages (no new request). */
    printf("phase 3: %d threads, server thread with the temporary page\n", NTHREADS);
    pthread_mutex_lock(&v.lock);
    v.serve = SERVE_THREAD;
    pthread_mutex_unlock(&v.lock);
    vmm_start_server(&v);
    sweeper sw[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        sw[i] = (sweeper){.v = &v, .id = i};
        CHECK(pthread_create(&sw[i].thread, NULL, sweeper_main, &sw[i]) == 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(sw[i].thread, NULL);
    vmm_stop_server(&v);
    vmm_check_no_anomaly(&v);
    CHECK(v.tmp_page == tmp);
    /* Every page of the sweep is present with its content, and was requested at most once
     * (exactly once unless placed ahead). */
    for (int bi = 0; bi < v.nblocks; bi++) {
        vmm_block *b = &v.blocks[bi];
        uint64_t pages = b->map_length / b->real_page_size;
        uint64_t usable = bi == 0 ? pages - 8 : pages;
        for (uint64_t p = 0; p < usable; p++) {
            vmm_check_page(&v, bi, p * b->real_page_size);
            int count = 0;
            for (size_t i = 0; i < v.nreqs; i++)
                if (v.reqs[i].block == bi && v.reqs[i].offset == p * b->real_page_size)
                    count++;
            bool ahead = bi == 0 && ((p >= 10 && p < 14) || (p >= 20 && p < 26));
            CHECK_MSG(count == (ahead ? 0 : 1), "%s page %" PRIu64 " requested %d times", b->name, p,
                      count);
        }
    }

    /* Phase 4: a failing request. The thread stays blocked, the page stays pending and
     * requests pause: another fault on it is a duplicate. pcr_incoming_resend_pending asks
     * again, naming its block. */
    printf("phase 4: request_page failure, then resend_pending\n");
    pthread_mutex_lock(&v.lock);
    v.serve = SERVE_NONE;
    v.fail_requests = 1;
    pthread_mutex_unlock(&v.lock);
    nreq = vmm_nreqs(&v);
    toucher ta, tb;
    pcr_log_reset();
    touch_async(&ta, &v, 0, PC_PAGES - 8, false, 0);
    CHECK(vmm_wait_requests(&v, nreq + 1, 5000));
    /* The failure is counted and logged (one error line, from the fault thread). */
    for (int i = 0; i < 5000 && pcr_log_count() < 1; i++)
        pcr_sleep_ms(1);
    pcr_log_expect_(1, "failed", "a failing request_page", __FILE__, __LINE__);
    PcrStats s = vmm_stats(&v);
    CHECK_EQ_U64(s.request_errors, 1);
    CHECK_EQ(s.last_request_errno, EIO);
    CHECK_EQ(v.failed_requests, 1);
    touch_async(&tb, &v, 0, PC_PAGES - 8, false, 0);
    for (int i = 0; i < 5000 && vmm_stats(&v).duplicate_faults == s.duplicate_faults; i++)
        pcr_sleep_ms(1);
    CHECK_EQ_U64(vmm_stats(&v).duplicate_faults, s.duplicate_faults + 1);
    CHECK_EQ(vmm_nreqs(&v), nreq + 1); /* paused: no new request */
    CHECK_EQ_U64(vmm_stats(&v).pending_pages, 1);
    CHECK_EQ(pcr_incoming_resend_pending(v.mis), 1);
    CHECK(vmm_wait_requests(&v, nreq + 2, 5000));
    CHECK_EQ(v.reqs[nreq + 1].block, 0);
    CHECK(v.reqs[nreq + 1].named); /* the first re-sent request names its block */
    CHECK_EQ_U64(vmm_stats(&v).resent, 1);
    CHECK_EQ(vmm_place(&v, 0, (PC_PAGES - 8) * 4096, v.direct_buf), 0);
    pthread_join(ta.thread, NULL);
    pthread_join(tb.thread, NULL);
    CHECK_EQ_U64(ta.value, expected_word(&v, 0, (PC_PAGES - 8) * 4096));
    CHECK_EQ_U64(tb.value, ta.value);

    /* Phase 5: after pcr_incoming_reset_request_block the next request names its block. */
    printf("phase 5: reset_request_block\n");
    ordered_touch(&v, 0, PC_PAGES - 7, false, false);
    pcr_incoming_reset_request_block(v.mis);
    ordered_touch(&v, 0, PC_PAGES - 6, true, false);
    ordered_touch(&v, 0, PC_PAGES - 5, false, false);
    vmm_check_no_anomaly(&v);

    /* Phase 6: the log callback gets one line for a misuse. */
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, v.blocks[0].host + 1, v.direct_buf, 4096),
                            -EINVAL),
                   "aligned");

    /* Stats match what happened. */
    s = vmm_stats(&v);
    vmm_check_stats_invariant(&s);
    CHECK_EQ_U64(s.requests + s.resent, v.nreqs - (size_t)v.failed_requests);
    CHECK_EQ_U64(s.request_errors, (uint64_t)v.failed_requests);
    CHECK_EQ_U64(s.pages_placed, v.placed + manual_placed);
    CHECK_EQ_U64(s.zero_pages_placed, v.zero_placed + manual_zero);
    CHECK_EQ_U64(s.already_present, v.eexist + manual_eexist);
    CHECK_EQ_U64(s.faults_outside, 0);
    CHECK_EQ_U64(s.unexpected_events, 0);
    CHECK(s.faults >= s.requests + s.request_errors);
    printf("stats: faults %" PRIu64 " requests %" PRIu64 " duplicate %" PRIu64 " late %" PRIu64
           " placed %" PRIu64 " zero %" PRIu64 " already_present %" PRIu64 "\n",
           s.faults, s.requests, s.duplicate_faults, s.late_faults, s.pages_placed,
           s.zero_pages_placed, s.already_present);

    /* Phase 7: cleanup while a thread is blocked on a page that never came: it is woken and
     * finds the page as the kernel leaves it (zero, anonymous memory). */
    printf("phase 7: cleanup with a blocked thread\n");
    nreq = vmm_nreqs(&v);
    toucher tc;
    touch_async(&tc, &v, 0, PC_PAGES - 1, false, 0);
    CHECK(vmm_wait_requests(&v, nreq + 1, 5000));
    /* A failed end (phase 4's request failed) reports every page that never arrived,
     * requested or not, in one line. */
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_cleanup(v.mis), 0), "never arrived");
    pthread_join(tc.thread, NULL);
    CHECK_EQ_U64(tc.value, 0);
    CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_END);
    CHECK_EQ(v.shut_calls, 1);
    CHECK(v.shut_failed); /* a request failed in phase 4 */
    CHECK_EQ(v.balloon_calls, 2);
    CHECK(!v.balloon_inhibited);
    /* State changes seen by the callback. */
    {
        const PcrState want[][2] = {
            {PCR_STATE_NONE, PCR_STATE_ADVISE},
            {PCR_STATE_ADVISE, PCR_STATE_LISTENING},
            {PCR_STATE_LISTENING, PCR_STATE_END},
        };
        CHECK_EQ(v.nstates, 3);
        for (int i = 0; i < 3; i++) {
            CHECK_EQ(v.states[i][0], want[i][0]);
            CHECK_EQ(v.states[i][1], want[i][1]);
        }
    }
    /* Pages placed stay; memory is ordinary again (no fault, no request). */
    vmm_check_page(&v, 0, 0);
    pcr_touch_write(v.blocks[0].host + (PC_PAGES - 2) * 4096, 42);
    CHECK_EQ(vmm_nreqs(&v), nreq + 1);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_cleanup(v.mis), -EINVAL), "cleanup");
    vmm_check_no_anomaly(&v);

    vmm_destroy(&v);

    /* Phase 8: pcr_incoming_free without cleanup, with a thread blocked on a
     * page: it cleans up (the thread is woken, shut is called), nothing leaks. */
    printf("phase 8: free without cleanup\n");
    vmm w;
    vmm_init(&w, SERVE_NONE);
    vmm_add_block(&w, "pc.ram", BLK_ANON_PRIVATE, 4);
    vmm_add_block(&w, "vga.vram", BLK_MEMFD_SHARED, 4);
    vmm_create(&w);
    CHECK_EQ(pcr_incoming_init(w.mis, 0), 0);
    CHECK_EQ(pcr_incoming_enable_notify(w.mis), 0);
    CHECK(pcr_get_tmp_page(w.mis) != NULL);
    toucher td;
    touch_async(&td, &w, 1, 2, false, 0);
    CHECK(vmm_wait_requests(&w, 1, 5000));
    LOG_EXPECT_ONE(pcr_incoming_free(w.mis), "never arrived"); /* a failed end: pages lost */
    w.mis = NULL;
    pthread_join(td.thread, NULL);
    CHECK_EQ_U64(td.value, 0); /* a hole of the memfd */
    CHECK_EQ(w.shut_calls, 1);
    CHECK(w.shut_failed); /* a page was still pending: its thread was woken onto a hole */
    CHECK(!w.balloon_inhibited);
#ifdef PCR_TEST_SEED_ABI
    CHECK_EQ(postcopy_state_get(), PCR_STATE_NONE); /* no live destination */
#endif
    vmm_destroy(&w);

    const int fds_after = pcr_count_fds();
    if (fds_after != fds_before) {
        pcr_list_fds();
        pcr_fail("descriptors: %d before, %d after", fds_before, fds_after);
    }
    pcr_test_pass();
    return 0;
}
