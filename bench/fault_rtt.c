/*
 * fault_rtt: the 4 KiB fault round trip, library vs a plain C handler.
 *
 * One thread (this program's main thread) writes one byte to each of N missing pages of a
 * registered private anonymous region and times each write. The page is served by:
 *
 *   lib      the library's fault thread: it reads the fault, calls request_page, whose
 *            callback places the page with pcr_place_page (on the fault thread);
 *   raw      a plain C thread on its own userfaultfd: poll, read, UFFDIO_COPY.
 *
 * both with the fault thread sleeping in poll(2) (spin_wait_us = 0, the default), and both
 * spinning: the library with spin_wait_us = S, the C thread with the same loop (non-blocking
 * read until S microseconds pass without a fault, then poll). A fifth variant is the
 * library, blocking, with blocktime accounting on (PcrIncomingOps.blocktime) and the
 * touching thread registered as vCPU 0, against the library with it off.
 *
 * All four run in one process for the whole run: one library destination per variant
 * (pcr_incoming_new + pcr_incoming_init + pcr_incoming_enable_notify,
 * cleanup + free at the end), one C handler thread per variant, each on its own region. A
 * round is `blocks` blocks of n faults per variant, the variants taking turns block by
 * block; every block touches pages never touched before, starting with WARMUP untimed
 * faults. With gap_us > 0 the toucher sleeps that long before each fault (sparse faults:
 * the handler's CPU goes idle in between, as in a real postcopy phase).
 *
 * Usage: fault_rtt [rounds] [blocks_per_round] [faults_per_block] [spin_us] [gap_us]
 * Prints table rows (see bench_util.h) of per-round medians and p99s. Environment:
 * BENCH_PIN_TOUCHER=cpu pins the touching thread to that CPU while it touches.
 */
#include "bench_util.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/eventfd.h>

#define PAGE 4096UL
#define WARMUP 2 /* untimed faults at the start of each block (the handler may be asleep) */

/* ------------------------------------------------------------- the C handler */

struct raw_handler {
    int uffd;
    int quit_fd;
    atomic_bool quit;
    const void *src;
    uint32_t spin_us;
    unsigned long served;
    pthread_t thread;
};

static void raw_serve(struct raw_handler *h, const struct uffd_msg *msgs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
            continue;
        uintptr_t page = msgs[i].arg.pagefault.address & ~(PAGE - 1);
        raw_copy(h->uffd, (void *)page, h->src, PAGE);
        h->served++;
    }
}

static void *raw_thread(void *arg)
{
    struct raw_handler *h = arg;
    struct uffd_msg msgs[64];
    struct pollfd fds[2] = { { .fd = h->uffd, .events = POLLIN }, { .fd = h->quit_fd, .events = POLLIN } };
    uint64_t spin_until = 0;
    for (;;) {
        if (h->spin_us) {
            /* Spinning: non-blocking reads until spin_us pass without a fault. */
            if (atomic_load_explicit(&h->quit, memory_order_acquire))
                break;
            ssize_t n = read(h->uffd, msgs, sizeof msgs);
            if (n > 0) {
                raw_serve(h, msgs, (size_t)n / sizeof msgs[0]);
                spin_until = 0;
                continue;
            }
            uint64_t t = now_ns();
            if (spin_until == 0)
                spin_until = t + h->spin_us * 1000ULL;
            if (t < spin_until)
                continue;
            spin_until = 0;
        }
        /* Blocking: poll, read, UFFDIO_COPY. */
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll: %s", strerror(errno));
        }
        if (fds[1].revents)
            break;
        ssize_t n = read(h->uffd, msgs, sizeof msgs);
        if (n > 0)
            raw_serve(h, msgs, (size_t)n / sizeof msgs[0]);
        else if (n < 0 && errno != EAGAIN)
            die("read(userfaultfd): %s", strerror(errno));
    }
    return NULL;
}

static void raw_start(struct raw_handler *h, uint32_t spin_us)
{
    h->spin_us = spin_us;
    h->served = 0;
    atomic_store(&h->quit, false);
    h->quit_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (h->quit_fd < 0)
        die("eventfd: %s", strerror(errno));
    if (pthread_create(&h->thread, NULL, raw_thread, h) != 0)
        die("pthread_create failed");
}

static void raw_stop(struct raw_handler *h)
{
    uint64_t one = 1;
    atomic_store_explicit(&h->quit, true, memory_order_release);
    if (write(h->quit_fd, &one, sizeof one) != sizeof one)
        die("eventfd write: %s", strerror(errno));
    pthread_join(h->thread, NULL);
    close(h->quit_fd);
}

