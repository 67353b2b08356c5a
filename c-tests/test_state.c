/*
 * test_state.c: the postcopy state machine through pcr_state_get/set, and (with the seed
 * ABI) through the seed's handle-less postcopy_state_get/set, which act on the newest live
 * destination.
 *
 * NONE -> ADVISE -> [DISCARD] -> LISTENING -> RUNNING; anything -> END; END -> NONE;
 * staying put is allowed. RUN only from LISTENING. A refused step (or an unknown value)
 * leaves the state unchanged, returns the current state and logs one line. The library's
 * own steps (init, prepare_discard, enable_notify, cleanup) are reported to state_changed.
 */
#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"
#ifdef PCR_TEST_SEED_ABI
#include "postcopy_ram_seed.h"
#endif

static const PcrState ALL[] = {
    PCR_STATE_NONE,      PCR_STATE_ADVISE,  PCR_STATE_DISCARD,
    PCR_STATE_LISTENING, PCR_STATE_RUNNING, PCR_STATE_END,
};

static bool allowed(PcrState from, PcrState to)
{
    if (from == to || to == PCR_STATE_END)
        return true;
    switch (from) {
    case PCR_STATE_NONE: return to == PCR_STATE_ADVISE;
    case PCR_STATE_ADVISE:
        return to == PCR_STATE_DISCARD || to == PCR_STATE_LISTENING;
    case PCR_STATE_DISCARD: return to == PCR_STATE_LISTENING;
    case PCR_STATE_LISTENING: return to == PCR_STATE_RUNNING;
    case PCR_STATE_END: return to == PCR_STATE_NONE;
    default: return false;
    }
}

/* Brings `mis` (no RAM, states set by hand) to `target` along legal steps. */
static void drive_to(struct PcrIncoming *mis, PcrState target)
{
    static const PcrState path[] = {PCR_STATE_NONE, PCR_STATE_ADVISE,
                                         PCR_STATE_DISCARD, PCR_STATE_LISTENING,
                                         PCR_STATE_RUNNING};
    PcrState cur = pcr_state_get(mis);
    if (cur != PCR_STATE_NONE) {
        if (cur != PCR_STATE_END)
            pcr_state_set(mis, PCR_STATE_END);
        if (target == PCR_STATE_END)
            return;
        pcr_state_set(mis, PCR_STATE_NONE);
    }
    if (target == PCR_STATE_END) {
        pcr_state_set(mis, PCR_STATE_END);
        return;
    }
    for (size_t i = 1; i < sizeof path / sizeof path[0] && path[i - 1] != target; i++)
        pcr_state_set(mis, path[i]);
    CHECK_EQ(pcr_state_get(mis), target);
}

