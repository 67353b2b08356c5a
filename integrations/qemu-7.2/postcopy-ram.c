/*
 * QEMU 7.2 migration/postcopy-ram.c over libpostcopy_ram.
 *
 * Drop-in replacement for QEMU 7.2's migration/postcopy-ram.c: with
 * postcopy-ram-plumbing.c, every function declared in migration/postcopy-ram.h (and the
 * non-static helpers other files call) is implemented. userfaultfd, the fault thread,
 * page placement, discard sending, the requests pending across a recovery and blocktime
 * go through libpostcopy_ram (its pcr_ API, <postcopy_ram.h>); neither file makes a
 * userfaultfd ioctl. Here: the library handles and their callbacks, the host check,
 * init/discard/listen/cleanup, the per-channel temporary pages, the resume thread,
 * placement with QEMU's bookkeeping (receivedmap), the QAPI blocktime fill, and the
 * source's discards. postcopy-ram-plumbing.c keeps the QEMU plumbing that needs no
 * library (notifiers, threads, state, preempt channel, vhost-user registration).
 *
 * vhost-user shared-memory postcopy is refused at ADVISE (postcopy_ram_incoming_init,
 * right after the INBOUND_ADVISE notifiers where vhost-user registers its userfaultfd):
 * the source still runs the guest then, and the migration fails cleanly. The library
 * serves only its own userfaultfd.
 *
 * PCR_QEMU_CHECK (defined only by scripts/qemu-check.sh's build, never by meson.patch):
 * test instrumentation, the PCR_QEMU_STATS counter file and the PCR_QEMU_FAKE_SHARED_UFD
 * registration (see below). The shipped shim has neither.
 *
 * Copyright the postcopy-ram authors. The plumbing keeps the behaviour of QEMU 7.2's
 * migration/postcopy-ram.c (Copyright 2013-2015 Red Hat, Inc., Dave Gilbert).
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/rcu.h"
#include "qemu/madvise.h"
#include "exec/target_page.h"
#include "migration.h"
#include "qemu-file.h"
#include "savevm.h"
#include "postcopy-ram.h"
#include "ram.h"
#include "qapi/error.h"
#include "sysemu/sysemu.h"
#include "qemu/error-report.h"
#include "trace.h"
#include "hw/boards.h"
#include "hw/core/cpu.h"
#include "exec/ramblock.h"

#include <postcopy_ram.h>

/* ---- the library handles ------------------------------------------------------------ */

/* The destination handle: created at the first host check, never freed (QEMU's
 * MigrationIncomingState lives as long as the process, and blocktime is read after
 * cleanup). */
static PcrIncoming *pcr_h;
/* The source handle, for discard sending. */
static PcrSource *pcr_src;
static PcrDiscardState *pcr_pds;
/* pcr_incoming_init succeeded and pcr_incoming_cleanup has not run yet. */
static bool pcr_inited;
static bool pcr_blocktime_wanted;
/* Serialises page requests (the fault thread and the resume re-send): QEMU's last_rb
 * decides REQ_PAGES vs REQ_PAGES_ID and has no lock of its own. */
static QemuMutex pcr_req_lock;
/* The return path is gone (postcopy paused): requests fail until the resume. */
static bool pcr_paused;
static QemuThread pcr_resume_thread;
static bool pcr_resume_thread_created;
static bool pcr_resume_quit;

static void pcr_log(void *opaque, int level, const char *message)
{
    if (level <= 1) {
        error_report("postcopy-ram: %s", message);
    } else {
        warn_report("postcopy-ram: %s", message);
    }
}

/* The length the library sees: postcopy_length once ADVISE set it, used_length before
 * (the capability check runs before ADVISE, when postcopy_length is still 0). */
static uint64_t pcr_block_length(RAMBlock *rb)
{
    return rb->postcopy_length ? rb->postcopy_length : qemu_ram_get_used_length(rb);
}

typedef struct {
    PcrRamBlockVisitor visit;
    void *ctx;
    int ret;
} PcrForeach;