/* ---------------------------------------------------------------- the toucher */

static int pin_cpu = -1; /* BENCH_PIN_TOUCHER=cpu: run the touch loop on that CPU only */

static void set_affinity(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (cpu >= 0)
        CPU_SET(cpu, &set);
    else
        for (int i = 0; i < CPU_SETSIZE; i++)
            CPU_SET(i, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static unsigned gap_us; /* pause before each timed touch (sparse faults), 0: back to back */

/* Writes one byte to each of the WARMUP + n pages at base, and stores the duration of the
 * last n writes in us[] (microseconds). */
static void touch_pages(char *base, size_t n, double *us)
{
    if (pin_cpu >= 0)
        set_affinity(pin_cpu);
    for (size_t i = 0; i < WARMUP; i++)
        ((volatile char *)base)[i * PAGE] = 1;
    char *p = base + WARMUP * PAGE;
    for (size_t i = 0; i < n; i++) {
        if (gap_us)
            usleep(gap_us);
        uint64_t t0 = now_ns();
        ((volatile char *)p)[i * PAGE] = 1;
        uint64_t t1 = now_ns();
        us[i] = (double)(t1 - t0) / 1000.0;
    }
    if (pin_cpu >= 0)
        set_affinity(-1); /* threads started later must not inherit the pin */
}

enum { LIB_BLOCK, RAW_BLOCK, LIB_SPIN, RAW_SPIN, LIB_BLOCKTIME, NVARIANTS };

int main(int argc, char **argv)
{
    size_t rounds = argc > 1 ? strtoul(argv[1], NULL, 0) : 15;
    size_t blocks = argc > 2 ? strtoul(argv[2], NULL, 0) : 8;
    size_t n = argc > 3 ? strtoul(argv[3], NULL, 0) : 60;
    uint32_t spin_us = argc > 4 ? (uint32_t)strtoul(argv[4], NULL, 0) : 50;
    gap_us = argc > 5 ? (unsigned)strtoul(argv[5], NULL, 0) : 0;
    if (rounds < 1 || blocks < 1 || n < 1 || spin_us < 1)
        die("usage: fault_rtt [rounds>=1] [blocks_per_round>=1] [faults_per_block>=1] [spin_us>=1] [gap_us]");
    if (getenv("BENCH_PIN_TOUCHER"))
        pin_cpu = atoi(getenv("BENCH_PIN_TOUCHER"));

    /* Every block of faults touches pages never touched before (a slice of its own), so
     * that both sides start from the same page-table state and the library's per-page
     * "received" bits never need a reset: each side keeps one destination / one handler
     * for the whole run. */
    size_t slice = (n + WARMUP) * PAGE;
    size_t len = rounds * blocks * slice;
    char *region[NVARIANTS];
    for (int v = 0; v < NVARIANTS; v++)
        if (!(region[v] = map_region(len, 0)))
            die("mmap %zu bytes: %s", len, strerror(errno));
    char *src = map_region(PAGE, 0);
    if (!src)
        die("mmap: %s", strerror(errno));
    memset(src, 0x5a, PAGE);

    struct lib_side lib[NVARIANTS] = { 0 };
    struct raw_handler raw[NVARIANTS] = { 0 };
    for (int v = 0; v < NVARIANTS; v++) {
        int spin = v == LIB_SPIN || v == RAW_SPIN;
        if (v == LIB_BLOCK || v == LIB_SPIN || v == LIB_BLOCKTIME) {
            lib[v].src = src;
            lib[v].blocktime = v == LIB_BLOCKTIME;
            lib_open(&lib[v], region[v], len, PAGE, spin ? spin_us : 0);
            if (v == LIB_BLOCKTIME && pcr_incoming_register_vcpu(lib[v].mis, 0, (int32_t)gettid()) != 0)
                die("pcr_incoming_register_vcpu failed");
        } else {
            raw[v].src = src;
            raw[v].uffd = raw_uffd_open(0);
            raw_uffd_register(raw[v].uffd, region[v], len);
            raw_start(&raw[v], spin ? spin_us : 0);
        }
    }

    double *us[NVARIANTS], *med[NVARIANTS], *p99[NVARIANTS];
    for (int v = 0; v < NVARIANTS; v++) {
        us[v] = malloc(blocks * n * sizeof(double));
        med[v] = calloc(rounds, sizeof(double));
        p99[v] = calloc(rounds, sizeof(double));
        if (!us[v] || !med[v] || !p99[v])
            die("out of memory");
    }

    /* A round: `blocks` blocks of n faults per variant, the four variants taking turns block
     * by block (order rotated every block), so that all four see the same moments of this
     * noisy VM. The round's median and p99 of each variant are over its blocks * n faults. */
    for (size_t r = 0; r < rounds; r++) {
        for (size_t b = 0; b < blocks; b++) {
            for (int k = 0; k < NVARIANTS; k++) {
                int v = (int)((r * blocks + b + (size_t)k) % NVARIANTS);
                /* Let the previous block's handler end its spin window and sleep, so that it
                 * does not compete for a CPU with this block. */
                usleep(spin_us + 300);
                touch_pages(region[v] + (r * blocks + b) * slice, n, us[v] + b * n);
            }
        }
        for (int v = 0; v < NVARIANTS; v++) {
            med[v][r] = median(us[v], blocks * n);
            p99[v][r] = percentile(us[v], blocks * n, 99);
        }
    }

    size_t expect = rounds * blocks * (n + WARMUP);
    for (int v = 0; v < NVARIANTS; v++) {
        if (v == LIB_BLOCK || v == LIB_SPIN || v == LIB_BLOCKTIME) {
            if (v == LIB_BLOCKTIME) {
                PcrBlocktime bt;
                if (pcr_incoming_get_blocktime(lib[v].mis, &bt, NULL, 0) != 0 || !bt.enabled ||
                    bt.faults_timed != expect)
                    fprintf(stderr, "fault_rtt: note: blocktime timed %llu faults for %zu touches\n",
                            (unsigned long long)bt.faults_timed, expect);
            }
            PcrStats st;
            lib_close(&lib[v], &st);
            if (st.faults != expect || st.requests != expect || lib[v].placed != expect)
                fprintf(stderr, "fault_rtt: note: library: %llu faults, %llu requests, %lu placed for %zu touches\n",
                        (unsigned long long)st.faults, (unsigned long long)st.requests, lib[v].placed, expect);
        } else {
            raw_stop(&raw[v]);
            if (raw[v].served != expect)
                fprintf(stderr, "fault_rtt: note: C handler served %lu faults for %zu touches\n", raw[v].served, expect);
        }
    }

    char pre[48], name[96], base[48];
    if (gap_us)
        snprintf(pre, sizeof pre, "fault RTT 4K, %uus apart", gap_us);
    else
        snprintf(pre, sizeof pre, "fault RTT 4K, back to back");
    snprintf(name, sizeof name, "%s, blocking: median", pre);
    print_row(name, "us/fault", med[LIB_BLOCK], "C poll+read+COPY", med[RAW_BLOCK], rounds, 0, 1.05);
    snprintf(name, sizeof name, "%s, blocking: p99", pre);
    print_row(name, "us/fault", p99[LIB_BLOCK], "C poll+read+COPY", p99[RAW_BLOCK], rounds, 0, 0);
    snprintf(name, sizeof name, "%s, spin %uus: median", pre, spin_us);
    snprintf(base, sizeof base, "C spinning %uus", spin_us);
    print_row(name, "us/fault", med[LIB_SPIN], base, med[RAW_SPIN], rounds, 0, 1.05);
    snprintf(name, sizeof name, "%s, spin %uus: p99", pre, spin_us);
    print_row(name, "us/fault", p99[LIB_SPIN], base, p99[RAW_SPIN], rounds, 0, 0);
    snprintf(name, sizeof name, "%s: lib spin %uus vs lib blocking, median", pre, spin_us);
    print_row(name, "us/fault", med[LIB_SPIN], "lib blocking", med[LIB_BLOCK], rounds, 0, 0);
    snprintf(name, sizeof name, "%s: lib spin %uus vs lib blocking, p99", pre, spin_us);
    print_row(name, "us/fault", p99[LIB_SPIN], "lib blocking", p99[LIB_BLOCK], rounds, 0, 0);
    snprintf(name, sizeof name, "%s: lib blocktime on vs off, median", pre);
    print_row(name, "us/fault", med[LIB_BLOCKTIME], "lib blocktime off", med[LIB_BLOCK], rounds, 0, 1.02);
    snprintf(name, sizeof name, "%s: lib blocktime on vs off, p99", pre);
    print_row(name, "us/fault", p99[LIB_BLOCKTIME], "lib blocktime off", p99[LIB_BLOCK], rounds, 0, 0);
    return 0;
}
