/* The log capture (pcr_log.h). */
#include "pcr_log.h"

pcr_log LOG = {.lock = PTHREAD_MUTEX_INITIALIZER};

void pcr_log_cb(void *opaque, int level, const char *message)
{
    pcr_log *log = opaque;
    pthread_mutex_lock(&log->lock);
    log->count++;
    log->total++;
    if (level == 1)
        log->errors++;
    log->last_level = level;
    snprintf(log->last, sizeof log->last, "%s", message ? message : "(null)");
    if (!log->quiet)
        fprintf(stderr, "  [lib L%d] %s\n", level, message ? message : "(null)");
    pthread_mutex_unlock(&log->lock);
}

void pcr_log_reset(void)
{
    pthread_mutex_lock(&LOG.lock);
    LOG.count = 0;
    LOG.errors = 0;
    LOG.last[0] = 0;
    LOG.last_level = 0;
    pthread_mutex_unlock(&LOG.lock);
}

int pcr_log_count(void)
{
    pthread_mutex_lock(&LOG.lock);
    int n = LOG.count;
    pthread_mutex_unlock(&LOG.lock);
    return n;
}

void pcr_log_install(void)
{
    PCR(pcr_set_log_callback)(pcr_log_cb, &LOG, 2);
}

void pcr_log_expect_(int expected, const char *substr, const char *what,
                                   const char *file, int line)
{
    pthread_mutex_lock(&LOG.lock);
    int n = LOG.count, level = LOG.last_level;
    char last[1024];
    snprintf(last, sizeof last, "%s", LOG.last);
    pthread_mutex_unlock(&LOG.lock);
    if (n != expected)
        pcr_fail("%s:%d: %s logged %d line(s), expected %d (last: \"%s\")", file, line, what, n,
                 expected, last);
    if (expected > 0 && level != 1)
        pcr_fail("%s:%d: %s logged at level %d, expected 1 (error): \"%s\"", file, line, what,
                 level, last);
    if (expected > 0 && substr && !strstr(last, substr))
        pcr_fail("%s:%d: %s logged \"%s\", expected it to mention \"%s\"", file, line, what, last,
                 substr);
}

