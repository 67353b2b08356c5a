/*
 * test_discard.c: discards really drop pages, so that they fault after enable_notify.
 *
 * For a private anonymous, a shared memfd and a shared anonymous block, twice (the
 * library's own discard, then a discard_range callback, with the fault thread's
 * spin_wait_us set):
 * - stale data written before pcr_incoming_init is gone after it: the pages are
 *   not resident (mincore), memfd file content is a hole (pread reads zeros), the memory
 *   reads zero;
 * - precopy pages written in ADVISE survive; pcr_incoming_prepare_discard +
 *   pcr_incoming_discard_range drop exactly the ranges given;
 * - after pcr_incoming_enable_notify, touching every page requests exactly the discarded
 *   pages and the pages never written since init, each once; the others keep their
 *   precopy content; served pages hold the served content.
 */
#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"
#include "harness/pcr_touch.h"

#define PC_PAGES 32
#define VGA_PAGES 16
#define SHM_PAGES 16
#define NOT_PRECOPIED 4 /* the last pages of each block get no precopy data */

typedef struct range {
    int block;
    uint64_t first, count; /* pages */
} range;

static const range DISCARDS[] = {
    {0, 3, 1}, {0, 4, 4}, {0, 20, 1}, {1, 0, 1}, {1, 15 - NOT_PRECOPIED, 1}, {2, 8, 2},
};

static bool discarded(int bi, uint64_t page)
{
    for (size_t i = 0; i < sizeof DISCARDS / sizeof DISCARDS[0]; i++)
        if (DISCARDS[i].block == bi && page >= DISCARDS[i].first &&
            page < DISCARDS[i].first + DISCARDS[i].count)
            return true;
    return false;
}

static bool precopied(vmm *v, int bi, uint64_t page)
{
    return page < v->blocks[bi].map_length / 4096 - NOT_PRECOPIED;
}

/* Precopy content differs from the content served later (block index + 16). */
static uint64_t precopy_word(int bi, uint64_t off)
{
    return pcr_word(bi + 16, off);
}

static void check_zero_page(const uint8_t *p)
{
    for (int i = 0; i < 4096; i++)
        if (p[i] != 0)
            pcr_fail("byte %d of the page at %p is %#x, expected 0", i, (const void *)p, p[i]);
}

