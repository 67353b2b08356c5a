/*
 * Golden wire vectors through the C exports: every postcopy command and return-path
 * message, a 12-range discard, a REQ_PAGES_ID, the received-bitmap block, error codes for
 * bad input, and the discard walk. The bytes are written from the documented layout
 * (QEMU's migration stream), not produced by the library.
 *
 * Returns 0 when every check passes; prints one "FAIL" line per failed check otherwise.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "postcopy_ram.h"

static int failures;
static int checks;

#define CHECK(cond)                                                          \
    do {                                                                     \
        checks++;                                                            \
        if (!(cond)) {                                                       \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
            failures++;                                                      \
        }                                                                    \
    } while (0)

/* Log lines of the library, captured so that error paths can be checked for a message. */
static int log_lines;
static char last_log[512];

static void capture_log(void *opaque, int level, const char *message)
{
    (void)opaque;
    (void)level;
    log_lines++;
    snprintf(last_log, sizeof(last_log), "%s", message);
}

/* Bytes from hex digits; other characters are separators. Returns the byte count. */
static size_t hex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = 0;
    int half = -1;
    for (; *s; s++) {
        int v;
        if (*s >= '0' && *s <= '9') {
            v = *s - '0';
        } else if (*s >= 'a' && *s <= 'f') {
            v = *s - 'a' + 10;
        } else {
            continue;
        }
        if (half < 0) {
            half = v;
        } else {
            if (n < cap) {
                out[n] = (uint8_t)(half << 4 | v);
            }
            n++;
            half = -1;
        }
    }
    return n;
}

/* Whether encoder result `got` (length or -errno) is exactly the bytes of `expected_hex`. */
static int encodes_as(const uint8_t *buf, ptrdiff_t got, const char *expected_hex)
{
    uint8_t want[512];
    size_t n = hex(expected_hex, want, sizeof(want));
    if (got != (ptrdiff_t)n || memcmp(buf, want, n) != 0) {
        printf("  encoded %td bytes, expected %zu: %s\n", got, n, expected_hex);
        return 0;
    }
    return 1;
}

static struct PcrWireCommand command(uint16_t cmd)
{
    struct PcrWireCommand c;
    memset(&c, 0, sizeof(c));
    c.cmd = cmd;
    return c;
}

static struct PcrWireRpMessage rp(uint16_t type)
{
    struct PcrWireRpMessage m;
    memset(&m, 0, sizeof(m));
    m.rp_type = type;
    return m;
}

struct golden_cmd {
    struct PcrWireCommand msg;
    const char *bytes;
};

static void test_commands(void)
{
    struct golden_cmd g[9];
    size_t i;

    g[0].msg = command(PCR_WIRE_CMD_OPEN_RETURN_PATH);
    g[0].bytes = "08 0001 0000";
    g[1].msg = command(PCR_WIRE_CMD_PING);
    g[1].msg.value = 0x01020304;
    g[1].bytes = "08 0002 0004 01020304";
    g[2].msg = command(PCR_WIRE_CMD_POSTCOPY_ADVISE);
    g[2].msg.has_page_sizes = 1;
    g[2].msg.ram_pagesize_summary = 0x201000;
    g[2].msg.target_page_size = 0x1000;
    g[2].bytes = "08 0003 0010 0000000000201000 0000000000001000";
    g[3].msg = command(PCR_WIRE_CMD_POSTCOPY_ADVISE);
    g[3].bytes = "08 0003 0000";
    g[4].msg = command(PCR_WIRE_CMD_POSTCOPY_LISTEN);
    g[4].bytes = "08 0004 0000";
    g[5].msg = command(PCR_WIRE_CMD_POSTCOPY_RUN);
    g[5].bytes = "08 0005 0000";
    g[6].msg = command(PCR_WIRE_CMD_PACKAGED);
    g[6].msg.value = 0x12345;
    g[6].bytes = "08 0007 0004 00012345";
    g[7].msg = command(PCR_WIRE_CMD_POSTCOPY_RESUME);
    g[7].bytes = "08 0009 0000";
    g[8].msg = command(PCR_WIRE_CMD_RECV_BITMAP);
    g[8].msg.name = "pc.ram";
    g[8].msg.name_len = 6;
    g[8].bytes = "08 000a 0007 06 70632e72616d";

    for (i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
        uint8_t buf[64], wire[64];
        size_t n = hex(g[i].bytes, wire, sizeof(wire));
        struct PcrWireCommand out;
        struct PcrWireHeader h;
        ptrdiff_t got = pcr_wire_encode_command(buf, sizeof(buf), &g[i].msg);
        CHECK(encodes_as(buf, got, g[i].bytes));

        CHECK(pcr_wire_decode_command_header(wire, 5, &h) == 0);
        CHECK(h.kind == g[i].msg.cmd);
        CHECK(h.total_len == n);
        CHECK((size_t)h.payload_len == n - 5);

        memset(&out, 0xa5, sizeof(out));
        CHECK(pcr_wire_decode_command(wire, n, &out) == (ptrdiff_t)n);
        CHECK(out.cmd == g[i].msg.cmd);
        CHECK(out.value == g[i].msg.value);
        CHECK(out.has_page_sizes == g[i].msg.has_page_sizes);
        CHECK(out.ram_pagesize_summary == g[i].msg.ram_pagesize_summary);
        CHECK(out.target_page_size == g[i].msg.target_page_size);
        CHECK(out.name_len == g[i].msg.name_len);
        if (g[i].msg.name_len) {
            /* The decoded name points into the input buffer. */
            CHECK(out.name == (const char *)wire + 6);
            CHECK(memcmp(out.name, g[i].msg.name, out.name_len) == 0);
        } else {
            CHECK(out.name == NULL);
        }
        CHECK(out.range_count == 0);

        /* Every shorter prefix is a truncated message. */
        for (size_t len = 0; len < n; len++) {
            CHECK(pcr_wire_decode_command(wire, len, &out) == -EBADMSG);
        }
        /* A buffer one byte short is -ENOSPC. */
        CHECK(pcr_wire_encode_command(buf, n - 1, &g[i].msg) == -ENOSPC);
    }
}

