/*
 * QEMU 7.2 migration/postcopy-ram.c over libpostcopy_ram: the QEMU plumbing.
 *
 * The part of postcopy-ram.h that does not involve userfaultfd, kept with QEMU 7.2's
 * behaviour: the notifier list, thread creation, the temporary-page reset, the incoming
 * postcopy state, the postcopy preempt channel and its "fault-fast" thread, and the
 * vhost-user shared-memory registration (recorded so that postcopy_ram_incoming_init
 * refuses it at ADVISE; waking or serving a foreign userfaultfd is refused here). The rest is in
 * postcopy-ram.c, over the library.
 *
 * Copyright the postcopy-ram authors. Behaviour and structure follow QEMU 7.2's
 * migration/postcopy-ram.c (Copyright 2013-2015 Red Hat, Inc., Dave Gilbert).
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/rcu.h"
#include "migration.h"
#include "qemu-file.h"
#include "savevm.h"
#include "postcopy-ram.h"
#include "ram.h"
#include "qapi/error.h"
#include "qemu/notify.h"
#include "qemu/error-report.h"
#include "trace.h"
#include "socket.h"
#include "yank_functions.h"
#include "tls.h"

/* ---- notifiers and threads (plumbing) ---------------------------------------------- */

static NotifierWithReturnList postcopy_notifier_list;

void postcopy_infrastructure_init(void)
{
    notifier_with_return_list_init(&postcopy_notifier_list);
}

void postcopy_add_notifier(NotifierWithReturn *nn)
{
    notifier_with_return_list_add(&postcopy_notifier_list, nn);
}

void postcopy_remove_notifier(NotifierWithReturn *n)
{
    notifier_with_return_remove(n);
}

int postcopy_notify(enum PostcopyNotifyReason reason, Error **errp)
{
    struct PostcopyNotifyData pnd = { .reason = reason, .errp = errp };

    return notifier_with_return_list_notify(&postcopy_notifier_list, &pnd);
}

/* Not thread safe (one caller at a time), as in 7.2. */
void postcopy_thread_create(MigrationIncomingState *mis, QemuThread *thread,
                            const char *name, void *(*fn)(void *), int joinable)
{
    qemu_sem_init(&mis->thread_sync_sem, 0);
    qemu_thread_create(thread, name, fn, mis, joinable);
    qemu_sem_wait(&mis->thread_sync_sem);
    qemu_sem_destroy(&mis->thread_sync_sem);
}

/* ---- state, temp pages ---------------------------------------------------------- */

void postcopy_temp_page_reset(PostcopyTmpPage *tmp_page)
{
    tmp_page->target_pages = 0;
    tmp_page->host_addr = NULL;
    /* Cleared as soon as a non-zero small page of this host page arrives. */
    tmp_page->all_zero = true;
}

/* The incoming postcopy state: QEMU's own (it outlives MigrationIncomingState). */
static PostcopyState incoming_postcopy_state;

PostcopyState postcopy_state_get(void)
{
    return qatomic_mb_read(&incoming_postcopy_state);
}

/* Set the state and return the old state */
PostcopyState postcopy_state_set(PostcopyState new_state)
{
    return qatomic_xchg(&incoming_postcopy_state, new_state);
}

/* ---- vhost-user shared memory: refused --------------------------------------------- */

void postcopy_register_shared_ufd(struct PostCopyFD *pcfd)
{
    MigrationIncomingState *mis = migration_incoming_get_current();

    /* Recorded so that postcopy_ram_incoming_init refuses it at ADVISE. */
    mis->postcopy_remote_fds = g_array_append_val(mis->postcopy_remote_fds, *pcfd);
}

void postcopy_unregister_shared_ufd(struct PostCopyFD *pcfd)
{
    MigrationIncomingState *mis = migration_incoming_get_current();
    GArray *pcrfds = mis->postcopy_remote_fds;
    guint i;

    if (!pcrfds) {
        return; /* migration has already finished and freed the array */
    }
    for (i = 0; i < pcrfds->len; i++) {
        if (g_array_index(pcrfds, struct PostCopyFD, i).fd == pcfd->fd) {
            mis->postcopy_remote_fds = g_array_remove_index(pcrfds, i);
            return;
        }
    }
}

/* Calls each shared client's waker (none can be registered while listening). */
int postcopy_notify_shared_wake(RAMBlock *rb, uint64_t offset)
{
    MigrationIncomingState *mis = migration_incoming_get_current();
    GArray *pcrfds = mis->postcopy_remote_fds;
    guint i;

    for (i = 0; i < pcrfds->len; i++) {
        struct PostCopyFD *cur = &g_array_index(pcrfds, struct PostCopyFD, i);
        int ret = cur->waker(cur, rb, offset);
        if (ret) {
            return ret;
        }
    }
    return 0;
}

