/*
 * test_uffd_eperm.c (issue 9 item 14): a userfaultfd that cannot be opened keeps its real
 * errno (every failure used to come back as -ENOSYS), and EPERM caused by
 * vm.unprivileged_userfaultfd=0 says so, naming the sysctl in the log line.
 *
 * Needs root: sets vm.unprivileged_userfaultfd to 0 (then 1) and runs the destination in a
 * child process as user nobody (uid/gid 65534), for which /dev/userfaultfd (mode 0600
 * root) is unusable. With the sysctl at 0, enable_notify fails with -EPERM and the line
 * names "vm.unprivileged_userfaultfd=0"; at 1, the same child succeeds, which shows the
 * failure was the sysctl's. The sysctl is put back at exit.
 */
#include <grp.h>
#include <sys/wait.h>

#include "harness/fake_vmm.h"
#include "harness/pcr_log.h"

static const char *SYSCTL = "/proc/sys/vm/unprivileged_userfaultfd";
static long sysctl_orig = -1;

static void restore_sysctl(void)
{
    if (sysctl_orig >= 0)
        pcr_write_long(SYSCTL, sysctl_orig);
}

/* In the child, as nobody: returns what enable_notify returned (and checks the log). */
static int child(bool expect_eperm)
{
    if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0)
        pcr_fail("dropping to nobody: %s", strerror(errno));
    vmm v;
    vmm_init(&v, SERVE_NONE);
    vmm_add_block(&v, "ram", BLK_ANON_PRIVATE, 16);
    vmm_create(&v);
    CHECK_EQ(pcr_incoming_init(v.mis, 0), 0);
    pcr_log_reset();
    int rc = pcr_incoming_enable_notify(v.mis);
    if (expect_eperm) {
        CHECK_EQ(rc, -EPERM);
        pcr_log_expect_(1, "vm.unprivileged_userfaultfd=0", "enable_notify", __FILE__, __LINE__);
        LOG_EXPECT_ONE(CHECK(!pcr_incoming_supported_by_host(v.mis)),
                       "vm.unprivileged_userfaultfd=0");
    } else {
        CHECK_EQ(rc, 0);
    }
    CHECK_EQ(pcr_incoming_cleanup(v.mis), 0);
    vmm_destroy(&v);
    return 0;
}

static void run_as_nobody(long sysctl_value)
{
    if (!pcr_write_long(SYSCTL, sysctl_value))
        pcr_fail("cannot write %s", SYSCTL);
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0)
        _exit(child(sysctl_value == 0));
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the child with vm.unprivileged_userfaultfd=%ld failed (status %#x)", sysctl_value,
              status);
}

int main(void)
{
    pcr_test_begin("test_uffd_eperm", 60);
    if (geteuid() != 0)
        pcr_skip("needs root to set %s and drop to nobody", SYSCTL);
    if (pcr_under_valgrind())
        pcr_skip("valgrind does not implement the userfaultfd syscall (ENOSYS), the path tested");
    sysctl_orig = pcr_read_long(SYSCTL);
    if (sysctl_orig < 0)
        pcr_skip("no %s on this kernel", SYSCTL);
    if (access("/dev/userfaultfd", F_OK) != 0)
        printf("no /dev/userfaultfd: only the syscall path is tested\n");
    atexit(restore_sysctl);
    run_as_nobody(0);
    run_as_nobody(1);
    restore_sysctl();
    pcr_test_pass();
    return 0;
}
