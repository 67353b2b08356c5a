/*
 * test_dlopen.c: the shared library works when loaded at run time.
 *
 * Not linked with the library: dlopen()s it (path from CMake, PCR_SO_PATH), dlsym()s every
 * function the header declares (the list is generated from the header at build time:
 * pcr_exports.h) and the harness's typed table, then runs one fault/place cycle through
 * those pointers: a thread faults on a page of a private anonymous block, the request
 * callback places it from the fault thread, the thread reads the placed bytes. Then
 * cleanup, free, dlclose; no descriptor leaked. It links the harness built with
 * PCR_TEST_NO_DIRECT_LINK (pcr_harness_dlopen), whose helpers call the library through
 * the table API (harness/pcr_lib.h).
 */
#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"
#include "harness/pcr_touch.h"

#include <dlfcn.h>

#include "pcr_exports.h"

#define PCR_STRINGIFY(name) #name,
static const char *const header_exports[] = {PCR_HEADER_EXPORTS(PCR_STRINGIFY)};

typedef struct toucher {
    uint8_t *addr;
    uint64_t value;
} toucher;

static void *toucher_main(void *arg)
{
    toucher *t = arg;
    t->value = pcr_touch_read(t->addr);
    return NULL;
}

int main(void)
{
    const int fds_before = pcr_count_fds();
    void *lib = dlopen(PCR_SO_PATH, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "test_dlopen: FAIL: dlopen(%s): %s\n", PCR_SO_PATH, dlerror());
        return 1;
    }
    size_t n = sizeof header_exports / sizeof header_exports[0];
    CHECK_EQ(n, PCR_HEADER_EXPORT_COUNT);
    for (size_t i = 0; i < n; i++) {
        dlerror();
        void *sym = dlsym(lib, header_exports[i]);
        const char *err = dlerror();
        CHECK_MSG(sym != NULL && err == NULL, "dlsym(%s): %s", header_exports[i], err ? err : "NULL");
    }
#define PCR_API_DLSYM(name)                                                                  \
    do {                                                                                     \
        void *sym = dlsym(lib, #name);                                                       \
        CHECK_MSG(sym != NULL, "dlsym(%s)", #name);                                          \
        memcpy(&API.name, &sym, sizeof sym);                                                 \
    } while (0);
    PCR_API_FUNCTIONS(PCR_API_DLSYM)
#undef PCR_API_DLSYM
    pcr_test_begin_common("test_dlopen", 30);
    printf("dlsym found all %zu functions of the header in %s\n", n, PCR_SO_PATH);
    CHECK_STR(API.pcr_version(), PCR_EXPECTED_VERSION);

    vmm v;
    vmm_init(&v, SERVE_DIRECT);
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 4);
    vmm_create(&v);
    LOG_EXPECT_NONE(CHECK(API.pcr_incoming_supported_by_host(v.mis)));
    LOG_EXPECT_NONE(CHECK_EQ(API.pcr_incoming_init(v.mis, 4 * (size_t)getpagesize() / 4096), 0));
    LOG_EXPECT_NONE(CHECK_EQ(API.pcr_incoming_enable_notify(v.mis), 0));
    CHECK_EQ(API.pcr_state_get(v.mis), PCR_STATE_LISTENING);

    toucher t = {.addr = v.blocks[0].host + 2 * 4096 + 40};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, toucher_main, &t) == 0);
    pthread_join(th, NULL);
    CHECK_EQ_U64(t.value, pcr_word(0, 2 * 4096 + 40));
    vmm_check_page(&v, 0, 2 * 4096);
    CHECK_EQ(v.nreqs, 1);
    CHECK(v.reqs[0].named);
    CHECK_EQ_U64(v.reqs[0].offset, 2 * 4096);
    vmm_check_no_anomaly(&v);
    PcrStats s = vmm_stats(&v);
    CHECK_EQ_U64(s.faults, 1);
    CHECK_EQ_U64(s.requests, 1);
    CHECK_EQ_U64(s.pages_placed, 1);

    LOG_EXPECT_NONE(CHECK_EQ(API.pcr_incoming_cleanup(v.mis), 0));
    vmm_destroy(&v);
    /* back to the default sink before the library may go away */
    API.pcr_set_log_callback(NULL, NULL, 0);
    CHECK_MSG(dlclose(lib) == 0, "dlclose: %s", dlerror());
    const int fds_after = pcr_count_fds();
    if (fds_after != fds_before) {
        pcr_list_fds();
        pcr_fail("descriptors: %d before, %d after", fds_before, fds_after);
    }
    pcr_test_pass();
    return 0;
}