static const char DISCARD_1[] = "08 0006 0019 | 00 06 70632e72616d 00 | 0000000000001000 0000000000002000";

static const char DISCARD_12[] = "08 0006 00c7 | 00 04 72616d30 00 |"
                                 "0000000000000000 0000000000001000 0000000000010000 0000000000002000"
                                 "0000000000020000 0000000000003000 0000000000030000 0000000000004000"
                                 "0000000000040000 0000000000005000 0000000000050000 0000000000006000"
                                 "0000000000060000 0000000000007000 0000000000070000 0000000000008000"
                                 "0000000000080000 0000000000009000 0000000000090000 000000000000a000"
                                 "00000000000a0000 000000000000b000 00000000000b0000 000000000000c000";

static void test_discard(void)
{
    uint8_t buf[512], wire[512];
    uint64_t starts[PCR_MAX_DISCARDS_PER_COMMAND], lengths[PCR_MAX_DISCARDS_PER_COMMAND];
    uint64_t got_starts[16], got_lengths[16];
    struct PcrWireDiscard d;
    struct PcrWireCommand c;
    uint64_t one_start = 0x1000, one_length = 0x2000;
    size_t n, i;

    CHECK(encodes_as(buf, pcr_wire_encode_discard(buf, sizeof(buf), "pc.ram", &one_start, &one_length, 1),
                     DISCARD_1));

    for (i = 0; i < PCR_MAX_DISCARDS_PER_COMMAND; i++) {
        starts[i] = i * 0x10000;
        lengths[i] = (i + 1) * 0x1000;
    }
    CHECK(encodes_as(buf, pcr_wire_encode_discard(buf, sizeof(buf), "ram0", starts, lengths, 12), DISCARD_12));

    n = hex(DISCARD_12, wire, sizeof(wire));
    CHECK(n == 5 + 3 + 4 + 16 * 12);
    memset(got_starts, 0, sizeof(got_starts));
    CHECK(pcr_wire_decode_discard(wire, n, &d, got_starts, got_lengths, 16) == (ptrdiff_t)n);
    CHECK(d.name_len == 4 && memcmp(d.name, "ram0", 4) == 0);
    CHECK(d.name == (const char *)wire + 7);
    CHECK(d.range_count == 12);
    CHECK(memcmp(got_starts, starts, sizeof(starts)) == 0);
    CHECK(memcmp(got_lengths, lengths, sizeof(lengths)) == 0);

    /* The generic decoder gives the name and the count. */
    CHECK(pcr_wire_decode_command(wire, n, &c) == (ptrdiff_t)n);
    CHECK(c.cmd == PCR_WIRE_CMD_POSTCOPY_RAM_DISCARD);
    CHECK(c.range_count == 12 && c.name_len == 4);

    /* Too little room for the ranges: -ENOSPC, with the name, count and first ranges. */
    memset(got_starts, 0, sizeof(got_starts));
    CHECK(pcr_wire_decode_discard(wire, n, &d, got_starts, got_lengths, 4) == -ENOSPC);
    CHECK(d.range_count == 12 && d.name_len == 4);
    CHECK(got_starts[3] == 0x30000 && got_starts[4] == 0);
    CHECK(pcr_wire_decode_discard(wire, n, &d, NULL, NULL, 0) == -ENOSPC);

    /* Not a discard. */
    n = hex("08 0005 0000", wire, sizeof(wire));
    CHECK(pcr_wire_decode_discard(wire, n, &d, got_starts, got_lengths, 16) == -EBADMSG);

    /* Bad fields, each in turn. */
    n = hex(DISCARD_1, wire, sizeof(wire));
    wire[5] = 1; /* version */
    CHECK(pcr_wire_decode_discard(wire, n, &d, got_starts, got_lengths, 16) == -EBADMSG);
    n = hex(DISCARD_1, wire, sizeof(wire));
    wire[13] = 'x'; /* terminator */
    CHECK(pcr_wire_decode_discard(wire, n, &d, got_starts, got_lengths, 16) == -EBADMSG);
    n = hex(DISCARD_1, wire, sizeof(wire));
    wire[28] = 0; /* length 0x2000 -> 0: an empty range, as QEMU 2.6-2.9 sources send */
    CHECK(pcr_wire_decode_discard(wire, n, &d, got_starts, got_lengths, 16) == (ptrdiff_t)n);
    CHECK(d.range_count == 1 && got_lengths[0] == 0);
    n = hex("08 0006 0014 | 00 00 00 | 0000000000001000 0000000000002000 00", wire, sizeof(wire));
    CHECK(pcr_wire_decode_discard(wire, n, &d, got_starts, got_lengths, 16) == -EINVAL); /* empty name */
    n = hex("08 0006 001a | 00 06 70632e72616d 00 | 0000000000001000 0000000000002000 00", wire, sizeof(wire));
    CHECK(pcr_wire_decode_discard(wire, n, &d, got_starts, got_lengths, 16) == -EBADMSG); /* 17 bytes */
}

