/*
 * test_discard_empty_ranges.c (issue 9 item 1): QEMU 2.6-2.9 sources end the discards of a
 * block whose last page is clean with a range (block_length, 0); QEMU's destination takes
 * it (madvise of 0 bytes). pcr_incoming_handle_discard_command accepts such a command,
 * drops the other ranges, skips the empty one and counts it in
 * PcrStats.discard_ranges_empty; an empty range must still be aligned and inside (or at the
 * end of) the block. The library's own encoder never writes one.
 */
#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"

/* A POSTCOPY_RAM_DISCARD for `name` with `n` ranges, built by hand. */
static size_t discard_cmd(uint8_t *out, const char *name, const uint64_t (*ranges)[2], int n)
{
    size_t len = strlen(name), p = 0;
    size_t payload = 3 + len + 16 * (size_t)n;
    out[p++] = 0x08;
    out[p++] = 0;
    out[p++] = 6;
    out[p++] = (uint8_t)(payload >> 8);
    out[p++] = (uint8_t)payload;
    out[p++] = 0;
    out[p++] = (uint8_t)len;
    memcpy(out + p, name, len);
    p += len;
    out[p++] = 0;
    for (int i = 0; i < n; i++)
        for (int half = 0; half < 2; half++)
            for (int b = 7; b >= 0; b--)
                out[p++] = (uint8_t)(ranges[i][half] >> (8 * b));
    return p;
}

int main(void)
{
    pcr_test_begin("test_discard_empty_ranges", 60);
    vmm v;
    vmm_init(&v, SERVE_NONE);
    vmm_block *b = vmm_add_block(&v, "ram", BLK_ANON_PRIVATE, 16);
    vmm_create(&v);
    const uint64_t P = 4096;
    CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
    memset(b->host, 0xcd, b->map_length);

    uint8_t cmd[128];
    const uint64_t trailing[2][2] = {{2 * P, P}, {16 * P, 0}};
    size_t n = discard_cmd(cmd, "ram", trailing, 2);
    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_handle_discard_command(v.mis, cmd, n), 1));
    CHECK(b->host[2 * P] == 0 && b->host[3 * P] == 0xcd);
    /* The payload alone, and the single-range call. */
    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_handle_discard_command(v.mis, cmd + 5, n - 5), 1));
    LOG_EXPECT_NONE(CHECK_EQ(pcr_incoming_discard_range(v.mis, "ram", 16 * P, 0), 0));

    /* Empty, but past the end or misaligned: the command is refused whole. */
    const uint64_t past[2][2] = {{2 * P, P}, {17 * P, 0}};
    n = discard_cmd(cmd, "ram", past, 2);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_handle_discard_command(v.mis, cmd, n), -EINVAL), "ram");
    const uint64_t odd[2][2] = {{2 * P, P}, {100, 0}};
    n = discard_cmd(cmd, "ram", odd, 2);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_incoming_handle_discard_command(v.mis, cmd, n), -EINVAL), "ram");

    PcrStats s = vmm_stats_now(&v);
    CHECK_EQ_U64(s.discard_ranges_empty, 3);

    /* The encoder still refuses an empty range. */
    const uint64_t start = 16 * P, zero = 0;
    LOG_EXPECT_ONE(CHECK_EQ(pcr_wire_encode_discard(cmd, sizeof cmd, "ram", &start, &zero, 1),
                            -EINVAL),
                   NULL);
    CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
    vmm_destroy(&v);
    pcr_test_pass();
    return 0;
}
