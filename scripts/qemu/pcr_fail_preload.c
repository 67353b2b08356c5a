/*
 * LD_PRELOAD library for scripts/qemu-check.sh: makes one libpostcopy_ram call return
 * NULL, as the library may, in a patched QEMU: PCR_FAIL_CALL=pcr_source_new or
 * PCR_FAIL_CALL=pcr_discard_send_init (with PCR_FAIL_BLOCK=name, for that RAM block only).
 * Every other call goes to the library.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <postcopy_ram.h>

static int failing(const char *name)
{
    const char *which = getenv("PCR_FAIL_CALL");

    if (which && strcmp(which, name) == 0) {
        fprintf(stderr, "pcr_fail_preload: %s returns NULL\n", name);
        return 1;
    }
    return 0;
}

static void *next(const char *name)
{
    void *f = dlsym(RTLD_NEXT, name);

    if (!f) {
        fprintf(stderr, "pcr_fail_preload: no %s after this library\n", name);
        abort();
    }
    return f;
}

struct PcrSource *pcr_source_new(const struct PcrSourceOps *ops, void *opaque)
{
    struct PcrSource *(*real)(const struct PcrSourceOps *, void *);

    if (failing(__func__)) {
        return NULL;
    }
    *(void **)&real = next(__func__);
    return real(ops, opaque);
}

struct PcrDiscardState *pcr_discard_send_init(struct PcrSource *ms, unsigned long offset,
                                              const char *name)
{
    struct PcrDiscardState *(*real)(struct PcrSource *, unsigned long, const char *);

    const char *block = getenv("PCR_FAIL_BLOCK");

    if ((!block || (name && strcmp(block, name) == 0)) && failing(__func__)) {
        return NULL;
    }
    *(void **)&real = next(__func__);
    return real(ms, offset, name);
}