static void run(bool with_callback)
{
    printf("== discards %s ==\n", with_callback ? "through the discard_range callback (spin_wait_us 50)"
                                                : "by the library (spin_wait_us 0)");
    const int fds_before = pcr_count_fds();
    vmm v;
    vmm_init(&v, SERVE_DIRECT);
    if (with_callback) {
        v.ops.discard_range = vmm_discard_cb;
        v.ops.spin_wait_us = 50; /* and the fault thread busy-polls a little after each fault */
    }
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, PC_PAGES);
    vmm_add_block(&v, "vga.vram", BLK_MEMFD_SHARED, VGA_PAGES);
    vmm_add_block(&v, "shm.ram", BLK_ANON_SHARED, SHM_PAGES);
    vmm_create(&v);
    uint8_t page[4096];

    /* Stale data everywhere, then init. */
    for (int bi = 0; bi < v.nblocks; bi++) {
        memset(v.blocks[bi].host, 0xee, v.blocks[bi].map_length);
        CHECK(pcr_resident(v.blocks[bi].host));
    }
    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_init(v.mis, 0), 0));
    if (with_callback) {
        CHECK_EQ(v.discard_cb_calls, v.nblocks);
        CHECK_EQ_U64(v.discard_cb_bytes, (PC_PAGES + VGA_PAGES + SHM_PAGES) * 4096ull);
    }
    for (int bi = 0; bi < v.nblocks; bi++) {
        vmm_block *b = &v.blocks[bi];
        for (uint64_t off = 0; off < b->map_length; off += 4096)
            CHECK_MSG(!pcr_resident(b->host + off), "%s+%#" PRIx64 " still resident after init",
                      b->name, off);
        if (b->fd >= 0) {
            struct stat stt;
            CHECK(fstat(b->fd, &stt) == 0);
            CHECK_MSG(stt.st_blocks == 0, "memfd of %s still holds %lld blocks after init",
                      b->name, (long long)stt.st_blocks);
            for (uint64_t off = 0; off < b->map_length; off += 4096) {
                CHECK(pread(b->fd, page, 4096, (off_t)off) == 4096);
                check_zero_page(page);
            }
        }
        /* Not registered yet: reads zero, without a fault. (Only pages precopy writes
         * next: reading maps the page, which would then no longer be missing.) */
        for (uint64_t p = 0; p < b->map_length / 4096; p++)
            if (precopied(&v, bi, p))
                check_zero_page(b->host + p * 4096);
    }

    /* Precopy: plain writes while in ADVISE. */
    for (int bi = 0; bi < v.nblocks; bi++) {
        vmm_block *b = &v.blocks[bi];
        for (uint64_t p = 0; p < b->map_length / 4096; p++) {
            if (!precopied(&v, bi, p))
                continue;
            uint64_t *w = (uint64_t *)(void *)(b->host + p * 4096);
            for (int i = 0; i < 512; i++)
                w[i] = precopy_word(bi, p * 4096 + (uint64_t)i * 8);
        }
    }
    /* Discard some precopied pages (as the source's discard commands do). */
    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_prepare_discard(v.mis), 0));
    CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_DISCARD);
    int cb_before = v.discard_cb_calls;
    for (size_t i = 0; i < sizeof DISCARDS / sizeof DISCARDS[0]; i++) {
        const range *r = &DISCARDS[i];
        LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, v.blocks[r->block].name,
                                                                r->first * 4096, r->count * 4096), 0));
    }
    if (with_callback)
        CHECK_EQ(v.discard_cb_calls - cb_before, (int)(sizeof DISCARDS / sizeof DISCARDS[0]));
    for (int bi = 0; bi < v.nblocks; bi++) {
        vmm_block *b = &v.blocks[bi];
        for (uint64_t p = 0; p < b->map_length / 4096; p++) {
            bool gone = discarded(bi, p) || !precopied(&v, bi, p);
            CHECK_MSG(pcr_resident(b->host + p * 4096) == !gone, "%s page %" PRIu64 ": resident=%d",
                      b->name, p, !gone);
            if (b->fd >= 0) {
                CHECK(pread(b->fd, page, 4096, (off_t)(p * 4096)) == 4096);
                if (gone)
                    check_zero_page(page);
                else
                    CHECK_EQ_U64(((uint64_t *)(void *)page)[7], precopy_word(bi, p * 4096 + 56));
            }
        }
    }

    /* Postcopy: every page touched once; only the dropped ones fault. */
    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0));
    for (int bi = 0; bi < v.nblocks; bi++) {
        vmm_block *b = &v.blocks[bi];
        for (uint64_t p = 0; p < b->map_length / 4096; p++) {
            size_t before = vmm_nreqs(&v);
            uint64_t got = pcr_touch_read(b->host + p * 4096 + 64);
            bool gone = discarded(bi, p) || !precopied(&v, bi, p);
            size_t made = vmm_nreqs(&v) - before;
            CHECK_MSG(made == (gone ? 1u : 0u), "%s page %" PRIu64 ": %zu requests, expected %d",
                      b->name, p, made, gone ? 1 : 0);
            if (gone) {
                CHECK_EQ_U64(got, pcr_word(bi, p * 4096 + 64));
                vmm_check_page(&v, bi, p * 4096);
            } else {
                CHECK_EQ_U64(got, precopy_word(bi, p * 4096 + 64));
            }
        }
    }
    vmm_check_no_anomaly(&v);
    PcrStats s = vmm_stats(&v);
    vmm_check_stats_invariant(&s);
    CHECK_EQ_U64(s.requests, v.nreqs);
    CHECK_EQ_U64(s.pages_placed, v.placed);
    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_cleanup(v.mis), 0));
    CHECK(!v.shut_failed);
    vmm_destroy(&v);
    const int fds_after = pcr_count_fds();
    if (fds_after != fds_before) {
        pcr_list_fds();
        pcr_fail("descriptors: %d before, %d after", fds_before, fds_after);
    }
}

int main(void)
{
    pcr_test_begin("test_discard", 60);
    run(false);
    run(true);
    pcr_test_pass();
    return 0;
}
