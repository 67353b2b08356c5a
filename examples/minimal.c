/* The README's C example: serve the faults of one anonymous RAM block from a callback. */
#include <postcopy_ram.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define RAM_SIZE (16u << 20)

struct vmm { void *ram; PcrIncoming *mis; };

static int foreach_block(void *opaque, PcrRamBlockVisitor visit, void *ctx)
{
    struct vmm *vmm = opaque;
    PcrRamBlock b = { .name = "pc.ram", .host = vmm->ram, .offset = 0,
                      .length = RAM_SIZE, .page_size = 4096, .fd = -1 };
    return visit(&b, ctx);
}

/* Runs on the library's fault thread. A real VMM sends REQ_PAGES to the source here;
 * this one "receives" the page at once and places it. */
static int request_page(void *opaque, void *block_opaque, const char *block, uint64_t offset,
                        uint64_t len)
{
    struct vmm *vmm = opaque;
    (void)block_opaque;
    (void)block;
    unsigned char *page = pcr_get_tmp_page(vmm->mis);
    memset(page, (int)(offset / 4096) & 0xff, len);
    int rc = pcr_place_page(vmm->mis, (char *)vmm->ram + offset, page, len);
    return rc == -EEXIST ? 0 : rc;
}

int main(void)
{
    struct vmm vmm;
    vmm.ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    PcrIncomingOps ops = { .foreach_ram_block = foreach_block, .request_page = request_page };
    vmm.mis = pcr_incoming_new(&ops, &vmm);
    if (!vmm.mis || !pcr_incoming_supported_by_host(vmm.mis))
        return 1;
    if (pcr_incoming_init(vmm.mis, RAM_SIZE / 4096) ||  /* discards all RAM */
        pcr_incoming_prepare_discard(vmm.mis) ||        /* THP off: then discard ranges */
        pcr_incoming_enable_notify(vmm.mis))            /* register + fault thread */
        return 1;
    pcr_state_set(vmm.mis, PCR_STATE_RUNNING);
    unsigned char *ram = vmm.ram;
    printf("page 7 reads %d\n", ram[7 * 4096]);                  /* faults, served above */
    pcr_incoming_cleanup(vmm.mis);
    pcr_incoming_free(vmm.mis);
    munmap(vmm.ram, RAM_SIZE);
    return 0;
}
