/*
 * test_place_pages_partial.c: pcr_place_pages / pcr_place_pages_zero over a run
 * whose middle page is already present return the number of pages THIS call placed, and
 * the stats count them as placed, the present one as already present.
 *
 * The kernel places the pages before the present one and answers -EAGAIN with a partial
 * count, then -EEXIST at the present page; the library must resume after that page, not
 * re-place the run page by page (which once counted its own fresh pages as present).
 */
#include "harness/fake_vmm.h"

int main(void)
{
    pcr_test_begin("test_place_pages_partial", 30);
    vmm v;
    vmm_init(&v, SERVE_NONE);
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 8);
    vmm_create(&v);
    CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
    CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0);
    uint8_t *run = aligned_alloc(4096, 3 * 4096);
    CHECK(run != NULL);
    memset(run, 7, 3 * 4096);
    uint8_t *h = v.blocks[0].host;
    int failures = 0;

    /* data: pages 0..2, page 1 present first */
    CHECK_EQ(pcr_place_page(v.mis, h + 4096, run, 4096), 0);
    PcrStats before = vmm_stats(&v);
    ptrdiff_t n = pcr_place_pages(v.mis, h, run, 3 * 4096);
    PcrStats after = vmm_stats(&v);
    CHECK(h[0] == 7 && h[2 * 4096] == 7); /* the pages themselves are fine */
    printf("pcr_place_pages([missing, present, missing]) = %td (expected 2); "
           "pages_placed +%" PRIu64 " (expected +2), already_present +%" PRIu64 " (expected +1)\n",
           n, after.pages_placed - before.pages_placed, after.already_present - before.already_present);
    failures += n != 2 || after.pages_placed - before.pages_placed != 2 ||
                after.already_present - before.already_present != 1;

    /* zero: pages 4..6, page 5 present first */
    CHECK_EQ(pcr_place_page_zero(v.mis, h + 5 * 4096, 4096), 0);
    before = vmm_stats(&v);
    n = pcr_place_pages_zero(v.mis, h + 4 * 4096, 3 * 4096);
    after = vmm_stats(&v);
    printf("pcr_place_pages_zero([missing, present, missing]) = %td (expected 2); "
           "zero_pages_placed +%" PRIu64 " (expected +2), already_present +%" PRIu64 " (expected +1)\n",
           n, after.zero_pages_placed - before.zero_pages_placed,
           after.already_present - before.already_present);
    failures += n != 2 || after.zero_pages_placed - before.zero_pages_placed != 2 ||
                after.already_present - before.already_present != 1;

    CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
    free(run);
    vmm_destroy(&v);
    if (failures) {
        printf("FAIL: %d of 2 partial runs miscounted\n", failures);
        return 1;
    }
    pcr_test_pass();
    return 0;
}