static int pcr_visit_block(RAMBlock *rb, void *opaque)
{
    PcrForeach *f = opaque;
    PcrRamBlock b = {
        .name = qemu_ram_get_idstr(rb),
        .host = qemu_ram_get_host_addr(rb),
        .offset = qemu_ram_get_offset(rb),
        .length = pcr_block_length(rb),
        .page_size = qemu_ram_pagesize(rb),
        .fd = rb->fd,
        .fd_offset = 0,
        .shared = qemu_ram_is_shared(rb),
        .opaque = rb,
    };

    f->ret = f->visit(&b, f->ctx);
    return f->ret ? 1 : 0;
}

/* ops.foreach_ram_block: the not-ignored blocks (called on QEMU threads only). */
static int pcr_foreach_block(void *opaque, PcrRamBlockVisitor visit, void *ctx)
{
    PcrForeach f = { .visit = visit, .ctx = ctx, .ret = 0 };

    if (foreach_not_ignored_block(pcr_visit_block, &f)) {
        return f.ret ? f.ret : -EINVAL;
    }
    return 0;
}

/* ops.discard_range: ram_discard_range keeps receivedmap right. */
static int pcr_discard_block_range(void *opaque, const PcrRamBlock *block,
                                   uint64_t start, uint64_t length)
{
    RAMBlock *rb = block->opaque;

    return ram_discard_range(qemu_ram_get_idstr(rb), start, length);
}

/* The library's fault thread runs QEMU code (the request path): make it an RCU reader. */
static void pcr_fault_thread_started(void *opaque)
{
    rcu_register_thread();
}

static void pcr_fault_thread_stopping(void *opaque)
{
    rcu_unregister_thread();
}

/*
 * ops.request_page, 7.2's postcopy_request_page: on the library's fault thread, or on the
 * resume thread (pcr_incoming_resend_pending). A non-zero return leaves the page pending
 * in the library, which stops requesting until the resume.
 */
static int pcr_request_page(void *opaque, void *block_opaque, const char *block_name,
                            uint64_t offset, uint64_t length)
{
    MigrationIncomingState *mis = opaque;
    RAMBlock *rb = block_opaque;
    void *host = qemu_ram_get_host_addr(rb) + offset;
    int ret;

    QEMU_LOCK_GUARD(&pcr_req_lock);
    if (qatomic_read(&pcr_paused)) {
        return -EAGAIN;
    }
    trace_postcopy_ram_fault_thread_request((uintptr_t)host, qemu_ram_get_idstr(rb),
                                            offset, 0);
    /* Pages discarded through a RamDiscardManager are never migrated: zero on access. */
    if (ramblock_page_is_discarded(rb, offset)) {
        if (ramblock_recv_bitmap_test_byte_offset(rb, offset)) {
            return 0;
        }
        return postcopy_place_page_zero(mis, host, rb);
    }
    if (ramblock_recv_bitmap_test_byte_offset(rb, offset)) {
        return 0; /* arrived meanwhile */
    }
    /* Not migrate_send_rp_req_pages: its page_requested tree would duplicate the
     * library's pending set, which the resume re-sends (pcr_resume_thread_fn). The
     * tree stays empty, so QEMU's own re-send at POSTCOPY_RESUME sends nothing. */
    ret = migrate_send_rp_message_req_pages(mis, rb, offset);
    return ret < 0 ? ret : (ret ? -EIO : 0);
}

static void pcr_check_instrument(void);

static bool pcr_handle(MigrationIncomingState *mis)
{
    static const PcrIncomingOps ops = {
        .foreach_ram_block = pcr_foreach_block,
        .request_page = pcr_request_page,
        .discard_range = pcr_discard_block_range,
        .fault_thread_started = pcr_fault_thread_started,
        .fault_thread_stopping = pcr_fault_thread_stopping,
        /* 7.2 sends SHUT itself, after COMPLETED (migration_incoming_state_destroy). */
        .never_send_shut = true,
        /* Accounting always on: the capability may be set after this handle exists;
         * reported only when it is on (fill_destination_postcopy_migration_info). */
        .blocktime = true,
        .enable_mlock = false, /* QEMU's own mlock policy, below */
    };
    PcrIncomingOps o = ops;

    if (pcr_h) {
        return true;
    }
    pcr_set_log_callback(pcr_log, NULL, 2);
    qemu_mutex_init(&pcr_req_lock);
    o.target_page_size = qemu_target_page_size();
    pcr_h = pcr_incoming_new(&o, mis);
    if (!pcr_h) {
        error_report("postcopy-ram: pcr_incoming_new failed");
        return false;
    }
    pcr_check_instrument();
    return true;
}

