/*
 * Network baselines of the postcopy stream (project issue 12), measured by
 * scripts/bench-stream.sh in the same run as the demo migration they are compared with.
 *
 *   net_baseline bulk MIB
 *       The bulk copy: a child process maps MIB MiB of never-touched private anonymous
 *       memory and receives into it, with recv(2) straight into the mapping, from the
 *       parent over one loopback TCP connection; the parent sends the same bytes the demo
 *       migrates (demo/src/checksum.rs fill_initial, seed 1: every 8th 4 KiB page zero,
 *       the others splitmix64) from its own memory, filled before the clock starts.
 *       Prints "bulk_s SECONDS": from the first send to the child's one-byte
 *       acknowledgement after its last byte arrived.
 *
 *   net_baseline rr COUNT
 *       The loopback request/response with the demo's message sizes: the parent sends a
 *       16-byte request (a REQ_PAGES return-path message: 4-byte header + be64 start +
 *       be32 length) and the child answers with a 4116-byte page frame (20-byte 'P'
 *       header for block "pc.ram" + 4096 bytes of data), TCP_NODELAY on both sides, one
 *       write(2) per message as the demo does. Prints "rr_p50_us X rr_p99_us Y" over
 *       COUNT round trips after 100 untimed ones.
 *
 *   net_baseline rr-busy COUNT
 *       The same, while one SCHED_IDLE spinning process per CPU keeps every CPU busy (they
 *       yield at once to the two measured processes). An idle virtual CPU is woken far more
 *       slowly than a busy one (a halted vCPU must be scheduled again by the host), and
 *       during a migration the bulk threads keep both CPUs busy: this is the baseline under
 *       the demo's own wake-up conditions. Prints "rrbusy_p50_us X rrbusy_p99_us Y".
 *
 * Plain C, no library: these are the wire and memory costs any postcopy stream pays.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REQ_LEN 16
#define FRAME_LEN (20 + 4096)

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "net_baseline: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* demo/src/checksum.rs fill_initial */
static void fill_initial(uint64_t seed, uint64_t page, unsigned char *buf)
{
    if (page % 8 == 5) {
        memset(buf, 0, 4096);
        return;
    }
    uint64_t x = mix(seed ^ (page * 0x100000001b3ULL));
    for (int i = 0; i < 4096; i += 8) {
        x = mix(x);
        memcpy(buf + i, &x, 8);
    }
}

static void nodelay(int fd)
{
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
        die("TCP_NODELAY");
}

/* A listening socket on 127.0.0.1, any port; *port receives the port. */
static int listen_any(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 1) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        die("bind/listen");
    *port = ntohs(a.sin_port);
    return fd;
}

static int connect_to(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons(port)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
        die("connect");
    return fd;
}

static void read_full(int fd, void *buf, size_t len)
{
    unsigned char *p = buf;
    while (len) {
        ssize_t n = recv(fd, p, len, 0);
        if (n == 0) {
            fprintf(stderr, "net_baseline: peer closed early\n");
            exit(1);
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("recv");
        }
        p += n;
        len -= (size_t)n;
    }
}

static void write_full(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("send");
        }
        p += n;
        len -= (size_t)n;
    }
}

static int wait_child(pid_t pid)
{
    int status;
    if (waitpid(pid, &status, 0) < 0)
        die("waitpid");
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

static int bulk(size_t mib)
{
    size_t size = mib << 20;
    uint16_t port;
    int lfd = listen_any(&port);
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        unsigned char *dst =
            mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (dst == MAP_FAILED)
            die("mmap (receiver)");
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            die("accept");
        read_full(fd, dst, size);
        unsigned char ack = 1;
        write_full(fd, &ack, 1);
        _exit(0);
    }
    close(lfd);
    unsigned char *src =
        mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (src == MAP_FAILED)
        die("mmap (sender)");
    for (size_t p = 0; p < size / 4096; p++)
        fill_initial(1, p, src + p * 4096);
    int fd = connect_to(port);
    uint64_t t0 = now_ns();
    write_full(fd, src, size);
    unsigned char ack;
    read_full(fd, &ack, 1);
    uint64_t t1 = now_ns();
    close(fd);
    if (wait_child(pid))
        return 1;
    printf("bulk_s %.4f\n", (double)(t1 - t0) / 1e9);
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* One SCHED_IDLE spinner per CPU; returns how many were started (pids in *pids). */
static int spinners_start(pid_t *pids, int max)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    int started = 0;
    for (long i = 0; i < n && started < max; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork (spinner)");
        if (pid == 0) {
            struct sched_param p = {.sched_priority = 0};
            if (sched_setscheduler(0, SCHED_IDLE, &p) < 0)
                _exit(1);
            for (volatile unsigned long x = 0;; x++)
                ;
        }
        pids[started++] = pid;
    }
    return started;
}

static void spinners_stop(pid_t *pids, int n)
{
    for (int i = 0; i < n; i++) {
        kill(pids[i], SIGKILL);
        waitpid(pids[i], NULL, 0);
    }
}

static int rr(size_t count, const char *label)
{
    uint16_t port;
    int lfd = listen_any(&port);
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            die("accept");
        nodelay(fd);
        unsigned char req[REQ_LEN], frame[FRAME_LEN];
        for (size_t i = 0; i < FRAME_LEN; i++)
            frame[i] = (unsigned char)(i * 7 + 1);
        for (;;) {
            ssize_t n = recv(fd, req, REQ_LEN, MSG_WAITALL);
            if (n == 0)
                _exit(0);
            if (n != REQ_LEN)
                die("recv request");
            write_full(fd, frame, FRAME_LEN);
        }
    }
    close(lfd);
    int fd = connect_to(port);
    nodelay(fd);
    uint64_t *lat = malloc(count * sizeof *lat);
    if (!lat)
        die("malloc");
    unsigned char req[REQ_LEN] = {0, 1, 0, 12}, frame[FRAME_LEN];
    for (size_t i = 0; i < count + 100; i++) {
        uint64_t t0 = now_ns();
        write_full(fd, req, REQ_LEN);
        read_full(fd, frame, FRAME_LEN);
        if (i >= 100)
            lat[i - 100] = now_ns() - t0;
    }
    close(fd);
    if (wait_child(pid))
        return 1;
    qsort(lat, count, sizeof *lat, cmp_u64);
    printf("%s_p50_us %.2f %s_p99_us %.2f\n", label, (double)lat[count / 2] / 1e3, label,
           (double)lat[(size_t)((double)(count - 1) * 0.99)] / 1e3);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "bulk") == 0)
        return bulk(strtoul(argv[2], NULL, 0));
    if (argc == 3 && strcmp(argv[1], "rr") == 0)
        return rr(strtoul(argv[2], NULL, 0), "rr");
    if (argc == 3 && strcmp(argv[1], "rr-busy") == 0) {
        pid_t pids[64];
        int n = spinners_start(pids, 64);
        int rc = rr(strtoul(argv[2], NULL, 0), "rrbusy");
        spinners_stop(pids, n);
        return rc;
    }
    fprintf(stderr, "usage: net_baseline bulk MIB | rr COUNT | rr-busy COUNT\n");
    return 2;
}
