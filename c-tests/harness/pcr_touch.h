/*
 * Touching guest memory: a direct load/store, or (under valgrind, where a thread blocked in
 * a page fault inside valgrind's JIT holds valgrind's global lock, so the library's fault
 * thread never runs and the process hangs, even for SIGTERM) the same access performed by
 * the kernel inside a pipe write/read, where the thread blocks in a syscall and valgrind
 * lets the other threads run. Chosen by RUNNING_ON_VALGRIND, or forced with
 * PCR_TOUCH=syscall / PCR_TOUCH=direct.
 */
#ifndef PCR_HARNESS_TOUCH_H
#define PCR_HARNESS_TOUCH_H

#include "pcr_check.h"

/* Whether the (base) page at `addr` is resident, by mincore(2), without touching it. */
bool pcr_resident(void *addr);
/* Reads the 8 bytes at `addr` (blocks until the page is there). */
uint64_t pcr_touch_read(const void *addr);
/* Writes `value` to the 8 bytes at `addr` (see pcr_touch_read). */
void pcr_touch_write(void *addr, uint64_t value);

#endif /* PCR_HARNESS_TOUCH_H */
