/*
 * test_bad_inputs.c: misuse gets the documented error, never a crash, and exactly one
 * error line through the log callback; a refused call changes nothing.
 *
 * NULL handles and arguments; callbacks tables missing required entries; calls in the
 * wrong order (place before enable_notify, enable twice, init twice, cleanup twice or
 * without init, anything after cleanup); host addresses misaligned or outside every
 * block; a pagesize that is not the block's; runs past a block's end; bad discard ranges;
 * bad RAM blocks refused at init (length not a multiple of the page size, bad page size,
 * misaligned, empty, overlapping, duplicate or bad names, an iterator error) with the
 * memory left untouched; source-side misuse.
 */
#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"
#include "harness/pcr_touch.h"

static int noop_foreach(void *opaque, PcrRamBlockVisitor visit, void *ctx)
{
    (void)opaque;
    (void)visit;
    (void)ctx;
    return 0;
}

static int noop_request(void *opaque, void *block_opaque, const char *name, uint64_t offset,
                        uint64_t length)
{
    (void)opaque;
    (void)block_opaque;
    (void)name;
    (void)offset;
    (void)length;
    return 0;
}

static int noop_send(void *opaque, const char *name, uint16_t count, const uint64_t *starts,
                     const uint64_t *lengths)
{
    int *sent = opaque;
    (void)name;
    (void)count;
    (void)starts;
    (void)lengths;
    (*sent)++;
    return 0;
}

/* A destination whose block description was altered by `mutate` must be refused at init
 * with `want` and one log line; state stays NONE and the memory keeps its data. */
typedef void (*mutator)(vmm *v);

static void refused_at_init(const char *what, mutator mutate, int want, const char *substr)
{
    printf("refused at init: %s\n", what);
    vmm v;
    vmm_init(&v, SERVE_NONE);
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 8);
    vmm_add_block(&v, "vga.vram", BLK_MEMFD_SHARED, 4);
    memset(v.blocks[0].host, 0x5a, v.blocks[0].map_length);
    memset(v.blocks[1].host, 0x6b, v.blocks[1].map_length);
    vmm_block orig[2] = {v.blocks[0], v.blocks[1]};
    mutate(&v);
    vmm_create(&v);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_init(v.mis, 0), want), substr);
    CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_NONE);
    LOG_EXPECT_ONE(CHECK(!pcr_incoming_supported_by_host(v.mis)), NULL);
    for (int i = 0; i < 2; i++) { /* the real mappings again */
        v.blocks[i].host = orig[i].host;
        v.blocks[i].length = orig[i].length;
        v.blocks[i].page_size = orig[i].page_size;
    }
    /* nothing was discarded */
    for (uint64_t i = 0; i < v.blocks[0].map_length; i += 4096)
        CHECK(v.blocks[0].host[i] == 0x5a);
    for (uint64_t i = 0; i < v.blocks[1].map_length; i += 4096)
        CHECK(v.blocks[1].host[i] == 0x6b);
    /* and nothing was set up */
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_enable_notify(v.mis), -EINVAL), NULL);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_cleanup(v.mis), -EINVAL), NULL);
    vmm_destroy(&v);
}

static void m_len_not_multiple(vmm *v) { v->blocks[0].length = 4 * 4096 + 100; }
static void m_len_zero(vmm *v) { v->blocks[1].length = 0; }
static void m_page_small(vmm *v) { v->blocks[0].page_size = 2048; }
static void m_page_not_pow2(vmm *v) { v->blocks[0].page_size = 3 * 4096; v->blocks[0].length = 0; }
static void m_host_misaligned(vmm *v) { v->blocks[0].host += 512; v->blocks[0].length -= 4096; }
static void m_overlap(vmm *v)
{
    v->blocks[1].host = v->blocks[0].host + 4096;
    v->blocks[1].length = 4096;
}
static void m_dup_name(vmm *v) { snprintf(v->blocks[1].name, sizeof v->blocks[1].name, "pc.ram"); }
static void m_empty_name(vmm *v) { v->blocks[1].name[0] = 0; }
static void m_null_name(vmm *v) { v->foreach_null_name = true; }
static void m_foreach_error(vmm *v) { v->foreach_rc = -ENOMEM; }

