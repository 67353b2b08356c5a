/*
 * test_config_edges.c: issue 17 items 4, 5, 10 and 11 through the C ABI.
 *
 * - A target page larger than the host page (so larger than a block's page) is refused
 *   when the destination is created: NULL and one log line, never a panic or wrapped
 *   page arithmetic later.
 * - A callback returning INT_MIN is an error (-EIO), never an overflow caught as an
 *   internal panic (-EFAULT), and never a success.
 * - A cleanup before LISTEN (QEMU 7.2 in ADVISE when postcopy goes unused) calls
 *   mlock(true) after init's mlock(false).
 * - With enable_mlock and no mlock callback, the library locks and unlocks this
 *   destination's blocks only: an unrelated locked mapping stays locked throughout, an
 *   unrelated unlocked one is never locked.
 */
#include <limits.h>

#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"

static int mlock_calls[8];
static int nmlock;

static int record_mlock(void *opaque, bool lock)
{
    (void)opaque;
    if (nmlock < 8)
        mlock_calls[nmlock] = lock;
    nmlock++;
    return 0;
}

/* Whether the mapping holding `addr` is mlocked ("lo" in its VmFlags). */
static bool is_locked(const void *addr)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    CHECK(f != NULL);
    char line[512];
    bool inside = false, locked = false, found = false;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            inside = lo <= (uintptr_t)addr && (uintptr_t)addr < hi;
            continue;
        }
        if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            locked = strstr(line, " lo") != NULL;
            found = true;
            break;
        }
    }
    fclose(f);
    CHECK_MSG(found, "no mapping at %p in smaps", addr);
    return locked;
}

/* `test_config_edges [section]`: all sections, or the one named. */
static const char *only;
static bool section(const char *name)
{
    if (only && strcmp(only, name) != 0)
        return false;
    printf("%s\n", name);
    return true;
}

/* mlock(2) itself: ASan replaces mlock() by a no-op. */
static int lock_range(void *addr, size_t len)
{
    return (int)syscall(SYS_mlock, addr, len);
}

int main(int argc, char **argv)
{
    pcr_test_begin("test_config_edges", 60);
    only = argc > 1 ? argv[1] : NULL;
    const long host_page = sysconf(_SC_PAGESIZE);

    /* ---- item 4: target page larger than the host page ---- */
    if (section("target_page")) {
        vmm v;
        vmm_init(&v, SERVE_NONE);
        vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 16);
        v.ops.target_page_size = (size_t)host_page * 2;
        LOG_EXPECT_ONE(CHECK(pcr_incoming_new(&v.ops, &v) == NULL), "host page size");
        v.ops.target_page_size = (size_t)1 << 21;
        LOG_EXPECT_ONE(CHECK(pcr_incoming_new(&v.ops, &v) == NULL), "host page size");
        v.ops.target_page_size = (size_t)host_page;
        vmm_create(&v);
        CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
        CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
        vmm_destroy(&v);
    }

    /* ---- item 10: a callback returning INT_MIN ---- */
    if (section("int_min")) {
        vmm v;
        vmm_init(&v, SERVE_NONE);
        vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 16);
        vmm_create(&v);
        v.foreach_rc = INT_MIN;
        int rc = 0;
        LOG_EXPECT_ONE(rc = pcr_incoming_init(v.mis, 0), "foreach_ram_block");
        CHECK_EQ(rc, -EIO);
        CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_NONE);
        v.foreach_rc = 0;
        CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
        CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
        vmm_destroy(&v);
    }

    /* ---- item 5: cleanup in ADVISE re-locks through the mlock callback ---- */
    if (section("mlock_cleanup_advise")) {
        vmm v;
        vmm_init(&v, SERVE_NONE);
        vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 16);
        v.ops.mlock = record_mlock;
        v.ops.enable_mlock = true;
        vmm_create(&v);
        nmlock = 0;
        CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
        CHECK_EQ(pcr_state_get(v.mis), PCR_STATE_ADVISE);
        CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
        CHECK_EQ(nmlock, 2);
        CHECK_EQ(mlock_calls[0], false);
        CHECK_EQ(mlock_calls[1], true);
        vmm_destroy(&v);
    }

    /* ---- item 11: the default mlock policy touches this destination's blocks only ---- */
    if (section("mlock_scope")) {
        const size_t len = 16 * (size_t)host_page;
        uint8_t *other_locked = mmap(NULL, len, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        uint8_t *other_unlocked = mmap(NULL, len, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(other_locked != MAP_FAILED && other_unlocked != MAP_FAILED);
        if (lock_range(other_locked, len) != 0)
            pcr_skip("mlock: %s", strerror(errno));
        vmm v;
        vmm_init(&v, SERVE_DIRECT);
        vmm_block *b = vmm_add_block(&v, "pc.ram", BLK_ANON_PRIVATE, 16);
        CHECK_EQ(lock_range(b->host, b->map_length), 0);
        v.ops.enable_mlock = true;
        vmm_create(&v);
        CHECK(is_locked(b->host));
        CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
        CHECK(!is_locked(b->host));
        CHECK_MSG(is_locked(other_locked), "init unlocked memory of another VM");
        CHECK_EQ(pcr_incoming_enable_notify(v.mis), 0);
        CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
        CHECK(is_locked(b->host));
        CHECK(is_locked(other_locked));
        CHECK_MSG(!is_locked(other_unlocked), "cleanup locked memory of another VM");
        vmm_destroy(&v);
        munmap(other_locked, len);
        munmap(other_unlocked, len);
    }

    pcr_test_pass();
    return 0;
}