int main(void)
{
    pcr_test_begin("test_state", 30);
    const int fds_before = pcr_count_fds();

    /* Every (from, to) pair. */
    {
        vmm v;
        vmm_init(&v, SERVE_NONE);
        vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 4);
        vmm_create(&v);
        CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_NONE);
        int refused = 0, done = 0;
        for (size_t f = 0; f < 6; f++) {
            for (size_t t = 0; t < 6; t++) {
                drive_to(v.mis, ALL[f]);
                pthread_mutex_lock(&v.lock);
                int before_cb = v.nstates;
                pthread_mutex_unlock(&v.lock);
                pcr_log_reset();
                PcrState ret = pcr_state_set(v.mis, ALL[t]);
                PcrState now = pcr_state_get(v.mis);
                if (allowed(ALL[f], ALL[t])) {
                    CHECK_MSG(ret == ALL[f] && now == ALL[t], "%u -> %u: returned %u, now %u",
                              ALL[f], ALL[t], ret, now);
                    pcr_log_expect_(0, NULL, "an allowed step", __FILE__, __LINE__);
                    /* state_changed: once, for a real change */
                    CHECK_EQ(v.nstates - before_cb, ALL[f] != ALL[t] ? 1 : 0);
                    if (ALL[f] != ALL[t]) {
                        CHECK_EQ(v.last_state[0], ALL[f]);
                        CHECK_EQ(v.last_state[1], ALL[t]);
                    }
                    done++;
                } else {
                    CHECK_MSG(ret == ALL[f] && now == ALL[f],
                              "refused %u -> %u: returned %u, now %u (must be unchanged)", ALL[f],
                              ALL[t], ret, now);
                    pcr_log_expect_(1, "not allowed", "a refused step", __FILE__, __LINE__);
                    CHECK_EQ(v.nstates - before_cb, 0);
                    refused++;
                }
            }
        }
        printf("%d steps allowed, %d refused\n", done, refused);
        /* RUN only from LISTENING. */
        for (size_t f = 0; f < 6; f++) {
            if (ALL[f] == PCR_STATE_RUNNING)
                continue;
            drive_to(v.mis, ALL[f]);
            pcr_log_reset();
            pcr_state_set(v.mis, PCR_STATE_RUNNING);
            CHECK_EQ(pcr_state_get(v.mis), ALL[f] == PCR_STATE_LISTENING
                                                   ? PCR_STATE_RUNNING
                                                   : ALL[f]);
        }
        /* Unknown values change nothing. */
        drive_to(v.mis, PCR_STATE_ADVISE);
        LOG_EXPECT_ONE(CHECK_EQ(pcr_state_set(v.mis, 6), PCR_STATE_ADVISE), NULL);
        LOG_EXPECT_ONE(CHECK_EQ(pcr_state_set(v.mis, 0xffffffffu), PCR_STATE_ADVISE),
                       NULL);
        CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_ADVISE);
        drive_to(v.mis, PCR_STATE_NONE);
        vmm_destroy(&v);
    }

    /* The library's own steps, and RUN refused from DISCARD but allowed from LISTENING. */
    {
        vmm v;
        vmm_init(&v, SERVE_NONE);
        vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 8);
        vmm_create(&v);
        CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
        CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_ADVISE);
        LOG_EXPECT_ONE(CHECK_EQ(pcr_state_set(v.mis, PCR_STATE_RUNNING), PCR_STATE_ADVISE),
                       "not allowed");
        CHECK_EQ(pcr_incoming_prepare_discard(v.mis), 0);
        CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_DISCARD);
        LOG_EXPECT_ONE(CHECK_EQ(pcr_state_set(v.mis, PCR_STATE_RUNNING), PCR_STATE_DISCARD),
                       "not allowed");
        CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_DISCARD);
        CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0);
        CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_LISTENING);
        /* enable_notify again is refused (-EBUSY) and leaves the state alone */
        LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_enable_notify(v.mis), -EBUSY), NULL);
        CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_LISTENING);
        LOG_EXPECT_NONE(CHECK_EQ(pcr_state_set(v.mis, PCR_STATE_RUNNING),
                                 PCR_STATE_LISTENING));
        CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_RUNNING);
        LOG_EXPECT_ONE(CHECK_EQ(pcr_state_set(v.mis, PCR_STATE_LISTENING), PCR_STATE_RUNNING),
                       "not allowed");
        /* a discard while running is allowed (a balloon; its pages fault again) */
        LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "pc.ram", 0, 4096), 0));
        CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
        /* and refused after the end */
        LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "pc.ram", 0, 4096), -EINVAL),
                       NULL);
        CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_END);
        CHECK_EQ(v.shut_calls, 1);
        CHECK(!v.shut_failed);
        const PcrState want[][2] = {
            {PCR_STATE_NONE, PCR_STATE_ADVISE},
            {PCR_STATE_ADVISE, PCR_STATE_DISCARD},
            {PCR_STATE_DISCARD, PCR_STATE_LISTENING},
            {PCR_STATE_LISTENING, PCR_STATE_RUNNING},
            {PCR_STATE_RUNNING, PCR_STATE_END},
        };
        CHECK_EQ(v.nstates, 5);
        for (int i = 0; i < 5; i++) {
            CHECK_EQ(v.states[i][0], want[i][0]);
            CHECK_EQ(v.states[i][1], want[i][1]);
        }
        /* A second migration on the same destination: END -> (NONE) -> ADVISE by init. */
        LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_init(v.mis, 0), 0));
        CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_ADVISE);
        CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0);
        CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
        CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_END);
        vmm_destroy(&v);
    }

#ifdef PCR_TEST_SEED_ABI
    /* The seed's handle-less functions act on the newest live destination. */
    {
        vmm a, b;
        vmm_init(&a, SERVE_NONE);
        vmm_add_block(&a, "a.ram", BLK_ANON_PRIVATE, 2);
        vmm_create(&a);
        vmm_init(&b, SERVE_NONE);
        vmm_add_block(&b, "b.ram", BLK_ANON_PRIVATE, 2);
        vmm_create(&b);
        CHECK_EQ(postcopy_state_set(PCR_STATE_ADVISE), PCR_STATE_NONE);
        CHECK_EQ(pcr_state_get(b.mis), PCR_STATE_ADVISE);
        CHECK_EQ(pcr_state_get(a.mis), PCR_STATE_NONE);
        CHECK_EQ(pcr_state_set(a.mis, PCR_STATE_END), PCR_STATE_NONE);
        CHECK_EQ(postcopy_state_get(), PCR_STATE_ADVISE);
        vmm_destroy(&b); /* a is the newest live one again */
        CHECK_EQ(postcopy_state_get(), PCR_STATE_END);
        vmm_destroy(&a); /* none left */
        CHECK_EQ(postcopy_state_get(), PCR_STATE_NONE);
        LOG_EXPECT_ONE(CHECK_EQ(postcopy_state_set(PCR_STATE_ADVISE), PCR_STATE_NONE),
                       NULL);
    }

#endif

    CHECK_EQ(pcr_count_fds(), fds_before);
    pcr_test_pass();
    return 0;
}
