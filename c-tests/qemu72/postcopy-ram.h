/*
 * The prototypes QEMU 7.2 declares in migration/postcopy-ram.h for the functions that
 * share their names with the 2017 seed ABI (from ../shared/reference/QEMU-7.2-SHIM.md,
 * section 1), with QEMU's own opaque types and PostcopyState. A QEMU 7.2 source file sees
 * exactly these; test_qemu72_names.c includes them together with postcopy_ram.h.
 */
#ifndef QEMU72_MIGRATION_POSTCOPY_RAM_H
#define QEMU72_MIGRATION_POSTCOPY_RAM_H

#include <stdbool.h>

typedef struct MigrationIncomingState MigrationIncomingState;
typedef struct MigrationState MigrationState;
typedef struct RAMBlock RAMBlock;

typedef enum {
    POSTCOPY_INCOMING_NONE = 0,
    POSTCOPY_INCOMING_ADVISE,
    POSTCOPY_INCOMING_DISCARD,
    POSTCOPY_INCOMING_LISTENING,
    POSTCOPY_INCOMING_RUNNING,
    POSTCOPY_INCOMING_END
} PostcopyState;

bool postcopy_ram_supported_by_host(MigrationIncomingState *mis);
int postcopy_ram_incoming_init(MigrationIncomingState *mis);
int postcopy_ram_incoming_cleanup(MigrationIncomingState *mis);
int postcopy_ram_prepare_discard(MigrationIncomingState *mis);
int postcopy_ram_incoming_setup(MigrationIncomingState *mis);
void postcopy_discard_send_init(MigrationState *ms, const char *name);
void postcopy_discard_send_range(MigrationState *ms, unsigned long start, unsigned long length);
void postcopy_discard_send_finish(MigrationState *ms);
int postcopy_place_page(MigrationIncomingState *mis, void *host, void *from, RAMBlock *rb);
int postcopy_place_page_zero(MigrationIncomingState *mis, void *host, RAMBlock *rb);
PostcopyState postcopy_state_get(void);
PostcopyState postcopy_state_set(PostcopyState new_state);
void postcopy_fault_thread_notify(MigrationIncomingState *mis);

#endif
