/* Touching guest memory (pcr_touch.h). */
#include "pcr_touch.h"

/* Whether the (base) page at `addr` is resident, by mincore(2), without touching it. */
bool pcr_resident(void *addr)
{
    unsigned char vec[1] = {0};
    if (mincore(addr, 1, vec) != 0)
        pcr_fail("mincore(%p): %s", addr, strerror(errno));
    return (vec[0] & 1) != 0;
}

/* Reads the 8 bytes at `addr`. Natively a plain load (the thread blocks in the page fault
 * until the page is placed). Under valgrind the kernel does the access inside write(2) to a
 * pipe, so that the thread blocks in a syscall, where valgrind lets the other threads (the
 * library's fault thread) run. */
uint64_t pcr_touch_read(const void *addr)
{
    uint64_t value = 0;
    if (!pcr_under_valgrind()) {
        value = *(const volatile uint64_t *)addr;
        return value;
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        pcr_fail("pipe2: %s", strerror(errno));
    ssize_t n = write(p[1], addr, sizeof value);
    if (n != (ssize_t)sizeof value)
        pcr_fail("write(pipe, %p): %zd (%s)", addr, n, strerror(errno));
    n = read(p[0], &value, sizeof value);
    if (n != (ssize_t)sizeof value)
        pcr_fail("read(pipe): %zd (%s)", n, strerror(errno));
    close(p[0]);
    close(p[1]);
    return value;
}

/* Writes `value` to the 8 bytes at `addr` (see pcr_touch_read). */
void pcr_touch_write(void *addr, uint64_t value)
{
    if (!pcr_under_valgrind()) {
        *(volatile uint64_t *)addr = value;
        return;
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        pcr_fail("pipe2: %s", strerror(errno));
    ssize_t n = write(p[1], &value, sizeof value);
    if (n != (ssize_t)sizeof value)
        pcr_fail("write(pipe): %zd (%s)", n, strerror(errno));
    n = read(p[0], addr, sizeof value);
    if (n != (ssize_t)sizeof value)
        pcr_fail("read(pipe, %p): %zd (%s)", addr, n, strerror(errno));
    close(p[0]);
    close(p[1]);
}

