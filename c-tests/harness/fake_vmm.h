/*
 * A small C "VMM" for the tests: guest RAM blocks of several kinds (private anonymous,
 * shared anonymous, memfd, hugetlb via MAP_HUGETLB or memfd_create(MFD_HUGETLB)) with
 * deterministic page content f(block, offset), a foreach_ram_block callback, and a
 * request_page callback that checks and records every request and serves it (from the
 * fault thread, from a server thread through pcr_get_tmp_page, or not at all). Compiled
 * once into the harness library that every C test links.
 */
#ifndef PCR_HARNESS_FAKE_VMM_H
#define PCR_HARNESS_FAKE_VMM_H

#include "pcr_check.h"

typedef enum pcr_block_kind {
    BLK_ANON_PRIVATE,  /* MAP_PRIVATE|MAP_ANONYMOUS, 4 KiB pages */
    BLK_ANON_SHARED,   /* MAP_SHARED|MAP_ANONYMOUS (shmem), 4 KiB pages */
    BLK_MEMFD_SHARED,  /* memfd_create + MAP_SHARED, 4 KiB pages */
    BLK_HUGE_ANON,     /* MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB, 2 MiB pages */
    BLK_HUGE_MEMFD,    /* memfd_create(MFD_HUGETLB) + MAP_SHARED, 2 MiB pages */
} pcr_block_kind;

#define VMM_MAX_BLOCKS 8
#define VMM_MAX_REQS 4096

typedef struct vmm_block {
    char name[64];
    pcr_block_kind kind;
    uint8_t *host;
    uint64_t ram_offset; /* offset in the guest RAM address space */
    uint64_t length;     /* as described to the library (tests may corrupt it) */
    uint64_t page_size;  /* as described to the library (tests may corrupt it) */
    uint64_t map_length; /* what was mapped */
    uint64_t real_page_size;
    int fd;              /* memfd, or -1 */
    bool shared;
    uint8_t *zero_pages; /* per page: serve it as a zero page */
} vmm_block;

typedef struct vmm_request {
    int block;       /* index in vmm.blocks, -1 if unknown */
    bool named;      /* block_name was not NULL */
    uint64_t offset;
    uint64_t length;
} vmm_request;

typedef enum vmm_serve {
    SERVE_DIRECT, /* place from the request callback, on the fault thread */
    SERVE_THREAD, /* queue to a server thread that assembles pages in pcr_get_tmp_page */
    SERVE_NONE,   /* record only; the test places pages itself */
} vmm_serve;

typedef struct vmm {
    vmm_block blocks[VMM_MAX_BLOCKS];
    int nblocks;
    uint64_t next_ram_offset;
    struct PcrIncoming *mis;
    PcrIncomingOps ops;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    vmm_serve serve;
    vmm_request reqs[VMM_MAX_REQS];
    size_t nreqs;
    int calls_in_flight;  /* request_page calls running (vmm_stats waits for none) */
    size_t queue_head;    /* next request the server thread serves */
    int last_named;       /* block of the last successful named request */
    int fail_requests;    /* fail this many coming requests with -EIO */
    int failed_requests;
    int anomalies;
    char anomaly[512];
    uint8_t *direct_buf;  /* SERVE_DIRECT page buffer (fault thread only) */
    size_t direct_buf_len;
    /* placements made by the harness */
    uint64_t placed, zero_placed, eexist;
    void *tmp_page;       /* what pcr_get_tmp_page returned to the server */
    pthread_t server;
    bool server_running, server_quit;
    int foreach_rc;       /* returned by foreach_ram_block after visiting (0 normally) */
    bool foreach_null_name; /* describe block 0 with a NULL name */
    /* callbacks seen */
    int nstates;                 /* state_changed calls */
    PcrState states[64][2]; /* the first 64 of them: old, new */
    PcrState last_state[2]; /* the last one */
    int shut_calls;
    bool shut_failed;
    int balloon_calls;
    bool balloon_inhibited;
    int discard_cb_calls;
    uint64_t discard_cb_bytes;
    pthread_t fault_thread_seen; /* thread that ran request_page */
    bool fault_thread_known;
} vmm;

const char *pcr_kind_name(pcr_block_kind k);

/* ---- deterministic page content ---- */
uint64_t pcr_mix(uint64_t x);
/* The content of the 8 bytes at byte offset `off` (a multiple of 8) of block `b`. */
uint64_t pcr_word(int b, uint64_t off);
/* Fills `dst` with page `page_off` of block `b`. */
void pcr_fill_page(int b, uint64_t page_off, uint8_t *dst, uint64_t page_size);

/* ---- building the VMM ---- */
/* Zeroes `v` and sets its callbacks (foreach_ram_block, request_page, state_changed, shut,
 * balloon_inhibit), serving requests as `serve` says. */
void vmm_init(vmm *v, vmm_serve serve);
/* Maps a block of `pages` pages of `kind` (skips the test when huge pages are missing). */
vmm_block *vmm_add_block(vmm *v, const char *name, pcr_block_kind kind, uint64_t pages);
/* Creates the library's destination for `v` (call after adding the blocks). */
void vmm_create(vmm *v);
/* Frees the destination (cleaning up), unmaps the blocks, stops the server thread. */
void vmm_destroy(vmm *v);
int vmm_block_index(const vmm *v, const char *name);

/* ---- the callbacks (for tests that build their own PcrIncomingOps) ---- */
int vmm_foreach_cb(void *opaque, PcrRamBlockVisitor visit, void *ctx);
int vmm_request_cb(void *opaque, void *block_opaque, const char *block_name, uint64_t offset,
                   uint64_t length);
void vmm_state_cb(void *opaque, PcrState old_state, PcrState new_state);
void vmm_shut_cb(void *opaque, bool failed);
void vmm_balloon_cb(void *opaque, bool inhibit);
/* A discard_range callback that does what the library's default does for the block kinds
 * used here, and counts. */
int vmm_discard_cb(void *opaque, const PcrRamBlock *block, uint64_t start, uint64_t length);

/* ---- serving and checking ---- */
/* Records a callback anomaly (a request the library should not have made...). */
__attribute__((format(printf, 2, 3))) void vmm_anomaly(vmm *v, const char *fmt, ...);
/* Places page `off` of block `bi` with its content (or as a zero page if so marked), from
 * `buf`. Returns what the library returned. */
int vmm_place(vmm *v, int bi, uint64_t off, uint8_t *buf);
/* Starts / stops the SERVE_THREAD server thread. */
void vmm_start_server(vmm *v);
void vmm_stop_server(vmm *v);
/* Waits until at least `n` requests were recorded (or `timeout_ms` passed). */
bool vmm_wait_requests(vmm *v, size_t n, unsigned timeout_ms);
size_t vmm_nreqs(vmm *v);
void vmm_check_no_anomaly(vmm *v);
/* The counters now, and once no request_page call is running (its placement counted). */
PcrStats vmm_stats_now(vmm *v);
PcrStats vmm_stats(vmm *v);
/* Every fault message is exactly one of: a request made, a request that failed, a
 * duplicate, a late fault, a fault outside the blocks, a fault recorded pending while
 * requests were paused. */
void vmm_check_stats_invariant(const PcrStats *s);
/* Checks that page `off` of block `bi` (present) holds its content, or zeros if it was
 * served as a zero page. */
void vmm_check_page(vmm *v, int bi, uint64_t off);

#endif /* PCR_HARNESS_FAKE_VMM_H */