/* ---- destination: host check, init, discard, listen, cleanup ------------------------ */

/* Note: munlocks all of RAM, as 7.2 does; cleanup locks it again with -mlock. */
bool postcopy_ram_supported_by_host(MigrationIncomingState *mis)
{
    Error *local_err = NULL;

    if (qemu_target_page_size() > qemu_real_host_page_size()) {
        error_report("Target page size bigger than host page size");
        return false;
    }
    /* Give devices a chance to object */
    if (postcopy_notify(POSTCOPY_NOTIFY_PROBE, &local_err)) {
        error_report_err(local_err);
        return false;
    }
    if (!pcr_handle(mis)) {
        return false;
    }
    /* Logs the missing piece (userfaultfd, features, block page multiples...). */
    if (!pcr_incoming_supported_by_host(pcr_h)) {
        error_report("%s: postcopy is not supported on this host (see above)", __func__);
        return false;
    }
    /* userfault and mlock don't go together; cleanup puts it back with -mlock. */
    if (munlockall()) {
        error_report("%s: munlockall: %s", __func__, strerror(errno));
        return false;
    }
    pcr_blocktime_wanted = migrate_postcopy_blocktime();
    return true;
}

static int pcr_set_postcopy_length(RAMBlock *rb, void *opaque)
{
    rb->postcopy_length = qemu_ram_get_used_length(rb);
    trace_postcopy_init_range(qemu_ram_get_idstr(rb), qemu_ram_get_host_addr(rb),
                              qemu_ram_get_offset(rb), rb->postcopy_length);
    return 0;
}

/* At ADVISE, before precopy: every page of every block discarded (the library calls
 * ram_discard_range through ops.discard_range). */
int postcopy_ram_incoming_init(MigrationIncomingState *mis)
{
    int ret;

    /* Refused here, at ADVISE: the source still runs the guest and fails cleanly. */
    if (mis->postcopy_remote_fds->len) {
        error_report("%s: vhost-user shared-memory postcopy is not supported by this "
                     "build (libpostcopy_ram serves only its own userfaultfd)", __func__);
        return -1;
    }
    foreach_not_ignored_block(pcr_set_postcopy_length, NULL);
    if (!pcr_handle(mis)) {
        return -1;
    }
    ret = pcr_incoming_init(pcr_h, 0);
    if (ret) {
        error_report("%s: %s", __func__, strerror(-ret));
        return -1;
    }
    pcr_inited = true;
    return 0;
}

/* THP off before the discards; QEMU's state becomes DISCARD, unconditionally, as in 7.2. */
int postcopy_ram_prepare_discard(MigrationIncomingState *mis)
{
    int ret = pcr_inited ? pcr_incoming_prepare_discard(pcr_h) : -EINVAL;

    if (ret) {
        error_report("%s: %s", __func__, strerror(-ret));
        return -1;
    }
    postcopy_state_set(POSTCOPY_INCOMING_DISCARD);
    return 0;
}

static void postcopy_temp_pages_cleanup(MigrationIncomingState *mis)
{
    unsigned int i;

    if (mis->postcopy_tmp_pages) {
        for (i = 0; i < mis->postcopy_channels; i++) {
            if (mis->postcopy_tmp_pages[i].tmp_huge_page) {
                munmap(mis->postcopy_tmp_pages[i].tmp_huge_page, mis->largest_page_size);
                mis->postcopy_tmp_pages[i].tmp_huge_page = NULL;
            }
        }
        g_free(mis->postcopy_tmp_pages);
        mis->postcopy_tmp_pages = NULL;
    }
}

