/*
 * test_placement_overflow.c (issue 9 item 2): a caller's address plus length is computed
 * with checked arithmetic. pcr_place_pages_zero(h, a, (size_t)-2 MiB) on a hugetlb block
 * used to wrap the bounds check: the library then zero-filled page after page (hugetlbfs
 * has no UFFDIO_ZEROPAGE), into the next block, whose page later placement found present
 * (-EEXIST): memory corruption. Now -EINVAL and nothing placed. The same for the other
 * placement calls and for discard ranges near 2^64, on 4 KiB blocks.
 */
#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"

int main(void)
{
    pcr_test_begin("test_placement_overflow", 60);
    const uint64_t H = PCR_HUGE_PAGE_SIZE, P = 4096;

    /* 4 KiB blocks first (no huge pages needed). */
    {
        vmm v;
        vmm_init(&v, SERVE_NONE);
        vmm_block *b = vmm_add_block(&v, "ram", BLK_ANON_PRIVATE, 16);
        vmm_create(&v);
        CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
        LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "ram", UINT64_MAX - P + 1, 2 * P),
                                -EINVAL),
                       "ram");
        LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "ram", 2 * P, UINT64_MAX - P + 1),
                                -EINVAL),
                       "ram");
        CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0);
        static uint8_t page[4096];
        const size_t lens[] = {(size_t)0 - P, (size_t)0 - 16 * P, (size_t)1 << 63};
        for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
            LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages_zero(v.mis, b->host + P, lens[i]), -EINVAL),
                           "run past");
            LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages(v.mis, b->host + P, page, lens[i]), -EINVAL),
                           "run past");
        }
        PcrStats s = vmm_stats_now(&v);
        CHECK_EQ_U64(s.zero_pages_placed + s.pages_placed, 0);
        CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
        vmm_destroy(&v);
    }

    /* Two hugetlb blocks, adjacent: one 4 MiB mapping described as blocks a and b. */
    pcr_hugepages_require(2);
    vmm v;
    vmm_init(&v, SERVE_NONE);
    vmm_add_block(&v, "a", BLK_HUGE_ANON, 2);
    vmm_block *a = &v.blocks[0], *b = &v.blocks[1];
    *b = *a;
    snprintf(b->name, sizeof b->name, "b");
    a->length = a->map_length = H;
    b->host = a->host + H;
    b->ram_offset = a->ram_offset + H;
    b->length = b->map_length = H;
    b->zero_pages = calloc(1, 1);
    CHECK(b->zero_pages != NULL);
    v.nblocks = 2;
    vmm_create(&v);
    CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
    CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages_zero(v.mis, a->host, (size_t)0 - H), -EINVAL),
                   "run past");
    /* Block b's page is still missing: placing it succeeds (it used to be -EEXIST). */
    LOG_EXPECT_NONE(CHECK_EQ(pcr_place_page_zero(v.mis, b->host, H), 0));
    LOG_EXPECT_NONE(CHECK_EQ(pcr_place_page_zero(v.mis, a->host, H), 0));
    PcrStats s = vmm_stats_now(&v);
    CHECK_EQ_U64(s.zero_pages_placed, 2);
    CHECK_EQ_U64(s.already_present, 0);
    CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
    vmm_destroy(&v);
    pcr_test_pass();
    return 0;
}
