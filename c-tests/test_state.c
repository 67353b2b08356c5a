/*
 * test_state.c: the postcopy state machine through postcopy_state_get/set (the newest live
 * destination) and postcopy_state_get_for/set_for.
 *
 * NONE -> ADVISE -> [DISCARD] -> LISTENING -> RUNNING; anything -> END; END -> NONE;
 * staying put is allowed. RUN only from LISTENING. A refused step (or an unknown value)
 * leaves the state unchanged, returns the current state and logs one line. The library's
 * own steps (init, prepare_discard, enable_notify, cleanup) are reported to state_changed.
 */
#include "test_util.h"

static const PostcopyState ALL[] = {
    POSTCOPY_INCOMING_NONE,      POSTCOPY_INCOMING_ADVISE,  POSTCOPY_INCOMING_DISCARD,
    POSTCOPY_INCOMING_LISTENING, POSTCOPY_INCOMING_RUNNING, POSTCOPY_INCOMING_END,
};

static bool allowed(PostcopyState from, PostcopyState to)
{
    if (from == to || to == POSTCOPY_INCOMING_END)
        return true;
    switch (from) {
    case POSTCOPY_INCOMING_NONE: return to == POSTCOPY_INCOMING_ADVISE;
    case POSTCOPY_INCOMING_ADVISE:
        return to == POSTCOPY_INCOMING_DISCARD || to == POSTCOPY_INCOMING_LISTENING;
    case POSTCOPY_INCOMING_DISCARD: return to == POSTCOPY_INCOMING_LISTENING;
    case POSTCOPY_INCOMING_LISTENING: return to == POSTCOPY_INCOMING_RUNNING;
    case POSTCOPY_INCOMING_END: return to == POSTCOPY_INCOMING_NONE;
    default: return false;
    }
}

/* Brings `mis` (no RAM, states set by hand) to `target` along legal steps. */
static void drive_to(struct MigrationIncomingState *mis, PostcopyState target)
{
    static const PostcopyState path[] = {POSTCOPY_INCOMING_NONE, POSTCOPY_INCOMING_ADVISE,
                                         POSTCOPY_INCOMING_DISCARD, POSTCOPY_INCOMING_LISTENING,
                                         POSTCOPY_INCOMING_RUNNING};
    PostcopyState cur = API.postcopy_state_get_for(mis);
    if (cur != POSTCOPY_INCOMING_NONE) {
        if (cur != POSTCOPY_INCOMING_END)
            API.postcopy_state_set_for(mis, POSTCOPY_INCOMING_END);
        if (target == POSTCOPY_INCOMING_END)
            return;
        API.postcopy_state_set_for(mis, POSTCOPY_INCOMING_NONE);
    }
    if (target == POSTCOPY_INCOMING_END) {
        API.postcopy_state_set_for(mis, POSTCOPY_INCOMING_END);
        return;
    }
    for (size_t i = 1; i < sizeof path / sizeof path[0] && path[i - 1] != target; i++)
        API.postcopy_state_set_for(mis, path[i]);
    CHECK_EQ(API.postcopy_state_get_for(mis), target);
}

