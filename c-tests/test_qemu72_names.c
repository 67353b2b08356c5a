/*
 * test_qemu72_names.c: postcopy_ram.h lives next to QEMU 7.2's own postcopy-ram.h.
 *
 * The file includes both headers and is built with -Wall -Wextra -Werror: any name of
 * postcopy_ram.h that clashed with QEMU's (a function, MigrationIncomingState,
 * PostcopyState, POSTCOPY_INCOMING_*) would be a compile error. It then defines two entry
 * points of a QEMU 7.2 shim, with QEMU's signatures, over the pcr_ API, and calls them: the
 * shim's postcopy_place_page reaches the library (its log line names pcr_place_page), not
 * itself, and the seed's handle-less getter is not needed.
 */
#include "qemu72/postcopy-ram.h"
#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"
#include "harness/pcr_touch.h"

/* QEMU's opaque types, as the shim sees them. */
struct MigrationIncomingState {
    PcrIncoming *h;
    PostcopyState state;
};
struct RAMBlock {
    size_t page_size;
};

static MigrationIncomingState *current_mis;

/* The shim, as in QEMU-7.2-SHIM.md: -EEXIST is success for QEMU (gap G6). */
int postcopy_place_page(MigrationIncomingState *mis, void *host, void *from, RAMBlock *rb)
{
    int rc = pcr_place_page(mis->h, host, from, rb->page_size);
    return rc == -EEXIST ? 0 : rc;
}

int postcopy_place_page_zero(MigrationIncomingState *mis, void *host, RAMBlock *rb)
{
    int rc = pcr_place_page_zero(mis->h, host, rb->page_size);
    return rc == -EEXIST ? 0 : rc;
}

PostcopyState postcopy_state_get(void)
{
    return current_mis ? current_mis->state : POSTCOPY_INCOMING_NONE;
}

/* QEMU's and the library's state numbers agree. */
_Static_assert((int)POSTCOPY_INCOMING_NONE == (int)PCR_STATE_NONE, "NONE");
_Static_assert((int)POSTCOPY_INCOMING_ADVISE == (int)PCR_STATE_ADVISE, "ADVISE");
_Static_assert((int)POSTCOPY_INCOMING_DISCARD == (int)PCR_STATE_DISCARD, "DISCARD");
_Static_assert((int)POSTCOPY_INCOMING_LISTENING == (int)PCR_STATE_LISTENING, "LISTENING");
_Static_assert((int)POSTCOPY_INCOMING_RUNNING == (int)PCR_STATE_RUNNING, "RUNNING");
_Static_assert((int)POSTCOPY_INCOMING_END == (int)PCR_STATE_END, "END");

int main(void)
{
    pcr_test_begin("test_qemu72_names", 30);
    const int fds_before = pcr_count_fds();

    vmm v;
    vmm_init(&v, SERVE_NONE);
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 4);
    vmm_create(&v);
    MigrationIncomingState mis = {.h = v.mis, .state = POSTCOPY_INCOMING_NONE};
    RAMBlock rb = {.page_size = 4096};
    current_mis = &mis;
    uint8_t page[4096] = {0};

    /* Before enable_notify the library refuses, in one line that names pcr_place_page:
     * the shim reached the library, it did not call itself. */
    LOG_EXPECT_ONE(CHECK_EQ(postcopy_place_page(&mis, v.blocks[0].host, page, &rb), -EINVAL),
                   "pcr_place_page: ");
    LOG_EXPECT_ONE(CHECK_EQ(postcopy_place_page_zero(&mis, v.blocks[0].host, &rb), -EINVAL),
                   "pcr_place_page_zero: ");

    /* A real placement through the shim. */
    CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
    CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0);
    mis.state = POSTCOPY_INCOMING_LISTENING;
    pcr_fill_page(0, 4096, page, 4096);
    LOG_EXPECT_NONE(CHECK_EQ(postcopy_place_page(&mis, v.blocks[0].host + 4096, page, &rb), 0));
    LOG_EXPECT_NONE(CHECK_EQ(postcopy_place_page(&mis, v.blocks[0].host + 4096, page, &rb), 0));
    LOG_EXPECT_NONE(CHECK_EQ(postcopy_place_page_zero(&mis, v.blocks[0].host, &rb), 0));
    CHECK_EQ(postcopy_state_get(), POSTCOPY_INCOMING_LISTENING);
    CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_LISTENING);
    PcrStats s = vmm_stats_now(&v);
    CHECK_EQ_U64(s.pages_placed, 1);
    CHECK_EQ_U64(s.zero_pages_placed, 1);
    CHECK_EQ_U64(s.already_present, 1);
    CHECK_EQ_U64(pcr_touch_read(v.blocks[0].host + 4096), pcr_word(0, 4096));

    CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
    current_mis = NULL;
    vmm_destroy(&v);
    CHECK_EQ(pcr_count_fds(), fds_before);
    pcr_test_pass();
    return 0;
}