static void test_discard_encode_errors(void)
{
    uint8_t buf[512];
    char long_name[257];
    uint64_t s[2] = {0, 0x1000}, l[2] = {0x1000, 0};

    memset(long_name, 'n', 256);
    long_name[256] = '\0';
    CHECK(pcr_wire_encode_discard(buf, sizeof(buf), "", s, l, 1) == -EINVAL);
    CHECK(pcr_wire_encode_discard(buf, sizeof(buf), long_name, s, l, 1) == -EINVAL);
    long_name[255] = '\0';
    CHECK(pcr_wire_encode_discard(buf, sizeof(buf), long_name, s, l, 1) == 5 + 3 + 255 + 16);
    CHECK(pcr_wire_encode_discard(buf, sizeof(buf), "ram", s, l, 2) == -EINVAL); /* zero length */
    CHECK(pcr_wire_encode_discard(buf, sizeof(buf), "ram", s, l, 0) == -EINVAL); /* no range */
    CHECK(pcr_wire_encode_discard(buf, 26, "ram", s, l, 1) == -ENOSPC);
    CHECK(pcr_wire_encode_discard(buf, 27, "ram", s, l, 1) == 27);

    log_lines = 0;
    CHECK(pcr_wire_encode_discard(NULL, 64, "ram", s, l, 1) == -EINVAL);
    CHECK(log_lines == 1 && strstr(last_log, "buf is NULL") != NULL);
    CHECK(pcr_wire_encode_discard(buf, 64, NULL, s, l, 1) == -EINVAL);
    CHECK(strstr(last_log, "name is NULL") != NULL);
    CHECK(pcr_wire_encode_discard(buf, 64, "ram", NULL, l, 1) == -EINVAL);
    CHECK(strstr(last_log, "starts is NULL") != NULL);
}

struct golden_rp {
    struct PcrWireRpMessage msg;
    const char *bytes;
};

