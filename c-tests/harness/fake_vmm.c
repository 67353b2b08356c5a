/* The tests' fake VMM (fake_vmm.h). */
#include "fake_vmm.h"
#include "pcr_log.h"
#include "pcr_touch.h"

#ifdef PCR_TEST_NO_DIRECT_LINK
pcr_api API;
#endif

const char *pcr_kind_name(pcr_block_kind k)
{
    switch (k) {
    case BLK_ANON_PRIVATE: return "private anonymous";
    case BLK_ANON_SHARED: return "shared anonymous";
    case BLK_MEMFD_SHARED: return "shared memfd";
    case BLK_HUGE_ANON: return "MAP_HUGETLB anonymous";
    case BLK_HUGE_MEMFD: return "hugetlb memfd";
    }
    return "?";
}

uint64_t pcr_mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* The content of the 8 bytes at byte offset `off` (a multiple of 8) of block `b`. */
uint64_t pcr_word(int b, uint64_t off)
{
    return pcr_mix(((uint64_t)(b + 1) << 56) ^ off ^ 0x5eed5eed5eedULL) | 1; /* never 0 */
}

void pcr_fill_page(int b, uint64_t page_off, uint8_t *dst, uint64_t page_size)
{
    uint64_t *w = (uint64_t *)(void *)dst;
    for (uint64_t i = 0; i < page_size / 8; i++)
        w[i] = pcr_word(b, page_off + i * 8);
}