/* One temporary host page per channel (the listen thread's and "fault-fast"'s). */
static int postcopy_temp_pages_setup(MigrationIncomingState *mis)
{
    unsigned int i;

    mis->postcopy_channels = migrate_postcopy_preempt() ? RAM_CHANNEL_MAX : 1;
    mis->postcopy_tmp_pages = g_malloc0_n(sizeof(PostcopyTmpPage), mis->postcopy_channels);
    for (i = 0; i < mis->postcopy_channels; i++) {
        void *p = mmap(NULL, mis->largest_page_size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            int err = errno;
            error_report("%s: Failed to map postcopy_tmp_pages[%u]: %s", __func__, i,
                         strerror(err));
            return -err;
        }
        mis->postcopy_tmp_pages[i].tmp_huge_page = p;
        postcopy_temp_page_reset(&mis->postcopy_tmp_pages[i]);
    }
    return 0;
}

#ifdef PCR_QEMU_CHECK
/* Test instrumentation, only in scripts/qemu-check.sh's build (PCR_QEMU_CHECK).
 * PCR_QEMU_STATS=file: the library's counters at the pause, around the re-send of a
 * resume, and at cleanup, one line each (the check's capped recovery). The counters are
 * read first and written later, so that the file I/O does not delay a re-send. */
static bool pcr_read_stats(PcrStats *s)
{
    return getenv("PCR_QEMU_STATS") && pcr_h && !pcr_incoming_get_stats(pcr_h, s);
}

static void pcr_write_stats(const char *when, const PcrStats *s, long resend_returned)
{
    FILE *f = fopen(getenv("PCR_QEMU_STATS"), "a");

    if (!f) {
        return;
    }
    fprintf(f, "%s faults=%" PRIu64 " requests=%" PRIu64 " request_errors=%" PRIu64
            " pending_pages=%" PRIu64 " paused_faults=%" PRIu64 " resent=%" PRIu64
            " resend_returned=%ld"
            " pages_placed=%" PRIu64 " zero_pages_placed=%" PRIu64
            " already_present=%" PRIu64 "\n",
            when, s->faults, s->requests, s->request_errors, s->pending_pages,
            s->paused_faults, s->resent,
            resend_returned, s->pages_placed, s->zero_pages_placed, s->already_present);
    fclose(f);
}

static void pcr_log_stats(const char *when)
{
    PcrStats s;

    if (pcr_read_stats(&s)) {
        pcr_write_stats(when, &s, -1);
    }
}

/* PCR_QEMU_FAKE_SHARED_UFD=1: at INBOUND_ADVISE, register a shared userfaultfd as
 * vhost-user's advise does (hw/virtio/vhost-user.c, vhost_user_postcopy_advise), so that
 * the check can see the refusal without a vhost-user backend. */
static int pcr_fake_waker(struct PostCopyFD *pcfd, RAMBlock *rb, uint64_t offset)
{
    return 0;
}

static struct PostCopyFD pcr_fake_pcfd = {
    .fd = -1,
    .waker = pcr_fake_waker,
    .idstr = "pcr-check-fake-vhost-user",
};

static int pcr_fake_notify(NotifierWithReturn *n, void *data)
{
    struct PostcopyNotifyData *pnd = data;

    if (pnd->reason == POSTCOPY_NOTIFY_INBOUND_ADVISE) {
        postcopy_register_shared_ufd(&pcr_fake_pcfd);
    }
    return 0;
}

static NotifierWithReturn pcr_fake_notifier = { .notify = pcr_fake_notify };

static void pcr_check_instrument(void)
{
    if (getenv("PCR_QEMU_FAKE_SHARED_UFD")) {
        postcopy_add_notifier(&pcr_fake_notifier);
    }
}
#else
static bool pcr_read_stats(PcrStats *s)
{
    return false;
}

static void pcr_write_stats(const char *when, const PcrStats *s, long resend_returned)
{
}

static void pcr_log_stats(const char *when)
{
}

static void pcr_check_instrument(void)
{
}
#endif