static void test_return_path(void)
{
    struct golden_rp g[6];
    size_t i;

    g[0].msg = rp(PCR_WIRE_RP_SHUT);
    g[0].msg.value = 1;
    g[0].bytes = "0001 0004 00000001";
    g[1].msg = rp(PCR_WIRE_RP_PONG);
    g[1].msg.value = 0xdeadbeef;
    g[1].bytes = "0002 0004 deadbeef";
    g[2].msg = rp(PCR_WIRE_RP_REQ_PAGES);
    g[2].msg.start = 0x7ffff000;
    g[2].msg.len = 0x1000;
    g[2].bytes = "0004 000c 000000007ffff000 00001000";
    g[3].msg = rp(PCR_WIRE_RP_REQ_PAGES_ID);
    g[3].msg.start = 0x200000;
    g[3].msg.len = 0x200000;
    g[3].msg.name = "pc.ram";
    g[3].msg.name_len = 6;
    g[3].bytes = "0003 0013 0000000000200000 00200000 06 70632e72616d";
    g[4].msg = rp(PCR_WIRE_RP_RECV_BITMAP);
    g[4].msg.name = "pc.ram";
    g[4].msg.name_len = 6;
    g[4].bytes = "0005 0007 06 70632e72616d";
    g[5].msg = rp(PCR_WIRE_RP_RESUME_ACK);
    g[5].msg.value = 1;
    g[5].bytes = "0006 0004 00000001";

    for (i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
        uint8_t buf[64], wire[64];
        size_t n = hex(g[i].bytes, wire, sizeof(wire));
        struct PcrWireRpMessage out;
        struct PcrWireHeader h;

        CHECK(encodes_as(buf, pcr_wire_encode_return_path(buf, sizeof(buf), &g[i].msg), g[i].bytes));
        CHECK(pcr_wire_encode_return_path(buf, n - 1, &g[i].msg) == -ENOSPC);

        CHECK(pcr_wire_decode_return_path_header(wire, 4, &h) == 0);
        CHECK(h.kind == g[i].msg.rp_type && h.total_len == n && (size_t)h.payload_len == n - 4);

        memset(&out, 0x5a, sizeof(out));
        CHECK(pcr_wire_decode_return_path(wire, n, &out) == (ptrdiff_t)n);
        CHECK(out.rp_type == g[i].msg.rp_type);
        CHECK(out.value == g[i].msg.value);
        CHECK(out.start == g[i].msg.start);
        CHECK(out.len == g[i].msg.len);
        CHECK(out.name_len == g[i].msg.name_len);
        if (out.name_len) {
            CHECK(memcmp(out.name, g[i].msg.name, out.name_len) == 0);
        } else {
            CHECK(out.name == NULL);
        }
        for (size_t len = 0; len < n; len++) {
            CHECK(pcr_wire_decode_return_path(wire, len, &out) == -EBADMSG);
        }
    }
}

static void test_return_path_errors(void)
{
    uint8_t buf[600], wire[64];
    struct PcrWireRpMessage m = rp(PCR_WIRE_RP_REQ_PAGES_ID);
    struct PcrWireHeader h;
    char long_name[256];
    size_t n;

    m.start = 0;
    m.len = 4096;
    m.name = "";
    m.name_len = 0;
    CHECK(pcr_wire_encode_return_path(buf, sizeof(buf), &m) == -EINVAL); /* empty id */
    memset(long_name, 'x', sizeof(long_name));
    m.name = long_name;
    m.name_len = 256;
    CHECK(pcr_wire_encode_return_path(buf, sizeof(buf), &m) == -EINVAL); /* 256-byte id */
    m.name_len = 255;
    CHECK(pcr_wire_encode_return_path(buf, sizeof(buf), &m) == 4 + 13 + 255);
    m = rp(PCR_WIRE_RP_REQ_PAGES);
    CHECK(pcr_wire_encode_return_path(buf, sizeof(buf), &m) == -EINVAL); /* 0 bytes */
    m = rp(8);
    CHECK(pcr_wire_encode_return_path(buf, sizeof(buf), &m) == -EINVAL); /* unknown type */

    n = hex("0008 0004 00000000", wire, sizeof(wire));
    CHECK(pcr_wire_decode_return_path(wire, n, &m) == -EBADMSG);
    CHECK(pcr_wire_decode_return_path_header(wire, n, &h) == -EBADMSG);
    /* SWITCHOVER_ACK (QEMU 8.1): no payload. */
    n = hex("0007 0000", wire, sizeof(wire));
    CHECK(pcr_wire_decode_return_path_header(wire, n, &h) == 0);
    CHECK(h.kind == PCR_WIRE_RP_SWITCHOVER_ACK && h.payload_len == 0 && h.total_len == 4);
    CHECK(pcr_wire_decode_return_path(wire, n, &m) == 4);
    CHECK(m.rp_type == PCR_WIRE_RP_SWITCHOVER_ACK);
    m = rp(PCR_WIRE_RP_SWITCHOVER_ACK);
    CHECK(pcr_wire_encode_return_path(buf, sizeof(buf), &m) == 4);
    CHECK(memcmp(buf, wire, 4) == 0);
    n = hex("0007 0001 00", wire, sizeof(wire));
    CHECK(pcr_wire_decode_return_path_header(wire, n, &h) == -EBADMSG);
    n = hex("0001 0005 0000000000", wire, sizeof(wire)); /* SHUT of 5 bytes */
    CHECK(pcr_wire_decode_return_path(wire, n, &m) == -EBADMSG);
    n = hex("0003 000d 0000000000000000 00001000 00", wire, sizeof(wire)); /* empty id */
    CHECK(pcr_wire_decode_return_path(wire, n, &m) == -EINVAL);
    CHECK(pcr_wire_decode_return_path(NULL, n, &m) == -EINVAL);
    CHECK(pcr_wire_decode_return_path(wire, n, NULL) == -EINVAL);
    CHECK(strstr(last_log, "out is NULL") != NULL);
}

