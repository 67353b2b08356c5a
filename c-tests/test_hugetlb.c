/*
 * test_hugetlb.c: 2 MiB hugetlb blocks next to a 4 KiB block.
 *
 * Blocks: MAP_HUGETLB private anonymous, memfd_create(MFD_HUGETLB) shared, private
 * anonymous 4 KiB. Raises /proc/sys/vm/nr_hugepages if needed (put back on every exit
 * path); skips (exit 77) when the huge pages cannot be had. Checks: init really drops huge
 * pages (pool pages come back, not resident, file holes); requests are whole huge pages
 * (offset aligned down to 2 MiB even for a fault in the middle, length 2 MiB) or 4 KiB
 * pages for the small block; several threads faulting in one huge page make one request;
 * pages are served from the 2 MiB temporary page; zero huge pages (no UFFDIO_ZEROPAGE on
 * hugetlbfs: the library copies a zero page) read zero; -EEXIST; a 4 KiB pagesize or a
 * 4 KiB-aligned address inside a huge block is refused; stats; no descriptor leaked.
 */
#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"
#include "harness/pcr_touch.h"

#define HUGE_PAGES_PER_BLOCK 2

static long free_huge_pages(void)
{
    return pcr_read_long("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages");
}

typedef struct toucher {
    uint8_t *addr;
    uint64_t value;
    pthread_t thread;
} toucher;

static void *toucher_main(void *arg)
{
    toucher *t = arg;
    t->value = pcr_touch_read(t->addr);
    return NULL;
}