int main(void)
{
    pcr_test_begin("test_state", 30);
    const int fds_before = pcr_count_fds();

    /* Every (from, to) pair through the handle-less functions (the only live destination). */
    {
        vmm v;
        vmm_init(&v, SERVE_NONE);
        vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 4);
        vmm_create(&v);
        CHECK_EQ(API.postcopy_state_get(), POSTCOPY_INCOMING_NONE);
        int refused = 0, done = 0;
        for (size_t f = 0; f < 6; f++) {
            for (size_t t = 0; t < 6; t++) {
                drive_to(v.mis, ALL[f]);
                pthread_mutex_lock(&v.lock);
                int before_cb = v.nstates;
                pthread_mutex_unlock(&v.lock);
                pcr_log_reset();
                PostcopyState ret = API.postcopy_state_set(ALL[t]);
                PostcopyState now = API.postcopy_state_get();
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
            if (ALL[f] == POSTCOPY_INCOMING_RUNNING)
                continue;
            drive_to(v.mis, ALL[f]);
            pcr_log_reset();
            API.postcopy_state_set(POSTCOPY_INCOMING_RUNNING);
            CHECK_EQ(API.postcopy_state_get(), ALL[f] == POSTCOPY_INCOMING_LISTENING
                                                   ? POSTCOPY_INCOMING_RUNNING
                                                   : ALL[f]);
        }
        /* Unknown values change nothing. */
        drive_to(v.mis, POSTCOPY_INCOMING_ADVISE);
        LOG_EXPECT_ONE(CHECK_EQ(API.postcopy_state_set(6), POSTCOPY_INCOMING_ADVISE), NULL);
        LOG_EXPECT_ONE(CHECK_EQ(API.postcopy_state_set_for(v.mis, 0xffffffffu), POSTCOPY_INCOMING_ADVISE),
                       NULL);
        CHECK_EQ(API.postcopy_state_get(), POSTCOPY_INCOMING_ADVISE);
        drive_to(v.mis, POSTCOPY_INCOMING_NONE);
        vmm_destroy(&v);
    }

    /* The library's own steps, and RUN refused from DISCARD but allowed from LISTENING. */
    {
        vmm v;
        vmm_init(&v, SERVE_NONE);
        vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 8);
        vmm_create(&v);
        CHECK_EQ(API.postcopy_ram_incoming_init(v.mis, 0), 0);
        CHECK_EQ(API.postcopy_state_get(), POSTCOPY_INCOMING_ADVISE);
        LOG_EXPECT_ONE(CHECK_EQ(API.postcopy_state_set(POSTCOPY_INCOMING_RUNNING), POSTCOPY_INCOMING_ADVISE),
                       "not allowed");
        CHECK_EQ(API.postcopy_ram_prepare_discard(v.mis), 0);
        CHECK_EQ(API.postcopy_state_get(), POSTCOPY_INCOMING_DISCARD);
        LOG_EXPECT_ONE(CHECK_EQ(API.postcopy_state_set(POSTCOPY_INCOMING_RUNNING), POSTCOPY_INCOMING_DISCARD),
                       "not allowed");
        CHECK_EQ(API.postcopy_state_get(), POSTCOPY_INCOMING_DISCARD);
        CHECK_EQ(API.postcopy_ram_enable_notify(v.mis), 0);
        CHECK_EQ(API.postcopy_state_get(), POSTCOPY_INCOMING_LISTENING);
        /* enable_notify again is refused (-EBUSY) and leaves the state alone */
        LOG_EXPECT_ONE(CHECK_EQ(API.postcopy_ram_enable_notify(v.mis), -EBUSY), NULL);
        CHECK_EQ(API.postcopy_state_get(), POSTCOPY_INCOMING_LISTENING);
        LOG_EXPECT_NONE(CHECK_EQ(API.postcopy_state_set(POSTCOPY_INCOMING_RUNNING),
                                 POSTCOPY_INCOMING_LISTENING));
        CHECK_EQ(API.postcopy_state_get(), POSTCOPY_INCOMING_RUNNING);
        LOG_EXPECT_ONE(CHECK_EQ(API.postcopy_state_set(POSTCOPY_INCOMING_LISTENING), POSTCOPY_INCOMING_RUNNING),
                       "not allowed");
        /* discards are refused once running */
        LOG_EXPECT_ONE(CHECK_EQ(API.postcopy_ram_discard_range(v.mis, "pc.ram", 0, 4096), -EINVAL),
                       NULL);
        CHECK_EQ(API.postcopy_ram_incoming_cleanup(v.mis), 0);
        CHECK_EQ(API.postcopy_state_get(), POSTCOPY_INCOMING_END);
        CHECK_EQ(v.shut_calls, 1);
        CHECK(!v.shut_failed);
        const PostcopyState want[][2] = {
            {POSTCOPY_INCOMING_NONE, POSTCOPY_INCOMING_ADVISE},
            {POSTCOPY_INCOMING_ADVISE, POSTCOPY_INCOMING_DISCARD},
            {POSTCOPY_INCOMING_DISCARD, POSTCOPY_INCOMING_LISTENING},
            {POSTCOPY_INCOMING_LISTENING, POSTCOPY_INCOMING_RUNNING},
            {POSTCOPY_INCOMING_RUNNING, POSTCOPY_INCOMING_END},
        };
        CHECK_EQ(v.nstates, 5);
        for (int i = 0; i < 5; i++) {
            CHECK_EQ(v.states[i][0], want[i][0]);
            CHECK_EQ(v.states[i][1], want[i][1]);
        }
        /* A second migration on the same destination: END -> (NONE) -> ADVISE by init. */
        LOG_EXPECT_NONE(CHECK_EQ(API.postcopy_ram_incoming_init(v.mis, 0), 0));
        CHECK_EQ(API.postcopy_state_get(), POSTCOPY_INCOMING_ADVISE);
        CHECK_EQ(API.postcopy_ram_enable_notify(v.mis), 0);
        CHECK_EQ(API.postcopy_ram_incoming_cleanup(v.mis), 0);
        CHECK_EQ(API.postcopy_state_get(), POSTCOPY_INCOMING_END);
        vmm_destroy(&v);
    }

    /* The handle-less functions act on the newest live destination. */
    {
        vmm a, b;
        vmm_init(&a, SERVE_NONE);
        vmm_add_block(&a, "a.ram", BLK_ANON_PRIVATE, 2);
        vmm_create(&a);
        vmm_init(&b, SERVE_NONE);
        vmm_add_block(&b, "b.ram", BLK_ANON_PRIVATE, 2);
        vmm_create(&b);
        CHECK_EQ(API.postcopy_state_set(POSTCOPY_INCOMING_ADVISE), POSTCOPY_INCOMING_NONE);
        CHECK_EQ(API.postcopy_state_get_for(b.mis), POSTCOPY_INCOMING_ADVISE);
        CHECK_EQ(API.postcopy_state_get_for(a.mis), POSTCOPY_INCOMING_NONE);
        CHECK_EQ(API.postcopy_state_set_for(a.mis, POSTCOPY_INCOMING_END), POSTCOPY_INCOMING_NONE);
        CHECK_EQ(API.postcopy_state_get(), POSTCOPY_INCOMING_ADVISE);
        vmm_destroy(&b); /* a is the newest live one again */
        CHECK_EQ(API.postcopy_state_get(), POSTCOPY_INCOMING_END);
        vmm_destroy(&a); /* none left */
        CHECK_EQ(API.postcopy_state_get(), POSTCOPY_INCOMING_NONE);
        LOG_EXPECT_ONE(CHECK_EQ(API.postcopy_state_set(POSTCOPY_INCOMING_ADVISE), POSTCOPY_INCOMING_NONE),
                       NULL);
    }

    CHECK_EQ(pcr_count_fds(), fds_before);
    pcr_test_pass();
    return 0;
}