/* foreach_ram_block describing one block with a 256-byte name. */
static char long_name[257];
static void *long_name_host;
static int long_name_foreach(void *opaque, PcrRamBlockVisitor visit, void *ctx)
{
    (void)opaque;
    PcrRamBlock d = {long_name, long_name_host, 0, 4096, 4096, -1, 0, false, NULL};
    return visit(&d, ctx);
}

int main(void)
{
    pcr_test_begin("test_bad_inputs", 60);
    const int fds_before = pcr_count_fds();
    uint8_t *buf = aligned_alloc(4096, 2 * 4096);
    CHECK(buf != NULL);
    memset(buf, 1, 2 * 4096);
    PcrStats st;

    /* ---- creating a destination ---- */
    printf("pcr_incoming_new misuse\n");
    LOG_EXPECT_ONE(CHECK(pcr_incoming_new(NULL, NULL) == NULL), "NULL");
    {
        PcrIncomingOps ops;
        memset(&ops, 0, sizeof ops);
        ops.foreach_ram_block = noop_foreach;
        LOG_EXPECT_ONE(CHECK(pcr_incoming_new(&ops, NULL) == NULL), "required");
        ops.foreach_ram_block = NULL;
        ops.request_page = noop_request;
        LOG_EXPECT_ONE(CHECK(pcr_incoming_new(&ops, NULL) == NULL), "required");
        ops.foreach_ram_block = noop_foreach;
        ops.target_page_size = 3000;
        LOG_EXPECT_ONE(CHECK(pcr_incoming_new(&ops, NULL) == NULL), "power of two");
    }
    LOG_EXPECT_NONE(pcr_incoming_free(NULL));
    LOG_EXPECT_NONE(pcr_source_free(NULL));

    /* ---- NULL handles on the functions beyond the seed (test_prototypes has the seed) ---- */
    printf("NULL handles\n");
    LOG_EXPECT_ONE(CHECK(!pcr_incoming_supported_by_host(NULL)), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_discard_range(NULL, "pc.ram", 0, 4096), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages(NULL, buf, buf, 4096), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages_zero(NULL, buf, 4096), -EINVAL), "NULL");
    LOG_EXPECT_ONE(pcr_incoming_reset_request_block(NULL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_get_stats(NULL, &st), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_state_get(NULL), PCR_STATE_NONE), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_state_set(NULL, PCR_STATE_ADVISE),
                            PCR_STATE_NONE), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_source_discard_errors(NULL), 0), "NULL");

    /* ---- a destination used in the wrong order and with bad addresses ---- */
    printf("destination misuse\n");
    vmm v;
    vmm_init(&v, SERVE_NONE);
    vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 16);
    vmm_add_block(&v, "vga.vram", BLK_MEMFD_SHARED, 4);
    vmm_create(&v);
    uint8_t *pc = v.blocks[0].host, *vga = v.blocks[1].host;
    uint8_t *outside = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(outside != MAP_FAILED);

    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_get_stats(v.mis, NULL), -EINVAL), "NULL");
    /* before init */
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_cleanup(v.mis), -EINVAL), "without");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_prepare_discard(v.mis), -EINVAL), "before");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "pc.ram", 0, 4096), -EINVAL), "before");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_enable_notify(v.mis), -EINVAL), "before");
    LOG_EXPECT_ONE(CHECK(pcr_get_tmp_page(v.mis) == NULL), "before");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, pc, buf, 4096), -EINVAL), "before");
    CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_NONE);

    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_init(v.mis, 0), 0));
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_init(v.mis, 0), -EBUSY), NULL);
    CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_ADVISE);
    /* place before enable_notify */
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, pc, buf, 4096), -EINVAL), "enable_notify");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page_zero(v.mis, pc, 4096), -EINVAL), "enable_notify");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages(v.mis, pc, buf, 4096), -EINVAL), "enable_notify");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages_zero(v.mis, pc, 4096), -EINVAL), "enable_notify");
    /* bad discard ranges */
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "no.such", 0, 4096), -EINVAL), "no.such");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, NULL, 0, 4096), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "pc.ram", 1, 4096), -EINVAL), "aligned");
    /* An empty range is skipped (QEMU 2.6-2.9 sources send them), but must be in place. */
    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "pc.ram", 0, 0), 0));
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "pc.ram", 1, 0), -EINVAL), "aligned");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "pc.ram", 17 * 4096, 0), -EINVAL),
                   "end");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "pc.ram", 0, 100), -EINVAL), NULL);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "pc.ram", 15 * 4096, 2 * 4096), -EINVAL),
                   "end");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "pc.ram", UINT64_MAX - 4095, 4096), -EINVAL),
                   NULL);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "vga.vram", 0, 5 * 4096), -EINVAL), NULL);
    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "vga.vram", 3 * 4096, 4096), 0));

    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0));
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_enable_notify(v.mis), -EBUSY), "twice");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_init(v.mis, 0), -EBUSY), NULL);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_prepare_discard(v.mis), -EINVAL), NULL);
    /* After LISTEN a discard is allowed (a balloon); a bad one is still refused. */
    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "pc.ram", 0, 4096), 0));
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "pc.ram", 1, 4096), -EINVAL), NULL);

    printf("bad placements\n");
    PcrStats before = vmm_stats(&v);
    /* misaligned */
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, pc + 8, buf, 4096), -EINVAL), "aligned");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, pc + 2048, buf, 4096), -EINVAL), "aligned");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page_zero(v.mis, pc + 1, 4096), -EINVAL), "aligned");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages(v.mis, pc + 4, buf, 4096), -EINVAL), "aligned");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages_zero(v.mis, vga + 4, 4096), -EINVAL), "aligned");
    /* outside every block */
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, outside, buf, 4096), -EINVAL), "outside");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, NULL, buf, 4096), -EINVAL), "outside");
    {
        /* just below the lowest block and just above the highest one */
        uint8_t *low = pc < vga ? pc : vga;
        uint8_t *high_end = pc < vga ? vga + 4 * 4096 : pc + 16 * 4096;
        LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, low - 4096, buf, 4096), -EINVAL), "outside");
        LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, high_end, buf, 4096), -EINVAL), "outside");
    }
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page_zero(v.mis, outside, 4096), -EINVAL), "outside");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages(v.mis, outside, buf, 4096), -EINVAL), "outside");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages_zero(v.mis, outside, 4096), -EINVAL), "outside");
    /* pagesize not the block's */
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, pc, buf, 8192), -EINVAL), "size");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, pc, buf, 2048), -EINVAL), "size");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, pc, buf, 0), -EINVAL), "size");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, pc, buf, PCR_HUGE_PAGE_SIZE), -EINVAL), "size");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page_zero(v.mis, pc, 8192), -EINVAL), "size");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages(v.mis, pc, buf, 0), -EINVAL), "size");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages(v.mis, pc, buf, 4097), -EINVAL), "size");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages_zero(v.mis, pc, 100), -EINVAL), "size");
    /* past a block's end */
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages(v.mis, pc + 15 * 4096, buf, 2 * 4096), -EINVAL), "past");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages_zero(v.mis, vga + 3 * 4096, 2 * 4096), -EINVAL), "past");
    /* no source */
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, pc, NULL, 4096), -EINVAL), "NULL");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_pages(v.mis, pc, NULL, 4096), -EINVAL), "NULL");
    PcrStats after = vmm_stats(&v);
    /* nothing placed, nothing counted (field by field: the padding is unspecified) */
    CHECK_EQ_U64(after.pages_placed, before.pages_placed);
    CHECK_EQ_U64(after.zero_pages_placed, before.zero_pages_placed);
    CHECK_EQ_U64(after.already_present, before.already_present);
    CHECK_EQ_U64(after.faults, before.faults);
    CHECK_EQ_U64(after.requests, before.requests);
    CHECK_EQ(vmm_nreqs(&v), 0);
    /* the boundaries themselves are fine: the last page of each block */
    LOG_EXPECT_NONE(CHECK_EQ(pcr_place_page(v.mis, pc + 15 * 4096, buf, 4096), 0));
    LOG_EXPECT_NONE(CHECK_EQ(pcr_place_page_zero(v.mis, vga + 3 * 4096, 4096), 0));
    CHECK(pc[15 * 4096] == 1 && vga[3 * 4096] == 0);

    printf("after cleanup\n");
    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_cleanup(v.mis), 0));
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_cleanup(v.mis), -EINVAL), NULL);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page(v.mis, pc, buf, 4096), -EINVAL), NULL);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_place_page_zero(v.mis, pc, 4096), -EINVAL), NULL);
    LOG_EXPECT_ONE(CHECK(pcr_get_tmp_page(v.mis) == NULL), NULL);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_enable_notify(v.mis), -EINVAL), NULL);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_prepare_discard(v.mis), -EINVAL), NULL);
    LOG_EXPECT_NONE(pcr_incoming_reset_request_block(v.mis)); /* harmless */
    CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_END);
    munmap(outside, 4096);
    vmm_destroy(&v);

    /* ---- bad RAM blocks are refused at init ---- */
    refused_at_init("length not a multiple of the page size", m_len_not_multiple, -EINVAL, "multiple");
    refused_at_init("zero length", m_len_zero, -EINVAL, NULL);
    refused_at_init("page size below the host page size", m_page_small, -EINVAL, "page size");
    refused_at_init("page size not a power of two", m_page_not_pow2, -EINVAL, "page size");
    refused_at_init("host address not page aligned", m_host_misaligned, -EINVAL, "aligned");
    refused_at_init("overlapping blocks", m_overlap, -EINVAL, "overlap");
    refused_at_init("duplicate names", m_dup_name, -EINVAL, "pc.ram");
    refused_at_init("empty name", m_empty_name, -EINVAL, NULL);
    refused_at_init("NULL name", m_null_name, -EINVAL, "NULL");
    refused_at_init("foreach_ram_block failing", m_foreach_error, -ENOMEM, NULL);
    {
        printf("refused at init: 256-byte name\n");
        memset(long_name, 'n', 256);
        long_name[256] = 0;
        long_name_host = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(long_name_host != MAP_FAILED);
        PcrIncomingOps ops;
        memset(&ops, 0, sizeof ops);
        ops.foreach_ram_block = long_name_foreach;
        ops.request_page = noop_request;
        struct PcrIncoming *mis = pcr_incoming_new(&ops, NULL);
        CHECK(mis != NULL);
        LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_init(mis, 0), -EINVAL), "255");
        long_name[255] = 0; /* 255 bytes is fine */
        LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_init(mis, 0), 0));
        LOG_EXPECT_NONE(pcr_incoming_free(mis)); /* cleans up */
        munmap(long_name_host, 4096);
    }

    /* ---- enable_notify failing half way leaves nothing registered or open ---- */
    {
        printf("enable_notify failing on the second block's registration\n");
        const int fds0 = pcr_count_fds();
        vmm w;
        vmm_init(&w, SERVE_DIRECT);
        vmm_add_block(&w, "a.ram", BLK_ANON_PRIVATE, 8);
        vmm_add_block(&w, "b.ram", BLK_ANON_PRIVATE, 8);
        vmm_create(&w);
        CHECK_EQ(pcr_incoming_init(w.mis, 0), 0);
        /* Blocks register in address order. Replace the memory of the higher one with a
         * private mapping of a regular file, which userfaultfd cannot register for missing
         * pages (unmapping it would not do: registration skips holes, and the library's
         * own mappings may land there). */
        int hi = w.blocks[0].host > w.blocks[1].host ? 0 : 1, lo = 1 - hi;
        char path[] = "/tmp/pcr-bad-inputs-XXXXXX";
        int file = mkstemp(path);
        CHECK(file >= 0);
        CHECK(unlink(path) == 0);
        CHECK(ftruncate(file, (off_t)w.blocks[hi].map_length) == 0);
        void *filemap = mmap(w.blocks[hi].host, w.blocks[hi].map_length, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_FIXED, file, 0);
        CHECK(filemap == (void *)w.blocks[hi].host);
        close(file);
        int rc = 0;
        LOG_EXPECT_ONE(rc = pcr_incoming_enable_notify(w.mis), "REGISTER");
        CHECK_MSG(rc < 0 && rc != -EBUSY, "enable_notify returned %d", rc);
        CHECK_EQ(pcr_state_get(w.mis), PCR_STATE_ADVISE);
        CHECK_EQ(w.balloon_calls, 0);
        CHECK_EQ(pcr_count_fds(), fds0); /* the userfaultfd and eventfd are closed */
        /* the first block is not registered any more: reads zero, no request, no hang */
        CHECK_EQ_U64(pcr_touch_read(w.blocks[lo].host), 0);
        CHECK_EQ(vmm_nreqs(&w), 0);
        /* with the memory back, enable_notify works */
        void *again = mmap(w.blocks[hi].host, w.blocks[hi].map_length, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        CHECK(again == (void *)w.blocks[hi].host);
        LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_enable_notify(w.mis), 0));
        CHECK_EQ_U64(pcr_touch_read(w.blocks[hi].host + 3 * 4096), pcr_word(hi, 3 * 4096));
        CHECK_EQ_U64(pcr_touch_read(w.blocks[lo].host + 4096), pcr_word(lo, 4096));
        CHECK_EQ(vmm_nreqs(&w), 2);
        vmm_check_no_anomaly(&w);
        CHECK_EQ(pcr_incoming_cleanup(w.mis), 0);
        vmm_destroy(&w);
        CHECK_EQ(pcr_count_fds(), fds0);
    }

    /* ---- source side ---- */
    printf("source misuse\n");
    {
        int sent = 0;
        PcrSourceOps sops;
        memset(&sops, 0, sizeof sops);
        LOG_EXPECT_ONE(CHECK(pcr_source_new(NULL, &sent) == NULL), "NULL");
        LOG_EXPECT_ONE(CHECK(pcr_source_new(&sops, &sent) == NULL), "required");
        sops.send_discard = noop_send;
        sops.target_page_size = 1000;
        LOG_EXPECT_ONE(CHECK(pcr_source_new(&sops, &sent) == NULL), "power of two");
        sops.target_page_size = 0; /* 4096 */
        PcrSource *ms = pcr_source_new(&sops, &sent);
        CHECK(ms != NULL);
        char name256[257];
        memset(name256, 'x', 256);
        name256[256] = 0;
        LOG_EXPECT_ONE(CHECK(pcr_discard_send_init(ms, 0, NULL) == NULL), "NULL");
        LOG_EXPECT_ONE(CHECK(pcr_discard_send_init(ms, 0, "") == NULL), NULL);
        LOG_EXPECT_ONE(CHECK(pcr_discard_send_init(ms, 0, name256) == NULL), NULL);
        LOG_EXPECT_ONE(CHECK(pcr_discard_send_init(ms, 0, "\xff\xfe") == NULL), "UTF-8");
        LOG_EXPECT_ONE(pcr_discard_send_range(ms, NULL, 0, 1), "NULL");
        LOG_EXPECT_ONE(pcr_discard_send_finish(ms, NULL), "NULL");
        PcrDiscardState *pds = pcr_discard_send_init(ms, 100, "pc.ram");
        CHECK(pds != NULL);
        LOG_EXPECT_ONE(pcr_discard_send_range(ms, pds, 99, 1), "before"); /* before the block */
        LOG_EXPECT_ONE(pcr_discard_send_range(ms, pds, 100, 0), "empty");
        LOG_EXPECT_ONE(pcr_discard_send_range(NULL, pds, 100, 1), "NULL");
        LOG_EXPECT_NONE(pcr_discard_send_range(ms, pds, 100, 1));
        LOG_EXPECT_ONE(pcr_discard_send_finish(NULL, pds), "NULL"); /* frees pds anyway */
        CHECK_EQ(sent, 0);
        /* a batch finished without ranges sends nothing */
        pds = pcr_discard_send_init(ms, 0, "pc.ram");
        CHECK(pds != NULL);
        LOG_EXPECT_NONE(pcr_discard_send_finish(ms, pds));
        CHECK_EQ(sent, 0);
        pcr_source_free(ms);
    }

    free(buf);
    const int fds_after = pcr_count_fds();
    if (fds_after != fds_before) {
        pcr_list_fds();
        pcr_fail("descriptors: %d before, %d after", fds_before, fds_after);
    }
    pcr_test_pass();
    return 0;
}