/*
 * The fault thread's part of a recovery (7.2 parks its fault thread on
 * postcopy_pause_sem_fault). Posted once per resume, after RESUME_ACK (and QEMU's re-send
 * of its page_requested tree, empty here): the library re-sends every request pending
 * since the pause, faults recorded during the pause included; the first names its block
 * (loadvm_postcopy_handle_resume reset last_rb).
 */
static void *pcr_resume_thread_fn(void *opaque)
{
    MigrationIncomingState *mis = opaque;

    rcu_register_thread();
    qemu_sem_post(&mis->thread_sync_sem);
    for (;;) {
        PcrStats before, after;
        bool stats;
        long n;

        qemu_sem_wait(&mis->postcopy_pause_sem_fault);
        if (qatomic_read(&pcr_resume_quit)) {
            break;
        }
        trace_postcopy_pause_fault_thread_continued();
        stats = pcr_read_stats(&before);
        WITH_QEMU_LOCK_GUARD(&pcr_req_lock) {
            qatomic_set(&pcr_paused, false);
        }
        pcr_incoming_reset_request_block(pcr_h);
        n = pcr_incoming_resend_pending(pcr_h);
        if (n < 0) {
            error_report("postcopy-ram: re-sending pending requests: %s", strerror(-n));
        }
        if (stats && pcr_read_stats(&after)) {
            pcr_write_stats("resume-before", &before, -1);
            pcr_write_stats("resume-after", &after, n);
        }
    }
    rcu_unregister_thread();
    return NULL;
}

static int pcr_register_vcpus(void)
{
    CPUState *cpu;

    CPU_FOREACH(cpu) {
        int ret = pcr_incoming_register_vcpu(pcr_h, cpu->cpu_index, cpu->thread_id);
        if (ret) {
            error_report("postcopy-ram: vCPU %d for blocktime: %s", cpu->cpu_index,
                         strerror(-ret));
            return ret;
        }
    }
    return 0;
}

/* At LISTEN (QEMU state already LISTENING): memory registered, fault thread running. */
int postcopy_ram_incoming_setup(MigrationIncomingState *mis)
{
    int ret;

    /* Refused at ADVISE already (postcopy_ram_incoming_init); kept as a guard. */
    if (mis->postcopy_remote_fds->len) {
        error_report("%s: vhost-user shared-memory postcopy is not supported by this "
                     "build", __func__);
        return -1;
    }
    if (!pcr_inited) {
        error_report("%s: postcopy RAM was not initialised at ADVISE", __func__);
        return -1;
    }
    mis->last_rb = NULL; /* last RAMBlock we sent part of */
    qatomic_set(&pcr_paused, false);
    qatomic_set(&pcr_resume_quit, false);
    if (pcr_blocktime_wanted && pcr_register_vcpus()) {
        return -1;
    }
    ret = pcr_incoming_enable_notify(pcr_h);
    if (ret) {
        error_report("%s: %s", __func__, strerror(-ret));
        return -1;
    }
    mis->have_fault_thread = true;

    if (postcopy_temp_pages_setup(mis)) {
        return -1; /* cleanup unmaps what was mapped */
    }
    postcopy_thread_create(mis, &pcr_resume_thread, "postcopy/resume",
                           pcr_resume_thread_fn, QEMU_THREAD_JOINABLE);
    pcr_resume_thread_created = true;
    if (migrate_postcopy_preempt()) {
        /* After the temp pages: it uses the RAM_CHANNEL_POSTCOPY one at once. */
        postcopy_thread_create(mis, &mis->postcopy_prio_thread, "fault-fast",
                               postcopy_preempt_thread, QEMU_THREAD_JOINABLE);
        mis->postcopy_prio_thread_created = true;
    }
    trace_postcopy_ram_enable_notify();
    return 0;
}

static int pcr_hugepage_on(RAMBlock *rb, void *opaque)
{
    trace_postcopy_cleanup_range(qemu_ram_get_idstr(rb), qemu_ram_get_host_addr(rb),
                                 qemu_ram_get_offset(rb), rb->postcopy_length);
    qemu_madvise(qemu_ram_get_host_addr(rb), rb->postcopy_length, QEMU_MADV_HUGEPAGE);
    return 0;
}

