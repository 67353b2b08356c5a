/*
 * test_seed_free_race.c (issue 9 item 6): the seed ABI's handle-less functions
 * (postcopy_ram_supported_by_host, postcopy_state_get/set) act on the newest live
 * PcrIncoming. If pcr_incoming_free runs on another thread meanwhile, free must wait for
 * them: once free has returned, no callback of that handle may run (its `opaque` may be
 * gone), and the last reference (which runs cleanup, calling shut and state_changed) must
 * be dropped inside free, not on the other thread afterwards.
 *
 * Thread A calls postcopy_ram_supported_by_host() while the main thread frees the handle;
 * the foreach_ram_block callback A runs holds on for a while. Then the same with
 * postcopy_state_set() whose state_changed callback holds on, on an initialised handle.
 */
#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"
#ifdef PCR_TEST_SEED_ABI
#include "postcopy_ram_seed.h"

static vmm V;
static atomic_int entered, finished, hold_in_foreach, hold_in_state;
static atomic_int callbacks_after_free, freed;

static void hold(void)
{
    atomic_store(&entered, 1);
    pcr_sleep_ms(300);
    atomic_store(&finished, 1);
}

static int foreach_cb(void *opaque, PcrRamBlockVisitor visit, void *ctx)
{
    if (atomic_load(&freed))
        atomic_fetch_add(&callbacks_after_free, 1);
    if (atomic_exchange(&hold_in_foreach, 0))
        hold();
    return vmm_foreach_cb(opaque, visit, ctx);
}

static void state_cb(void *opaque, PcrState old_state, PcrState new_state)
{
    if (atomic_load(&freed))
        atomic_fetch_add(&callbacks_after_free, 1);
    if (atomic_exchange(&hold_in_state, 0))
        hold();
    vmm_state_cb(opaque, old_state, new_state);
}

static void shut_cb(void *opaque, bool failed)
{
    if (atomic_load(&freed))
        atomic_fetch_add(&callbacks_after_free, 1);
    vmm_shut_cb(opaque, failed);
}

static void *supported_thread(void *arg)
{
    (void)arg;
    (void)postcopy_ram_supported_by_host();
    return NULL;
}

static void *state_thread(void *arg)
{
    (void)arg;
    (void)postcopy_state_set(POSTCOPY_INCOMING_END);
    return NULL;
}

static void race(void *(*body)(void *), bool init)
{
    vmm_init(&V, SERVE_NONE);
    V.ops.foreach_ram_block = foreach_cb;
    V.ops.state_changed = state_cb;
    V.ops.shut = shut_cb;
    vmm_add_block(&V, "ram", BLK_ANON_PRIVATE, 16);
    vmm_create(&V);
    if (init)
        CHECK_EQ(pcr_incoming_init(V.mis, 0), 0);
    atomic_store(&entered, 0);
    atomic_store(&finished, 0);
    atomic_store(&freed, 0);
    atomic_store(&callbacks_after_free, 0);
    if (init)
        atomic_store(&hold_in_state, 1);
    else
        atomic_store(&hold_in_foreach, 1);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, body, NULL) == 0);
    while (!atomic_load(&entered))
        pcr_sleep_ms(1);
    pcr_incoming_free(V.mis);
    V.mis = NULL;
    /* free returned: the callback running on thread A must have ended before it. */
    CHECK_MSG(atomic_load(&finished), "pcr_incoming_free returned while a callback of the handle was still running on another thread");
    atomic_store(&freed, 1);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_MSG(atomic_load(&callbacks_after_free) == 0,
              "%d callbacks ran after pcr_incoming_free returned", atomic_load(&callbacks_after_free));
    vmm_destroy(&V);
}

int main(void)
{
    pcr_test_begin("test_seed_free_race", 60);
    race(supported_thread, false);
    race(state_thread, true);
    pcr_test_pass();
    return 0;
}
#else
int main(void)
{
    printf("SKIP: built without the seed ABI\n");
    return PCR_SKIP_CODE;
}
#endif
