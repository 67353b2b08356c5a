/* Consumer of an installed postcopy-ram: version and host support. */
#include <postcopy_ram.h>
#include <stdio.h>

static int no_blocks(void *opaque, PcrRamBlockVisitor visit, void *ctx)
{
    (void)opaque;
    (void)visit;
    (void)ctx;
    return 0;
}

static int no_request(void *opaque, void *block_opaque, const char *block, uint64_t offset,
                      uint64_t length)
{
    (void)opaque;
    (void)block_opaque;
    (void)block;
    (void)offset;
    (void)length;
    return -1;
}

int main(void)
{
    const char *version = pcr_version();
    uint32_t number = pcr_version_number();
    const PcrIncomingOps ops = {.foreach_ram_block = no_blocks, .request_page = no_request};
    PcrIncoming *mis = pcr_incoming_new(&ops, NULL);
    if (version == NULL || mis == NULL)
        return 1;
    /* No RAM block: asks about private anonymous memory of the host page size. */
    bool supported = pcr_incoming_supported_by_host(mis);
    pcr_incoming_free(mis);
    printf("postcopy-ram %s (%u.%u.%u), supported by host: %s\n", version,
           (unsigned)(number >> 16), (unsigned)((number >> 8) & 0xff), (unsigned)(number & 0xff),
           supported ? "yes" : "no");
    return 0;
}