static void test_command_errors(void)
{
    uint8_t buf[64], wire[64];
    struct PcrWireCommand c = command(12);
    struct PcrWireHeader h;
    size_t n;

    CHECK(pcr_wire_encode_command(buf, sizeof(buf), &c) == -EINVAL); /* unknown command */
    c = command(PCR_WIRE_CMD_POSTCOPY_RAM_DISCARD);
    CHECK(pcr_wire_encode_command(buf, sizeof(buf), &c) == -EINVAL);
    c = command(PCR_WIRE_CMD_RECV_BITMAP);
    CHECK(pcr_wire_encode_command(buf, sizeof(buf), &c) == -EINVAL); /* empty name */
    CHECK(pcr_wire_encode_command(buf, sizeof(buf), NULL) == -EINVAL);

    n = hex("08 000c 0000", wire, sizeof(wire));
    CHECK(pcr_wire_decode_command(wire, n, &c) == -EBADMSG);
    CHECK(strstr(last_log, "unknown command 12") != NULL);
    /* ENABLE_COLO (8) and SWITCHOVER_START (11, QEMU 10.0): no payload. */
    static const uint16_t no_payload[2] = {PCR_WIRE_CMD_ENABLE_COLO, PCR_WIRE_CMD_SWITCHOVER_START};
    for (int i = 0; i < 2; i++) {
        uint8_t msg[5] = {0x08, 0, (uint8_t)no_payload[i], 0, 0};
        CHECK(pcr_wire_decode_command_header(msg, 5, &h) == 0);
        CHECK(h.kind == no_payload[i] && h.payload_len == 0 && h.total_len == 5);
        CHECK(pcr_wire_decode_command(msg, 5, &c) == 5 && c.cmd == no_payload[i]);
        c = command(no_payload[i]);
        CHECK(pcr_wire_encode_command(buf, sizeof(buf), &c) == 5);
        CHECK(memcmp(buf, msg, 5) == 0);
        msg[4] = 1;
        CHECK(pcr_wire_decode_command_header(msg, 5, &h) == -EBADMSG);
    }
    n = hex("07 0001 0000", wire, sizeof(wire));
    CHECK(pcr_wire_decode_command_header(wire, n, &h) == -EBADMSG);
    n = hex("08 0002 0003 000000", wire, sizeof(wire));
    CHECK(pcr_wire_decode_command_header(wire, n, &h) == -EBADMSG);
    CHECK(pcr_wire_decode_command_header(wire, 4, &h) == -EBADMSG);
    n = hex("08 000a 0003 02 6100", wire, sizeof(wire)); /* NUL in the name */
    CHECK(pcr_wire_decode_command(wire, n, &c) == -EINVAL);
}

