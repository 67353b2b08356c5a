/*
 * A log capture installed with pcr_set_log_callback (by pcr_test_begin): tests assert how
 * many lines a call produced (LOG_EXPECT_ONE / LOG_EXPECT_NONE); every captured line is
 * echoed to stderr.
 */
#ifndef PCR_HARNESS_LOG_H
#define PCR_HARNESS_LOG_H

#include "pcr_check.h"

typedef struct pcr_log {
    pthread_mutex_t lock;
    int count;        /* lines since the last pcr_log_reset */
    int errors;       /* of which level 1 */
    int total;        /* lines since the start */
    int last_level;
    char last[1024];
    bool quiet;       /* do not echo to stderr */
} pcr_log;

extern pcr_log LOG;

/* The library's log sink: counts and records each line. */
void pcr_log_cb(void *opaque, int level, const char *message);
void pcr_log_reset(void);
int pcr_log_count(void);
/* Lines at warn level or above are captured (the library logs failures at error level). */
void pcr_log_install(void);
void pcr_log_expect_(int expected, const char *substr, const char *what, const char *file,
                     int line);

/* Runs `stmt` and checks that it logged exactly one error line (mentioning `substr` unless
 * NULL). */
#define LOG_EXPECT_ONE(stmt, substr)                                                         \
    do {                                                                                     \
        pcr_log_reset();                                                                     \
        stmt;                                                                                \
        pcr_log_expect_(1, (substr), #stmt, __FILE__, __LINE__);                             \
    } while (0)

/* Runs `stmt` and checks that it logged nothing at warn level or above. */
#define LOG_EXPECT_NONE(stmt)                                                                \
    do {                                                                                     \
        pcr_log_reset();                                                                     \
        stmt;                                                                                \
        pcr_log_expect_(0, NULL, #stmt, __FILE__, __LINE__);                                 \
    } while (0)


#endif /* PCR_HARNESS_LOG_H */