/* At the end of a migration where postcopy_ram_incoming_init was called. Sends no SHUT
 * and changes no QEMU state (7.2). */
int postcopy_ram_incoming_cleanup(MigrationIncomingState *mis)
{
    Error *local_err = NULL;
    int ret = 0;

    trace_postcopy_ram_incoming_cleanup_entry();
    if (mis->postcopy_prio_thread_created) {
        qemu_thread_join(&mis->postcopy_prio_thread);
        mis->postcopy_prio_thread_created = false;
    }
    if (pcr_resume_thread_created) {
        qatomic_set(&pcr_resume_quit, true);
        qemu_sem_post(&mis->postcopy_pause_sem_fault);
        qemu_thread_join(&pcr_resume_thread);
        pcr_resume_thread_created = false;
    }
    if (pcr_inited) {
        trace_postcopy_ram_incoming_cleanup_join();
        /* Joins the fault thread, unregisters, closes the userfaultfd. */
        ret = pcr_incoming_cleanup(pcr_h);
        pcr_inited = false;
        pcr_log_stats("cleanup");
        if (ret) {
            error_report("%s: %s", __func__, strerror(-ret));
            ret = -1;
        }
    }
    if (mis->have_fault_thread) {
        mis->have_fault_thread = false;
        if (postcopy_notify(POSTCOPY_NOTIFY_INBOUND_END, &local_err)) {
            error_report_err(local_err);
            return -1;
        }
        /* THP was turned off for the discards; back on. */
        foreach_not_ignored_block(pcr_hugepage_on, NULL);
        trace_postcopy_ram_incoming_cleanup_closeuf();
    }
    if (enable_mlock && os_mlock() < 0) {
        /* A valid VM state: report, do not fail. */
        error_report("mlock: %s", strerror(errno));
    }
    postcopy_temp_pages_cleanup(mis);
    trace_postcopy_ram_incoming_cleanup_exit();
    return ret;
}

/* ---- placement ---------------------------------------------------------------------- */

/* QEMU's bookkeeping after a placement (EEXIST included): receivedmap (what a recovery's
 * RECV_BITMAP reports) and the wake of shared clients. The page_requested tree stays
 * empty (pcr_request_page). */
static int pcr_placed(MigrationIncomingState *mis, void *host, RAMBlock *rb,
                      size_t pagesize)
{
    qemu_mutex_lock(&mis->page_request_mutex);
    ramblock_recv_bitmap_set_range(rb, host, pagesize / qemu_target_page_size());
    qemu_mutex_unlock(&mis->page_request_mutex);
    return postcopy_notify_shared_wake(rb, qemu_ram_block_host_offset(rb, host));
}

/* Places a host page (from) at (host) atomically; 0 on success. An already present page
 * (another channel won the race) is success: its waiters were woken. */
int postcopy_place_page(MigrationIncomingState *mis, void *host, void *from, RAMBlock *rb)
{
    size_t pagesize = qemu_ram_pagesize(rb);
    int ret = pcr_place_page(pcr_h, host, from, pagesize);

    if (ret && ret != -EEXIST) {
        error_report("%s: %s copy host: %p from: %p (size: %zd)", __func__,
                     strerror(-ret), host, from, pagesize);
        return ret;
    }
    trace_postcopy_place_page(host);
    return pcr_placed(mis, host, rb, pagesize);
}

/* Places a zero page at (host) atomically (the library picks UFFDIO_ZEROPAGE or a copy
 * of zeros per block). */
int postcopy_place_page_zero(MigrationIncomingState *mis, void *host, RAMBlock *rb)
{
    size_t pagesize = qemu_ram_pagesize(rb);
    int ret;

    trace_postcopy_place_page_zero(host);
    ret = pcr_place_page_zero(pcr_h, host, pagesize);
    if (ret && ret != -EEXIST) {
        error_report("%s: %s zero host: %p", __func__, strerror(-ret), host);
        return ret;
    }
    return pcr_placed(mis, host, rb, pagesize);
}

/* ---- blocktime ---------------------------------------------------------------------- */