int main(void)
{
    pcr_test_begin("test_hugetlb", 60);
    /* two private + two shared huge pages for the blocks, one spare */
    pcr_hugepages_require(2 * HUGE_PAGES_PER_BLOCK + 1);
    const int fds_before = pcr_count_fds();
    const long free_at_start = free_huge_pages();

    vmm v;
    vmm_init(&v, SERVE_NONE);
    vmm_add_block(&v, "huge.anon", BLK_HUGE_ANON, HUGE_PAGES_PER_BLOCK);
    vmm_add_block(&v, "huge.memfd", BLK_HUGE_MEMFD, HUGE_PAGES_PER_BLOCK);
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 8);
    v.blocks[1].zero_pages[1] = 1;
    vmm_create(&v);
    const uint64_t H = PCR_HUGE_PAGE_SIZE;

    /* Stale data in every huge page (allocates them), then init drops them all. */
    for (int bi = 0; bi < 2; bi++)
        for (uint64_t off = 0; off < v.blocks[bi].map_length; off += H)
            memset(v.blocks[bi].host + off, 0xee, 4096);
    long free_with_stale = free_huge_pages();
    printf("free huge pages: %ld at start, %ld with stale data\n", free_at_start, free_with_stale);

    LOG_EXPECT_NONE(CHECK(pcr_incoming_supported_by_host(v.mis)));
    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_init(v.mis, 0), 0));
    long free_after_init = free_huge_pages();
    printf("free huge pages after init: %ld\n", free_after_init);
    /* The shared (memfd) pages go back to the pool; the private ones keep their
     * reservation but are no longer mapped. */
    CHECK(free_after_init >= free_with_stale + HUGE_PAGES_PER_BLOCK);
    for (int bi = 0; bi < 2; bi++)
        for (uint64_t off = 0; off < v.blocks[bi].map_length; off += H)
            CHECK_MSG(!pcr_resident(v.blocks[bi].host + off), "%s+%#" PRIx64 " resident after init",
                      v.blocks[bi].name, off);
    {
        uint8_t probe[4096];
        for (uint64_t off = 0; off < v.blocks[1].map_length; off += H) {
            CHECK(pread(v.blocks[1].fd, probe, sizeof probe, (off_t)off) == (ssize_t)sizeof probe);
            for (size_t i = 0; i < sizeof probe; i++)
                CHECK(probe[i] == 0);
        }
    }

    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0));
    uint8_t *tmp = pcr_get_tmp_page(v.mis);
    CHECK(tmp != NULL);
    memset(tmp, 0x11, H); /* as large as the largest page */

    /* A fault in the middle of a huge page: one request for the whole huge page. */
    printf("fault in the middle of a huge page\n");
    {
        toucher t = {.addr = v.blocks[0].host + H + 12345 * 8};
        CHECK(pthread_create(&t.thread, NULL, toucher_main, &t) == 0);
        CHECK(vmm_wait_requests(&v, 1, 5000));
        CHECK_EQ(v.reqs[0].block, 0);
        CHECK(v.reqs[0].named);
        CHECK_EQ_U64(v.reqs[0].offset, H);
        CHECK_EQ_U64(v.reqs[0].length, H);
        /* a 4 KiB placement inside a huge block is refused */
        LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, v.blocks[0].host + H, v.direct_buf, 4096),
                                -EINVAL), "size");
        LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, v.blocks[0].host + H + 4096, v.direct_buf,
                                                        H), -EINVAL), "aligned");
        LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page_zero(v.mis, v.blocks[0].host + H, 4096), -EINVAL),
                       "size");
        /* served from the temporary page */
        pcr_fill_page(0, H, tmp, H);
        LOG_EXPECT_NONE(CHECK_EQ(pcr_place_page(v.mis, v.blocks[0].host + H, tmp, H), 0));
        pthread_join(t.thread, NULL);
        CHECK_EQ_U64(t.value, pcr_word(0, H + 12345 * 8));
        vmm_check_page(&v, 0, H);
        LOG_EXPECT_NONE(CHECK_EQ(pcr_place_page(v.mis, v.blocks[0].host + H, tmp, H), -EEXIST));
        LOG_EXPECT_NONE(CHECK_EQ(pcr_place_page_zero(v.mis, v.blocks[0].host + H, H), -EEXIST));
        vmm_check_page(&v, 0, H);
    }

    /* Three threads in one huge page of the memfd block: one request. */
    printf("three threads in one huge page\n");
    {
        toucher t[3];
        for (int i = 0; i < 3; i++) {
            t[i] = (toucher){.addr = v.blocks[1].host + (uint64_t)i * 100 * 4096 + 8};
            CHECK(pthread_create(&t[i].thread, NULL, toucher_main, &t[i]) == 0);
        }
        CHECK(vmm_wait_requests(&v, 2, 5000));
        pcr_sleep_ms(pcr_under_valgrind() ? 500 : 50); /* let the other faults arrive */
        CHECK_EQ(vmm_nreqs(&v), 2);
        CHECK_EQ(v.reqs[1].block, 1);
        CHECK(v.reqs[1].named);
        CHECK_EQ_U64(v.reqs[1].offset, 0);
        CHECK_EQ_U64(v.reqs[1].length, H);
        pcr_fill_page(1, 0, tmp, H);
        CHECK_EQ(pcr_place_page(v.mis, v.blocks[1].host, tmp, H), 0);
        for (int i = 0; i < 3; i++) {
            pthread_join(t[i].thread, NULL);
            CHECK_EQ_U64(t[i].value, pcr_word(1, (uint64_t)i * 100 * 4096 + 8));
        }
        CHECK_EQ(vmm_nreqs(&v), 2);
        vmm_check_page(&v, 1, 0);
        /* the same content through the file */
        uint64_t w;
        CHECK(pread(v.blocks[1].fd, &w, 8, 4096 * 7) == 8);
        CHECK_EQ_U64(w, pcr_word(1, 4096 * 7));
    }

    /* The rest served by a server thread (tmp page): a zero huge page (hugetlbfs has no
     * UFFDIO_ZEROPAGE), the first huge page of the anonymous block, 4 KiB pages. */
    printf("server thread: zero huge page, remaining pages\n");
    pthread_mutex_lock(&v.lock);
    v.serve = SERVE_THREAD;
    pthread_mutex_unlock(&v.lock);
    vmm_start_server(&v);
    CHECK_EQ_U64(pcr_touch_read(v.blocks[1].host + H + 4096 * 3), 0);
    vmm_check_page(&v, 1, H);
    CHECK_EQ_U64(pcr_touch_read(v.blocks[0].host + 8), pcr_word(0, 8));
    vmm_check_page(&v, 0, 0);
    for (uint64_t p = 0; p < 8; p++) {
        CHECK_EQ_U64(pcr_touch_read(v.blocks[2].host + p * 4096), pcr_word(2, p * 4096));
        vmm_check_page(&v, 2, p * 4096);
    }
    vmm_stop_server(&v);
    vmm_check_no_anomaly(&v);
    CHECK(v.tmp_page == tmp);
    CHECK_EQ(vmm_nreqs(&v), 2 + 2 + 8);
    CHECK_EQ(v.reqs[2].block, 1);
    CHECK_EQ_U64(v.reqs[2].offset, H);
    CHECK(!v.reqs[2].named); /* same block as the previous request */
    CHECK_EQ(v.reqs[3].block, 0);
    CHECK(v.reqs[3].named);
    CHECK_EQ(v.reqs[4].block, 2);
    CHECK_EQ_U64(v.reqs[4].length, 4096);
    CHECK(v.reqs[4].named);
    CHECK(!v.reqs[5].named);

    PcrStats s = vmm_stats(&v);
    vmm_check_stats_invariant(&s);
    CHECK_EQ_U64(s.requests, vmm_nreqs(&v));
    CHECK_EQ_U64(s.pages_placed, 2 + 1 + 8);   /* 2 by hand, 1 huge + 8 small by the server */
    CHECK_EQ_U64(s.zero_pages_placed, 1);
    CHECK_EQ_U64(s.already_present, 2);
    CHECK_EQ_U64(s.request_errors, 0);
    CHECK_EQ_U64(s.faults_outside, 0);

    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_cleanup(v.mis), 0));
    vmm_destroy(&v);
    CHECK_EQ(free_huge_pages(), free_at_start);
    const int fds_after = pcr_count_fds();
    if (fds_after != fds_before) {
        pcr_list_fds();
        pcr_fail("descriptors: %d before, %d after", fds_before, fds_after);
    }
    pcr_test_pass();
    return 0; /* the pool size is put back by the atexit handler */
}
