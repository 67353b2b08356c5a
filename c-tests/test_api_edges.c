/*
 * test_api_edges.c (issue 9 items 16 and 17): the behaviour the header now documents.
 * - `from` needs no alignment: pcr_place_page / pcr_place_pages copy from any address.
 * - The batched calls count what they placed: 0 when every page was already present
 *   (counted in PcrStats.already_present), where pcr_place_page returns -EEXIST.
 * - PCR_RETURN_PATH_MAX_MESSAGE is the largest message the library writes (a REQ_PAGES_ID
 *   naming a 255-byte block); PCR_RETURN_PATH_MAX_PAYLOAD the largest payload QEMU takes.
 * - PcrStats.requests counts the requests request_page accepted; a failed one is counted in
 *   request_errors only.
 */
#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"
#include "harness/pcr_touch.h"

static void *touch_main(void *arg)
{
    (void)pcr_touch_read(arg);
    return NULL;
}

int main(void)
{
    pcr_test_begin("test_api_edges", 60);
    const uint64_t P = 4096;
    vmm v;
    vmm_init(&v, SERVE_NONE);
    vmm_block *b = vmm_add_block(&v, "ram", BLK_ANON_PRIVATE, 16);
    vmm_create(&v);
    CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
    CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0);

    /* Unaligned sources. */
    uint8_t *src = malloc(4 * P + 1);
    CHECK(src != NULL);
    for (size_t i = 0; i < 4 * P + 1; i++)
        src[i] = (uint8_t)(i * 7);
    LOG_EXPECT_NONE(CHECK_EQ(pcr_place_page(v.mis, b->host, src + 1, P), 0));
    CHECK(memcmp(b->host, src + 1, P) == 0);
    LOG_EXPECT_NONE(CHECK_EQ(pcr_place_pages(v.mis, b->host + P, src + 1, 3 * P), 3));
    CHECK(memcmp(b->host + P, src + 1, 3 * P) == 0);

    /* Already present: single -EEXIST, batched 0 with the pages counted. */
    PcrStats before = vmm_stats_now(&v);
    LOG_EXPECT_NONE(CHECK_EQ(pcr_place_page(v.mis, b->host, src, P), -EEXIST));
    LOG_EXPECT_NONE(CHECK_EQ(pcr_place_pages(v.mis, b->host, src, 4 * P), 0));
    LOG_EXPECT_NONE(CHECK_EQ(pcr_place_pages_zero(v.mis, b->host, 4 * P), 0));
    PcrStats after = vmm_stats_now(&v);
    CHECK_EQ_U64(after.already_present - before.already_present, 1 + 4 + 4);
    CHECK(memcmp(b->host, src + 1, P) == 0);
    free(src);

    /* The largest message the library writes. */
    CHECK_EQ(PCR_RETURN_PATH_MAX_MESSAGE, 4 + 8 + 4 + 1 + 255);
    CHECK(PCR_RETURN_PATH_MAX_MESSAGE <= 4 + PCR_RETURN_PATH_MAX_PAYLOAD);
    char id[255];
    memset(id, 'r', sizeof id);
    PcrWireRpMessage m = {.rp_type = PCR_WIRE_RP_REQ_PAGES_ID, .start = 0, .len = 4096,
                          .name = id, .name_len = sizeof id};
    uint8_t buf[PCR_RETURN_PATH_MAX_MESSAGE];
    CHECK_EQ(pcr_wire_encode_return_path(buf, sizeof buf, &m), PCR_RETURN_PATH_MAX_MESSAGE);

    /* A failed request is not in `requests`. */
    pthread_mutex_lock(&v.lock);
    v.fail_requests = 1;
    pthread_mutex_unlock(&v.lock);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, touch_main, b->host + 8 * P) == 0);
    double end = pcr_now() + (pcr_under_valgrind() ? 60 : 10);
    while (vmm_stats_now(&v).request_errors == 0 && pcr_now() < end)
        pcr_sleep_ms(1);
    CHECK_EQ(pcr_incoming_cleanup(v.mis), 0); /* wakes the toucher */
    CHECK(pthread_join(t, NULL) == 0);
    PcrStats s = vmm_stats_now(&v);
    CHECK_EQ_U64(s.request_errors, 1);
    CHECK_EQ_U64(s.requests, 0);
    vmm_check_stats_invariant(&s);
    vmm_destroy(&v);
    pcr_test_pass();
    return 0;
}
