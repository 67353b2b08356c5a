/*
 * test_prototypes.c: postcopy_ram_seed.h is call-compatible with QEMU 2.9's migration/postcopy-ram.c.
 *
 * After including postcopy_ram_seed.h, every seed prototype is declared again exactly as QEMU
 * declares it (QEMU-POSTCOPY-NOTES.md section 1; the PostcopyState typedef enum is not
 * repeated, the seed header defines PostcopyState as uint32_t with the POSTCOPY_INCOMING_*
 * values). A mismatch in any return or parameter type is a compile error ("conflicting
 * types"), and the file is built with -Wall -Wextra -Werror. Then each function is called
 * once with NULL handles: the documented error value (-EINVAL / false / NULL), no crash,
 * and one log line each.
 */
#include "harness/pcr_log.h"
#include "postcopy_ram_seed.h"

/* ---- the seed's exported functions, verbatim ---- */
bool  postcopy_ram_supported_by_host(void);
int   postcopy_ram_incoming_init(MigrationIncomingState *mis, size_t ram_pages);
int   postcopy_ram_incoming_cleanup(MigrationIncomingState *mis);
int   postcopy_ram_prepare_discard(MigrationIncomingState *mis);
int   postcopy_ram_enable_notify(MigrationIncomingState *mis);
int   postcopy_place_page(MigrationIncomingState *mis, void *host, void *from, size_t pagesize);
int   postcopy_place_page_zero(MigrationIncomingState *mis, void *host, size_t pagesize);
void *postcopy_get_tmp_page(MigrationIncomingState *mis);
PostcopyDiscardState *postcopy_discard_send_init(MigrationState *ms, unsigned long offset, const char *name);
void  postcopy_discard_send_range(MigrationState *ms, PostcopyDiscardState *pds, unsigned long start, unsigned long length);
void  postcopy_discard_send_finish(MigrationState *ms, PostcopyDiscardState *pds);

/* ---- related, moved into postcopy-ram.c by QEMU in May 2017 ---- */
PostcopyState postcopy_state_get(void);                      /* load-acquire */
PostcopyState postcopy_state_set(PostcopyState new_state);   /* exchange, returns the old state */

/* The enumerators QEMU code uses, with QEMU's values. */
_Static_assert(POSTCOPY_INCOMING_NONE == 0, "NONE");
_Static_assert(POSTCOPY_INCOMING_ADVISE == 1, "ADVISE");
_Static_assert(POSTCOPY_INCOMING_DISCARD == 2, "DISCARD");
_Static_assert(POSTCOPY_INCOMING_LISTENING == 3, "LISTENING");
_Static_assert(POSTCOPY_INCOMING_RUNNING == 4, "RUNNING");
_Static_assert(POSTCOPY_INCOMING_END == 5, "END");
_Static_assert(sizeof(PostcopyState) == 4, "PostcopyState is 32 bits");
_Static_assert(POSTCOPY_MAX_DISCARDS_PER_COMMAND == 12, "QEMU sends 12 ranges a command");

/* QEMU-style code: the seed's own way of using the API compiles as is. */
static int qemu_style_listen(MigrationIncomingState *mis)
{
    PostcopyState ps = postcopy_state_get();
    if (ps != POSTCOPY_INCOMING_ADVISE && ps != POSTCOPY_INCOMING_DISCARD)
        return -1;
    if (postcopy_ram_enable_notify(mis))
        return -1;
    return 0;
}

int main(void)
{
    pcr_test_begin("test_prototypes", 30);
    const int fds_before = pcr_count_fds();
    int buf[4] = {0};

    /* No destination exists: the host check looks at the host alone (true here; when it is
     * false it must say why in one line). */
    pcr_log_reset();
    bool supported = postcopy_ram_supported_by_host();
    printf("postcopy_ram_supported_by_host() = %s\n", supported ? "true" : "false");
    if (supported)
        pcr_log_expect_(0, NULL, "postcopy_ram_supported_by_host()", __FILE__, __LINE__);
    else
        pcr_log_expect_(1, NULL, "postcopy_ram_supported_by_host()", __FILE__, __LINE__);

    LOG_EXPECT_ONE(CHECK_EQ(postcopy_ram_incoming_init(NULL, 0), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(postcopy_ram_incoming_init(NULL, 1024), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(postcopy_ram_incoming_cleanup(NULL), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(postcopy_ram_prepare_discard(NULL), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(postcopy_ram_enable_notify(NULL), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(postcopy_place_page(NULL, buf, buf, 4096), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(postcopy_place_page(NULL, NULL, NULL, 0), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(postcopy_place_page_zero(NULL, buf, 4096), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK(postcopy_get_tmp_page(NULL) == NULL), "NULL");
    LOG_EXPECT_ONE(CHECK(postcopy_discard_send_init(NULL, 0, "pc.ram") == NULL), "NULL");
    LOG_EXPECT_ONE(postcopy_discard_send_range(NULL, NULL, 0, 1), "NULL");
    LOG_EXPECT_ONE(postcopy_discard_send_finish(NULL, NULL), "NULL");
    LOG_EXPECT_NONE(CHECK_EQ(qemu_style_listen(NULL), -1)); /* state NONE: refused before the call */

    /* The state functions without any destination. */
    LOG_EXPECT_NONE(CHECK_EQ(postcopy_state_get(), POSTCOPY_INCOMING_NONE));
    LOG_EXPECT_ONE(CHECK_EQ(postcopy_state_set(POSTCOPY_INCOMING_ADVISE), POSTCOPY_INCOMING_NONE),
                   "no live");
    CHECK_EQ(postcopy_state_get(), POSTCOPY_INCOMING_NONE);

    CHECK_EQ(pcr_count_fds(), fds_before);
    pcr_test_pass();
    return 0;
}