vmm_block *vmm_add_block(vmm *v, const char *name, pcr_block_kind kind,
                                       uint64_t pages)
{
    CHECK(v->nblocks < VMM_MAX_BLOCKS);
    vmm_block *b = &v->blocks[v->nblocks];
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "%s", name);
    b->kind = kind;
    b->fd = -1;
    b->real_page_size = (kind == BLK_HUGE_ANON || kind == BLK_HUGE_MEMFD) ? PCR_HUGE_PAGE_SIZE
                                                                         : (uint64_t)getpagesize();
    b->page_size = b->real_page_size;
    b->length = b->map_length = pages * b->real_page_size;
    int prot = PROT_READ | PROT_WRITE;
    void *p = MAP_FAILED;
    switch (kind) {
    case BLK_ANON_PRIVATE:
        p = mmap(NULL, b->map_length, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        break;
    case BLK_ANON_SHARED:
        b->shared = true;
        p = mmap(NULL, b->map_length, prot, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        break;
    case BLK_MEMFD_SHARED:
    case BLK_HUGE_MEMFD: {
        unsigned flags = MFD_CLOEXEC | (kind == BLK_HUGE_MEMFD ? MFD_HUGETLB | MFD_HUGE_2MB : 0);
        b->fd = (int)syscall(SYS_memfd_create, name, flags);
        if (b->fd < 0) {
            if (kind == BLK_HUGE_MEMFD)
                pcr_skip("memfd_create(MFD_HUGETLB): %s", strerror(errno));
            pcr_fail("memfd_create(%s): %s", name, strerror(errno));
        }
        if (ftruncate(b->fd, (off_t)b->map_length) != 0)
            pcr_fail("ftruncate(memfd %s, %" PRIu64 "): %s", name, b->map_length, strerror(errno));
        b->shared = true;
        p = mmap(NULL, b->map_length, prot, MAP_SHARED, b->fd, 0);
        break;
    }
    case BLK_HUGE_ANON:
        p = mmap(NULL, b->map_length, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB,
                 -1, 0);
        if (p == MAP_FAILED)
            pcr_skip("mmap(MAP_HUGETLB, %" PRIu64 " bytes): %s", b->map_length, strerror(errno));
        break;
    }
    if (p == MAP_FAILED) {
        if (kind == BLK_HUGE_MEMFD)
            pcr_skip("mmap of a hugetlb memfd (%" PRIu64 " bytes): %s", b->map_length,
                     strerror(errno));
        pcr_fail("mmap of block %s (%s): %s", name, pcr_kind_name(kind), strerror(errno));
    }
    b->host = p;
    CHECK((uintptr_t)b->host % b->real_page_size == 0);
    b->ram_offset = v->next_ram_offset;
    v->next_ram_offset += b->map_length;
    b->zero_pages = calloc(pages, 1);
    CHECK(b->zero_pages != NULL);
    v->nblocks++;
    return b;
}

int vmm_block_index(const vmm *v, const char *name)
{
    for (int i = 0; i < v->nblocks; i++)
        if (strcmp(v->blocks[i].name, name) == 0)
            return i;
    return -1;
}

void vmm_anomaly(vmm *v, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: ANOMALY: %s\n", pcr_test_name, buf);
    /* caller holds v->lock or is single-threaded */
    v->anomalies++;
    snprintf(v->anomaly, sizeof v->anomaly, "%s", buf);
}

/* Places page `off` of block `b` with its content (or as a zero page if so marked), from
 * `buf`. Returns what the library returned. */
int vmm_place(vmm *v, int bi, uint64_t off, uint8_t *buf)
{
    vmm_block *b = &v->blocks[bi];
    uint64_t page = off / b->real_page_size;
    int rc;
    if (b->zero_pages[page]) {
        rc = PCR(pcr_place_page_zero)(v->mis, b->host + off, b->real_page_size);
    } else {
        pcr_fill_page(bi, off, buf, b->real_page_size);
        rc = PCR(pcr_place_page)(v->mis, b->host + off, buf, b->real_page_size);
    }
    pthread_mutex_lock(&v->lock);
    if (rc == 0 && b->zero_pages[page])
        v->zero_placed++;
    else if (rc == 0)
        v->placed++;
    else if (rc == -EEXIST)
        v->eexist++;
    else
        vmm_anomaly(v, "placing %s+%#" PRIx64 " returned %d (%s)", b->name, off, rc, strerror(-rc));
    pthread_mutex_unlock(&v->lock);
    return rc;
}

int vmm_foreach_cb(void *opaque, PcrRamBlockVisitor visit, void *ctx)
{
    vmm *v = opaque;
    for (int i = 0; i < v->nblocks; i++) {
        vmm_block *b = &v->blocks[i];
        PcrRamBlock d = {
            .name = (i == 0 && v->foreach_null_name) ? NULL : b->name,
            .host = b->host,
            .offset = b->ram_offset,
            .length = b->length,
            .page_size = b->page_size,
            .fd = b->fd,
            .fd_offset = 0,
            .shared = b->shared,
            .opaque = b, /* handed back to request_page as block_opaque */
        };
        int rc = visit(&d, ctx);
        if (rc != 0)
            return rc;
    }
    return v->foreach_rc;
}

static int vmm_request_serve(vmm *v, void *block_opaque, const char *block_name, uint64_t offset,
                             uint64_t length);

/* Counts the calls in flight around the request itself, so that vmm_stats can wait until
 * none is (the library counts a request when it calls request_page; a placement made by
 * the callback is counted when it returns). */
int vmm_request_cb(void *opaque, void *block_opaque, const char *block_name, uint64_t offset,
                   uint64_t length)
{
    vmm *v = opaque;
    __atomic_add_fetch(&v->calls_in_flight, 1, __ATOMIC_SEQ_CST);
    int rc = vmm_request_serve(v, block_opaque, block_name, offset, length);
    __atomic_sub_fetch(&v->calls_in_flight, 1, __ATOMIC_SEQ_CST);
    return rc;
}

static int vmm_request_serve(vmm *v, void *block_opaque, const char *block_name, uint64_t offset,
                             uint64_t length)
{
    pthread_mutex_lock(&v->lock);
    if (!v->fault_thread_known) {
        v->fault_thread_seen = pthread_self();
        v->fault_thread_known = true;
    } else if (!pthread_equal(v->fault_thread_seen, pthread_self())) {
        vmm_anomaly(v, "request_page called from two different threads");
    }
    int bi;
    if (block_name) {
        bi = vmm_block_index(v, block_name);
        if (bi < 0)
            vmm_anomaly(v, "request for unknown block \"%s\"", block_name);
    } else {
        bi = v->last_named;
        if (bi < 0)
            vmm_anomaly(v, "request without block name before any named request");
    }
    if (bi >= 0 && block_opaque != &v->blocks[bi])
        vmm_anomaly(v, "request for block %d came with another block's opaque %p", bi, block_opaque);
    if (bi >= 0) {
        vmm_block *b = &v->blocks[bi];
        if (offset % b->real_page_size != 0)
            vmm_anomaly(v, "request %s+%#" PRIx64 ": offset not aligned to %#" PRIx64, b->name,
                        offset, b->real_page_size);
        if (length != b->real_page_size)
            vmm_anomaly(v, "request %s+%#" PRIx64 ": length %#" PRIx64 " != page size %#" PRIx64,
                        b->name, offset, length, b->real_page_size);
        if (offset + length > b->map_length)
            vmm_anomaly(v, "request %s+%#" PRIx64 " past the block end", b->name, offset);
    }
    if (v->nreqs >= VMM_MAX_REQS) {
        vmm_anomaly(v, "too many requests");
        pthread_mutex_unlock(&v->lock);
        return -ENOSPC;
    }
    v->reqs[v->nreqs++] = (vmm_request){bi, block_name != NULL, offset, length};
    if (v->fail_requests > 0) {
        v->fail_requests--;
        v->failed_requests++;
        pthread_cond_broadcast(&v->cond);
        pthread_mutex_unlock(&v->lock);
        return -EIO;
    }
    if (bi >= 0)
        v->last_named = bi;
    vmm_serve serve = v->serve;
    pthread_cond_broadcast(&v->cond);
    pthread_mutex_unlock(&v->lock);
    if (serve == SERVE_DIRECT && bi >= 0 && length == v->blocks[bi].real_page_size &&
        offset % length == 0 && offset + length <= v->blocks[bi].map_length)
        vmm_place(v, bi, offset, v->direct_buf);
    return 0;
}

void vmm_state_cb(void *opaque, PcrState old_state, PcrState new_state)
{
    vmm *v = opaque;
    pthread_mutex_lock(&v->lock);
    if (v->nstates < 64) {
        v->states[v->nstates][0] = old_state;
        v->states[v->nstates][1] = new_state;
    }
    v->nstates++;
    v->last_state[0] = old_state;
    v->last_state[1] = new_state;
    pthread_mutex_unlock(&v->lock);
}

void vmm_shut_cb(void *opaque, bool failed)
{
    vmm *v = opaque;
    pthread_mutex_lock(&v->lock);
    v->shut_calls++;
    v->shut_failed = failed;
    pthread_mutex_unlock(&v->lock);
}

void vmm_balloon_cb(void *opaque, bool inhibit)
{
    vmm *v = opaque;
    pthread_mutex_lock(&v->lock);
    v->balloon_calls++;
    v->balloon_inhibited = inhibit;
    pthread_mutex_unlock(&v->lock);
}

/* A discard_range callback that does what the library's default does for the block kinds
 * used here, and counts. */
int vmm_discard_cb(void *opaque, const PcrRamBlock *block, uint64_t start,
                   uint64_t length)
{
    vmm *v = opaque;
    pthread_mutex_lock(&v->lock);
    v->discard_cb_calls++;
    v->discard_cb_bytes += length;
    pthread_mutex_unlock(&v->lock);
    uint8_t *addr = (uint8_t *)block->host + start;
    if (block->fd >= 0) {
        if (fallocate(block->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      (off_t)(block->fd_offset + start), (off_t)length) != 0)
            return -errno;
        return 0;
    }
    if (madvise(addr, length, block->shared ? MADV_REMOVE : MADV_DONTNEED) != 0)
        return -errno;
    return 0;
}

void vmm_init(vmm *v, vmm_serve serve)
{
    memset(v, 0, sizeof *v);
    pthread_mutex_init(&v->lock, NULL);
    pthread_cond_init(&v->cond, NULL);
    v->serve = serve;
    v->last_named = -1;
    v->ops.foreach_ram_block = vmm_foreach_cb;
    v->ops.request_page = vmm_request_cb;
    v->ops.state_changed = vmm_state_cb;
    v->ops.shut = vmm_shut_cb;
    v->ops.balloon_inhibit = vmm_balloon_cb;
    v->ops.target_page_size = 4096;
}

/* Creates the library's destination for `v` (call after adding the blocks). */
void vmm_create(vmm *v)
{
    size_t largest = 4096;
    for (int i = 0; i < v->nblocks; i++)
        if (v->blocks[i].real_page_size > largest)
            largest = v->blocks[i].real_page_size;
    v->direct_buf_len = largest;
    v->direct_buf = aligned_alloc(4096, largest);
    CHECK(v->direct_buf != NULL);
    v->mis = PCR(pcr_incoming_new)(&v->ops, v);
    CHECK(v->mis != NULL);
}

static void *vmm_server_main(void *arg)
{
    vmm *v = arg;
    pthread_mutex_lock(&v->lock);
    for (;;) {
        while (!v->server_quit && v->queue_head == v->nreqs)
            pthread_cond_wait(&v->cond, &v->lock);
        if (v->queue_head == v->nreqs && v->server_quit)
            break;
        vmm_request r = v->reqs[v->queue_head++];
        pthread_mutex_unlock(&v->lock);
        if (r.block >= 0 && r.offset % v->blocks[r.block].real_page_size == 0 &&
            r.offset + r.length <= v->blocks[r.block].map_length) {
            void *tmp = PCR(pcr_get_tmp_page)(v->mis);
            pthread_mutex_lock(&v->lock);
            if (tmp == NULL)
                vmm_anomaly(v, "pcr_get_tmp_page returned NULL");
            else if (v->tmp_page != NULL && v->tmp_page != tmp)
                vmm_anomaly(v, "pcr_get_tmp_page moved from %p to %p", v->tmp_page, tmp);
            v->tmp_page = tmp;
            pthread_mutex_unlock(&v->lock);
            if (tmp)
                vmm_place(v, r.block, r.offset, tmp);
        }
        pthread_mutex_lock(&v->lock);
    }
    pthread_mutex_unlock(&v->lock);
    return NULL;
}

void vmm_start_server(vmm *v)
{
    pthread_mutex_lock(&v->lock);
    v->server_quit = false;
    v->queue_head = v->nreqs; /* serve requests from now on */
    pthread_mutex_unlock(&v->lock);
    CHECK(pthread_create(&v->server, NULL, vmm_server_main, v) == 0);
    v->server_running = true;
}

void vmm_stop_server(vmm *v)
{
    if (!v->server_running)
        return;
    pthread_mutex_lock(&v->lock);
    v->server_quit = true;
    pthread_cond_broadcast(&v->cond);
    pthread_mutex_unlock(&v->lock);
    pthread_join(v->server, NULL);
    v->server_running = false;
}

/* Waits until at least `n` requests were recorded (or `timeout_ms` passed). */
bool vmm_wait_requests(vmm *v, size_t n, unsigned timeout_ms)
{
    double end = pcr_now() + timeout_ms / 1000.0 * (pcr_under_valgrind() ? 10 : 1);
    pthread_mutex_lock(&v->lock);
    while (v->nreqs < n && pcr_now() < end) {
        pthread_mutex_unlock(&v->lock);
        pcr_sleep_ms(1);
        pthread_mutex_lock(&v->lock);
    }
    bool ok = v->nreqs >= n;
    pthread_mutex_unlock(&v->lock);
    return ok;
}

size_t vmm_nreqs(vmm *v)
{
    pthread_mutex_lock(&v->lock);
    size_t n = v->nreqs;
    pthread_mutex_unlock(&v->lock);
    return n;
}

void vmm_check_no_anomaly(vmm *v)
{
    pthread_mutex_lock(&v->lock);
    int n = v->anomalies;
    char last[512];
    snprintf(last, sizeof last, "%s", v->anomaly);
    pthread_mutex_unlock(&v->lock);
    if (n)
        pcr_fail("%d anomal%s in callbacks, last: %s", n, n == 1 ? "y" : "ies", last);
}

PcrStats vmm_stats_now(vmm *v)
{
    PcrStats s;
    memset(&s, 0xff, sizeof s);
    CHECK_EQ(PCR(pcr_incoming_get_stats)(v->mis, &s), 0);
    return s;
}

/* The counters once no request_page call is running. A callback that places the page
 * itself wakes the faulting thread before the placement is counted, so a test that reads
 * the counters right after its touch returned may otherwise see the request without its
 * placement. Waits (a hang guard of 2 s, 20 s under valgrind) until no call is in
 * flight. */
PcrStats vmm_stats(vmm *v)
{
    double end = pcr_now() + (pcr_under_valgrind() ? 20.0 : 2.0);
    while (__atomic_load_n(&v->calls_in_flight, __ATOMIC_SEQ_CST) != 0 && pcr_now() < end)
        pcr_sleep_ms(1);
    return vmm_stats_now(v);
}

/* Every fault message is exactly one of: a request made, a request that failed, a duplicate,
 * a late fault, a fault outside the blocks, a fault recorded pending while paused. */
void vmm_check_stats_invariant(const PcrStats *s)
{
    CHECK_EQ_U64(s->faults, s->requests + s->request_errors + s->duplicate_faults +
                                s->late_faults + s->faults_outside + s->paused_faults);
}

void vmm_destroy(vmm *v)
{
    vmm_stop_server(v);
    if (v->mis)
        PCR(pcr_incoming_free)(v->mis);
    v->mis = NULL;
    for (int i = 0; i < v->nblocks; i++) {
        vmm_block *b = &v->blocks[i];
        if (b->host)
            munmap(b->host, b->map_length);
        if (b->fd >= 0)
            close(b->fd);
        free(b->zero_pages);
        b->host = NULL;
        b->fd = -1;
        b->zero_pages = NULL;
    }
    v->nblocks = 0;
    free(v->direct_buf);
    v->direct_buf = NULL;
    pthread_cond_destroy(&v->cond);
    pthread_mutex_destroy(&v->lock);
}

/* Checks that page `off` of block `bi` (present) holds its content, or zeros if it was
 * served as a zero page. */
void vmm_check_page(vmm *v, int bi, uint64_t off)
{
    vmm_block *b = &v->blocks[bi];
    const uint64_t *w = (const uint64_t *)(const void *)(b->host + off);
    bool zero = b->zero_pages[off / b->real_page_size];
    for (uint64_t i = 0; i < b->real_page_size / 8; i++) {
        uint64_t want = zero ? 0 : pcr_word(bi, off + i * 8);
        if (w[i] != want)
            pcr_fail("block %s page +%#" PRIx64 " word %" PRIu64 ": %#" PRIx64 ", expected %#" PRIx64
                     " (%s page)",
                     b->name, off, i, w[i], want, zero ? "zero" : "data");
    }
}