/* query-migrate on the destination: postcopy-blocktime and postcopy-vcpu-blocktime (ms),
 * from the library's figures, when the capability is on and the kernel gave thread ids. */
void fill_destination_postcopy_migration_info(MigrationInfo *info)
{
    MachineState *ms = MACHINE(qdev_get_machine());
    unsigned int n = ms->smp.cpus;
    g_autofree uint32_t *per_vcpu = NULL;
    uint32List *list = NULL;
    PcrBlocktime bt;
    int i;

    if (!pcr_blocktime_wanted || !pcr_h) {
        return;
    }
    per_vcpu = g_new0(uint32_t, n);
    if (pcr_incoming_get_blocktime(pcr_h, &bt, per_vcpu, n) || !bt.thread_id_available) {
        return;
    }
    for (i = n - 1; i >= 0; i--) {
        QAPI_LIST_PREPEND(list, per_vcpu[i]);
    }
    info->has_postcopy_blocktime = true;
    info->postcopy_blocktime = bt.total_ms;
    info->has_postcopy_vcpu_blocktime = true;
    info->postcopy_vcpu_blocktime = list;
}

/* ---- pause --------------------------------------------------------------------------- */

/* 7.2 wakes its fault thread here; on a pause (return path gone) it parks itself. The
 * library's fault thread keeps reading faults and records them as pending. */
void postcopy_fault_thread_notify(MigrationIncomingState *mis)
{
    if (!mis->to_src_file && pcr_h && mis->have_fault_thread) {
        trace_postcopy_pause_fault_thread();
        WITH_QEMU_LOCK_GUARD(&pcr_req_lock) {
            qatomic_set(&pcr_paused, true);
        }
        pcr_incoming_pause_requests(pcr_h, true);
        pcr_log_stats("pause");
    }
}

/* ---- source: discards --------------------------------------------------------------- */

static int pcr_send_discard(void *opaque, const char *name, uint16_t count,
                            const uint64_t *starts, const uint64_t *lengths)
{
    MigrationState *ms = opaque;

    qemu_savevm_send_postcopy_ram_discard(ms->to_dst_file, name, count,
                                          (uint64_t *)starts, (uint64_t *)lengths);
    return qemu_file_get_error(ms->to_dst_file);
}

/* Starts the discards of block `name`; 7.2's bitmaps are per block, so offset 0. Without
 * a batch the block's discards cannot be sent, and the destination would keep stale
 * pages: the migration fails (an error on the stream, which postcopy_start checks before
 * it sends the device state, while the source still owns the guest). */
void postcopy_discard_send_init(MigrationState *ms, const char *name)
{
    pcr_pds = NULL;
    if (!pcr_src) {
        PcrSourceOps ops = {
            .send_discard = pcr_send_discard,
            .target_page_size = qemu_target_page_size(),
        };
        pcr_src = pcr_source_new(&ops, ms);
        if (!pcr_src) {
            error_report("postcopy-ram: pcr_source_new failed: the migration fails");
            qemu_file_set_error(ms->to_dst_file, -EINVAL);
            return;
        }
    }
    pcr_pds = pcr_discard_send_init(pcr_src, 0, name);
    if (!pcr_pds) {
        error_report("postcopy-ram: pcr_discard_send_init failed for block %s: the "
                     "migration fails", name);
        qemu_file_set_error(ms->to_dst_file, -EINVAL);
    }
}

/* `length` target pages from page `start` of the block: queued, sent 12 at a time. */
void postcopy_discard_send_range(MigrationState *ms, unsigned long start,
                                 unsigned long length)
{
    trace_postcopy_discard_send_range(pcr_pds ? "" : "(none)", start, length);
    if (pcr_pds) { /* else the migration already failed (send_init) */
        pcr_discard_send_range(pcr_src, pcr_pds, start, length);
    }
}

/* Sends what is queued; a failed send shows as the QEMUFile's error. */
void postcopy_discard_send_finish(MigrationState *ms)
{
    if (pcr_pds) {
        pcr_discard_send_finish(pcr_src, pcr_pds);
    }
    pcr_pds = NULL;
}