static void test_recv_bitmap(void)
{
    /* 70 pages; received 0, 1, 9, 63, 64, 69; bit 70 is past the end and not sent. */
    uint64_t bitmap[2] = {0x8000000000000203ull, 0x61};
    uint64_t back[2] = {0, 0};
    const char *golden = "0000000000000010 | 0302000000000080 2100000000000000 | 0123456789abcdef";
    uint8_t buf[64], wire[64];
    size_t n = hex(golden, wire, sizeof(wire));

    CHECK(pcr_wire_recv_bitmap_len(70) == 32);
    CHECK(pcr_wire_recv_bitmap_len(128) == 32);
    CHECK(pcr_wire_recv_bitmap_len(129) == 40);
    CHECK(encodes_as(buf, pcr_wire_encode_recv_bitmap(buf, sizeof(buf), bitmap, 70), golden));
    CHECK(pcr_wire_encode_recv_bitmap(buf, 31, bitmap, 70) == -ENOSPC);
    CHECK(pcr_wire_decode_recv_bitmap(wire, n, back, 70) == (ptrdiff_t)n);
    CHECK(back[0] == bitmap[0] && back[1] == 0x21);
    CHECK(pcr_wire_decode_recv_bitmap(wire, n, back, 200) == -EINVAL); /* size mismatch */
    CHECK(pcr_wire_decode_recv_bitmap(wire, n - 1, back, 70) == -EBADMSG);
    wire[n - 1] ^= 1;
    CHECK(pcr_wire_decode_recv_bitmap(wire, n, back, 70) == -EBADMSG); /* end marker */
}

struct runs {
    uint64_t start[16];
    uint64_t npages[16];
    int count;
    int stop_after;
};

static int collect(void *opaque, uint64_t start, uint64_t npages)
{
    struct runs *r = opaque;
    if (r->count < 16) {
        r->start[r->count] = start;
        r->npages[r->count] = npages;
    }
    r->count++;
    return r->count == r->stop_after ? 77 : 0;
}

static void test_discard_walk(void)
{
    uint64_t bm[4];
    struct runs r;

    /* Pages 60..69 and 127..192 set. */
    memset(bm, 0, sizeof(bm));
    bm[0] = 0xf000000000000000ull;
    bm[1] = 0x3f | 0x8000000000000000ull;
    bm[2] = ~0ull;
    bm[3] = 1;

    memset(&r, 0, sizeof(r));
    {
        uint64_t copy[4];
        memcpy(copy, bm, sizeof(bm));
        CHECK(pcr_discard_walk(copy, 256, 1, collect, &r) == 0);
        CHECK(r.count == 2);
        CHECK(r.start[0] == 60 && r.npages[0] == 10);
        CHECK(r.start[1] == 127 && r.npages[1] == 66);
        CHECK(memcmp(copy, bm, sizeof(bm)) == 0); /* ratio 1: nothing to canonicalise */
    }

    memset(&r, 0, sizeof(r));
    {
        uint64_t copy[4];
        memcpy(copy, bm, sizeof(bm));
        CHECK(pcr_discard_walk(copy, 256, 4, collect, &r) == 0);
        CHECK(r.count == 2);
        CHECK(r.start[0] == 60 && r.npages[0] == 12);
        CHECK(r.start[1] == 124 && r.npages[1] == 72);
        CHECK(copy[1] == (0xffull | 0xf000000000000000ull)); /* host pages made whole */
        CHECK(copy[3] == 0xf);
    }

    memset(&r, 0, sizeof(r));
    CHECK(pcr_discard_walk(bm, 256, 512, collect, &r) == 0);
    CHECK(r.count == 1 && r.start[0] == 0 && r.npages[0] == 256);

    /* A nonzero callback return stops the walk and is returned. */
    memset(bm, 0, sizeof(bm));
    bm[0] = 0x5555555555555555ull;
    memset(&r, 0, sizeof(r));
    r.stop_after = 3;
    CHECK(pcr_discard_walk(bm, 64, 1, collect, &r) == 77);
    CHECK(r.count == 3);

    CHECK(pcr_discard_walk(bm, 64, 3, collect, &r) == -EINVAL);
    CHECK(strstr(last_log, "power of two") != NULL);
    CHECK(pcr_discard_walk(bm, 64, 1, NULL, &r) == -EINVAL);
    CHECK(strstr(last_log, "callback is NULL") != NULL);
    CHECK(pcr_discard_walk(NULL, 64, 1, collect, &r) == -EINVAL);
    CHECK(strstr(last_log, "bitmap is NULL") != NULL);
}

int main(void)
{
    pcr_set_log_callback(capture_log, NULL, 1);

    test_commands();
    test_discard();
    test_discard_encode_errors();
    test_return_path();
    test_return_path_errors();
    test_command_errors();
    test_recv_bitmap();
    test_discard_walk();

    pcr_set_log_callback(NULL, NULL, 2);
    printf("test_wire_golden: %d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
