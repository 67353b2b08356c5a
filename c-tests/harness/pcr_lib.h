/*
 * How the harness reaches the library. Tests call it directly; only test_dlopen.c, which
 * is not linked with it and is built (with its harness) with PCR_TEST_NO_DIRECT_LINK,
 * goes through the table API that it fills with dlsym(). The harness calls the library
 * through PCR(name): `name`, or `API.name` in that build.
 */
#ifndef PCR_HARNESS_LIB_H
#define PCR_HARNESS_LIB_H

#include "postcopy_ram.h"

#ifdef PCR_TEST_NO_DIRECT_LINK
#define PCR_API_FUNCTIONS(X)                                                                 \
    X(pcr_incoming_new)                                                                    \
    X(pcr_incoming_free)                                                                   \
    X(pcr_incoming_supported_by_host)                                                      \
    X(pcr_incoming_init)                                                                   \
    X(pcr_incoming_cleanup)                                                                \
    X(pcr_incoming_enable_notify)                                                          \
    X(pcr_place_page)                                                                      \
    X(pcr_place_page_zero)                                                                 \
    X(pcr_get_tmp_page)                                                                    \
    X(pcr_incoming_get_stats)                                                              \
    X(pcr_set_log_callback)                                                                \
    X(pcr_version)                                                                         \
    X(pcr_state_get)

typedef struct pcr_api {
#define PCR_API_FIELD(name) __typeof__(&name) name;
    PCR_API_FUNCTIONS(PCR_API_FIELD)
#undef PCR_API_FIELD
} pcr_api;

/* Filled by test_dlopen.c before pcr_test_begin_common(). */
extern pcr_api API;
#define PCR(name) (API.name)
#else
#define PCR(name) name
#endif

#endif /* PCR_HARNESS_LIB_H */
