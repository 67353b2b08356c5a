/*
 * test_ffi_soundness.c (issue 9 item 15): the entry points that take caller arrays check
 * them before making Rust slices of them. A uint64_t array that is not 8-byte aligned, or
 * an output that overlaps another argument (starts == lengths, a decoded array over the
 * input bytes, an encoder's buffer over its input), is refused with -EINVAL and one log
 * line, instead of being undefined behaviour. The discard walk's callback may read the
 * bitmap while the walk runs (the library holds no reference into it then).
 */
#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"

/* POSTCOPY_RAM_DISCARD for "ram" with ranges (0x1000, +0x2000), (0x8000, +0x1000). */
static size_t discard_bytes(uint8_t *buf, size_t cap)
{
    const uint64_t starts[2] = {0x1000, 0x8000}, lengths[2] = {0x2000, 0x1000};
    ptrdiff_t n = pcr_wire_encode_discard(buf, cap, "ram", starts, lengths, 2);
    CHECK(n > 0);
    return (size_t)n;
}

typedef struct walk_reader {
    const uint64_t *bitmap;
    size_t words;
    uint64_t sum;
    int runs;
} walk_reader;

static int read_bitmap(void *opaque, uint64_t start, uint64_t npages)
{
    walk_reader *r = opaque;
    (void)start;
    (void)npages;
    for (size_t i = 0; i < r->words; i++)
        r->sum += r->bitmap[i];
    r->runs++;
    return 0;
}

int main(void)
{
    pcr_test_begin("test_ffi_soundness", 60);
    uint8_t wire[64];
    size_t n = discard_bytes(wire, sizeof wire);
    PcrWireDiscard d;
    _Alignas(8) uint8_t raw[8 * 9];
    uint64_t *misaligned = (uint64_t *)(void *)(raw + 1);
    uint64_t good[4];

    /* Misaligned arrays. */
    LOG_EXPECT_ONE(CHECK_EQ(pcr_wire_decode_discard(wire, n, &d, misaligned, good, 4), -EINVAL),
                   "aligned");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_wire_decode_discard(wire, n, &d, good, misaligned, 4), -EINVAL),
                   "aligned");
    uint8_t buf[64];
    LOG_EXPECT_ONE(CHECK_EQ(pcr_wire_encode_discard(buf, sizeof buf, "ram", misaligned, good, 1),
                            -EINVAL),
                   "aligned");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_wire_encode_recv_bitmap(buf, sizeof buf, misaligned, 128), -EINVAL),
                   "aligned");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_discard_walk(misaligned, 128, 1, read_bitmap, NULL), -EINVAL),
                   "aligned");

    /* Overlapping outputs. */
    uint64_t both[8] = {0};
    LOG_EXPECT_ONE(CHECK_EQ(pcr_wire_decode_discard(wire, n, &d, both, both, 4), -EINVAL),
                   "overlap");
    LOG_EXPECT_ONE(CHECK_EQ(pcr_wire_decode_discard(wire, n, &d, both, both + 2, 4), -EINVAL),
                   "overlap");
    LOG_EXPECT_NONE(CHECK_EQ(pcr_wire_decode_discard(wire, n, &d, both, both + 4, 4), (ptrdiff_t)n));
    CHECK(both[0] == 0x1000 && both[1] == 0x8000 && both[4] == 0x2000 && both[5] == 0x1000);
    /* The ranges decoded over the message itself. */
    uint64_t inplace[16];
    memcpy(inplace, wire, n);
    LOG_EXPECT_ONE(CHECK_EQ(pcr_wire_decode_discard((const uint8_t *)inplace, n, &d, inplace, good,
                                                    4),
                            -EINVAL),
                   "overlap");
    /* An encoder's buffer over its input. */
    uint64_t arr[8] = {0x1000, 0x1000};
    LOG_EXPECT_ONE(CHECK_EQ(pcr_wire_encode_discard((uint8_t *)arr, sizeof arr, "ram", arr, arr + 1,
                                                    1),
                            -EINVAL),
                   "overlap");
    uint64_t words[8] = {~0ULL, ~0ULL};
    LOG_EXPECT_ONE(CHECK_EQ(pcr_wire_encode_recv_bitmap((uint8_t *)words, sizeof words, words, 64),
                            -EINVAL),
                   "overlap");
    /* Two inputs may alias. */
    const uint64_t same[1] = {0x1000};
    LOG_EXPECT_NONE(CHECK(pcr_wire_encode_discard(buf, sizeof buf, "ram", same, same, 1) > 0));

    /* The walk's callback reads the bitmap on every call. */
    uint64_t bitmap[16];
    for (int i = 0; i < 16; i++)
        bitmap[i] = i % 3 == 2 ? 0 : 0x1111111111111111ULL;
    walk_reader r = {bitmap, 16, 0, 0};
    LOG_EXPECT_NONE(CHECK_EQ(pcr_discard_walk(bitmap, 16 * 64, 2, read_bitmap, &r), 0));
    CHECK(r.runs > 0 && r.sum != 0);
    CHECK(bitmap[0] == 0x3333333333333333ULL);

    pcr_test_pass();
    return 0;
}
