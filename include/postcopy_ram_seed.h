/*
 * postcopy-ram: the 2017 QEMU-compatible names (the "seed" ABI).
 *
 * The functions of QEMU 2.9's migration/postcopy-ram.c (plus the May 2017 state
 * functions), with their names and parameter lists, for callers of that API. They are the
 * pcr_ functions of postcopy_ram.h under QEMU's names: the seed types below are the pcr_
 * types, created with pcr_incoming_new / pcr_source_new. Where QEMU's functions take no
 * handle (postcopy_ram_supported_by_host, postcopy_state_get/set) they act on the newest
 * live PcrIncoming; pcr_incoming_free waits for such a call in progress on the handle it
 * frees, so that no callback of that handle runs after it returned.
 *
 * These names clash with QEMU's own headers (QEMU 7.2 declares postcopy_place_page and
 * friends with other signatures): never include this header in QEMU itself; include
 * postcopy_ram.h there. Built only with the default-on cargo feature `seed-abi` (CMake
 * option POSTCOPY_RAM_SEED_ABI); without it, libpostcopy_ram exports none of these names.
 *
 * Written by hand (the seed ABI is frozen); tests/header.rs and c-tests/test_prototypes.c
 * check it against the library and against QEMU's 2017 prototypes.
 */
#ifndef POSTCOPY_RAM_SEED_H
#define POSTCOPY_RAM_SEED_H

#include "postcopy_ram.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The seed's types are the library's. */
typedef PcrIncoming MigrationIncomingState;
typedef PcrSource MigrationState;
typedef PcrDiscardState PostcopyDiscardState;
typedef PcrState PostcopyState;

/* QEMU's PostcopyState values. */
#define POSTCOPY_INCOMING_NONE PCR_STATE_NONE
#define POSTCOPY_INCOMING_ADVISE PCR_STATE_ADVISE
#define POSTCOPY_INCOMING_DISCARD PCR_STATE_DISCARD
#define POSTCOPY_INCOMING_LISTENING PCR_STATE_LISTENING
#define POSTCOPY_INCOMING_RUNNING PCR_STATE_RUNNING
#define POSTCOPY_INCOMING_END PCR_STATE_END

/* Most ranges QEMU puts in one POSTCOPY_RAM_DISCARD command. */
#define POSTCOPY_MAX_DISCARDS_PER_COMMAND PCR_MAX_DISCARDS_PER_COMMAND

/* pcr_incoming_supported_by_host for the newest live PcrIncoming, or, with none, for
 * private anonymous memory of the host page size. */
bool postcopy_ram_supported_by_host(void);
/* pcr_incoming_init. */
int postcopy_ram_incoming_init(MigrationIncomingState *mis, size_t ram_pages);
/* pcr_incoming_cleanup. */
int postcopy_ram_incoming_cleanup(MigrationIncomingState *mis);
/* pcr_incoming_prepare_discard. */
int postcopy_ram_prepare_discard(MigrationIncomingState *mis);
/* pcr_incoming_enable_notify. */
int postcopy_ram_enable_notify(MigrationIncomingState *mis);
/* pcr_place_page. */
int postcopy_place_page(MigrationIncomingState *mis, void *host, void *from, size_t pagesize);
/* pcr_place_page_zero. */
int postcopy_place_page_zero(MigrationIncomingState *mis, void *host, size_t pagesize);
/* pcr_get_tmp_page. */
void *postcopy_get_tmp_page(MigrationIncomingState *mis);
/* pcr_discard_send_init. */
PostcopyDiscardState *postcopy_discard_send_init(MigrationState *ms, unsigned long offset,
                                                 const char *name);
/* pcr_discard_send_range. */
void postcopy_discard_send_range(MigrationState *ms, PostcopyDiscardState *pds,
                                 unsigned long start, unsigned long length);
/* pcr_discard_send_finish. */
void postcopy_discard_send_finish(MigrationState *ms, PostcopyDiscardState *pds);
/* The state of the newest live PcrIncoming (load-acquire); NONE when there is none. */
PostcopyState postcopy_state_get(void);
/* pcr_state_set on the newest live PcrIncoming; with none, logs and returns NONE. */
PostcopyState postcopy_state_set(PostcopyState new_state);

#ifdef __cplusplus
}
#endif

#endif /* POSTCOPY_RAM_SEED_H */