int postcopy_wake_shared(struct PostCopyFD *pcfd, uint64_t client_addr, RAMBlock *rb)
{
    error_report("%s: vhost-user shared-memory postcopy is not supported by this build",
                 __func__);
    return -ENOSYS;
}

int postcopy_request_shared_page(struct PostCopyFD *pcfd, RAMBlock *rb,
                                 uint64_t client_addr, uint64_t offset)
{
    error_report("%s: vhost-user shared-memory postcopy is not supported by this build",
                 __func__);
    return -ENOSYS;
}

/* ---- postcopy preempt (plumbing) ---------------------------------------------------- */

bool postcopy_preempt_new_channel(MigrationIncomingState *mis, QEMUFile *file)
{
    /* The new loading channel has its own thread: blocking (the default, explicitly). */
    qemu_file_set_blocking(file, true);
    mis->postcopy_qemufile_dst = file;
    trace_postcopy_preempt_new_channel();
    /* Start the migration immediately */
    return true;
}

/* Sets the channel up with the IOC, or records the error; kicks the waiter either way
 * (it checks postcopy_qemufile_src). Frees local_err. */
static void postcopy_preempt_send_channel_done(MigrationState *s, QIOChannel *ioc,
                                               Error *local_err)
{
    if (local_err) {
        migrate_set_error(s, local_err);
        error_free(local_err);
    } else {
        migration_ioc_register_yank(ioc);
        s->postcopy_qemufile_src = qemu_file_new_output(ioc);
        trace_postcopy_preempt_new_channel();
    }
    qemu_sem_post(&s->postcopy_qemufile_src_sem);
}

static void postcopy_preempt_tls_handshake(QIOTask *task, gpointer opaque)
{
    g_autoptr(QIOChannel) ioc = QIO_CHANNEL(qio_task_get_source(task));
    Error *local_err = NULL;

    qio_task_propagate_error(task, &local_err);
    postcopy_preempt_send_channel_done(opaque, ioc, local_err);
}

static void postcopy_preempt_send_channel_new(QIOTask *task, gpointer opaque)
{
    g_autoptr(QIOChannel) ioc = QIO_CHANNEL(qio_task_get_source(task));
    MigrationState *s = opaque;
    QIOChannelTLS *tioc;
    Error *local_err = NULL;

    if (!qio_task_propagate_error(task, &local_err) &&
        migrate_channel_requires_tls_upgrade(ioc)) {
        tioc = migration_tls_client_create(s, ioc, s->hostname, &local_err);
        if (tioc) {
            trace_postcopy_preempt_tls_handshake();
            qio_channel_set_name(QIO_CHANNEL(tioc), "migration-tls-preempt");
            /* The channel is set up once the handshake finished. */
            qio_channel_tls_handshake(tioc, postcopy_preempt_tls_handshake, s, NULL, NULL);
            return;
        }
    }
    postcopy_preempt_send_channel_done(s, ioc, local_err);
}

/* Returns 0 if the channel is established (or not needed), -1 for an error. */
int postcopy_preempt_wait_channel(MigrationState *s)
{
    if (!migrate_postcopy_preempt()) {
        return 0;
    }
    qemu_sem_wait(&s->postcopy_qemufile_src_sem);
    return s->postcopy_qemufile_src ? 0 : -1;
}

int postcopy_preempt_setup(MigrationState *s, Error **errp)
{
    if (!migrate_postcopy_preempt()) {
        return 0;
    }
    if (!migrate_multi_channels_is_allowed()) {
        error_setg(errp, "Postcopy preempt is not supported as current "
                   "migration stream does not support multi-channels.");
        return -1;
    }
    /* Kick an async task to connect */
    socket_send_channel_create(postcopy_preempt_send_channel_new, s);
    return 0;
}

static void postcopy_pause_ram_fast_load(MigrationIncomingState *mis)
{
    trace_postcopy_pause_fast_load();
    qemu_mutex_unlock(&mis->postcopy_prio_thread_mutex);
    qemu_sem_wait(&mis->postcopy_pause_sem_fast_load);
    qemu_mutex_lock(&mis->postcopy_prio_thread_mutex);
    trace_postcopy_pause_fast_load_continued();
}

/* "fault-fast": places the requested pages of the preempt channel until its EOS. */
void *postcopy_preempt_thread(void *opaque)
{
    MigrationIncomingState *mis = opaque;

    trace_postcopy_preempt_thread_entry();
    rcu_register_thread();
    qemu_sem_post(&mis->thread_sync_sem);
    qemu_mutex_lock(&mis->postcopy_prio_thread_mutex);
    while (ram_load_postcopy(mis->postcopy_qemufile_dst, RAM_CHANNEL_POSTCOPY)) {
        /* An error: wait for the recovery. */
        postcopy_pause_ram_fast_load(mis);
    }
    qemu_mutex_unlock(&mis->postcopy_prio_thread_mutex);
    rcu_unregister_thread();
    trace_postcopy_preempt_thread_exit();
    return NULL;
}
