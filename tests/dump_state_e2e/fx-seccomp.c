/* Self-verifying seccomp workload (stasis dump + restore): installs two filters, getppid()
 * -> EPERM then uname() -> EACCES, starts a thread (which inherits both), writes READY to
 * argv[1]; on SIGUSR2 checks in both threads that the filters still act and that
 * /proc/self/status reports filter mode, then writes PASS or FAIL: <reason> to argv[1]. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "fx_verdict.h"

static int deny(long nr, int err) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog p = { sizeof(f) / sizeof(f[0]), f };
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &p);
}

static void check_filters(const char *who) {
    errno = 0;
    long r = syscall(SYS_getppid);
    CHECK(r == -1 && errno == EPERM, "%s: getppid gave %ld errno %d", who, r, errno);
    struct utsname u;
    errno = 0;
    r = syscall(SYS_uname, &u);
    CHECK(r == -1 && errno == EACCES, "%s: uname gave %ld errno %d", who, r, errno);
    CHECK(syscall(SYS_getpid) > 0, "%s: getpid denied", who);
}

static volatile int thread_go, thread_done;
static void *worker(void *a) {
    (void)a;
    while (!thread_go) usleep(1000);
    check_filters("thread");
    thread_done = 1;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *result = argv[1];
    detach_stdio();
    if (deny(SYS_getppid, EPERM) || deny(SYS_uname, EACCES)) {
        FILE *f = fopen(result, "w");
        fputs("FAIL: seccomp setup", f);
        fclose(f);
        return 1;
    }
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    signal(SIGUSR2, on_go);
    FILE *f = fopen(result, "w");
    fputs("READY", f);
    fclose(f);
    while (!go) pause();

    check_filters("main");
    thread_go = 1;
    pthread_join(t, NULL);
    CHECK(thread_done, "thread did not finish");
    char buf[4096] = {0};
    int fd = open("/proc/self/status", O_RDONLY);
    read(fd, buf, sizeof(buf) - 1);
    CHECK(strstr(buf, "Seccomp:\t2\n") != NULL, "not in seccomp filter mode");
    CHECK(strstr(buf, "Seccomp_filters:\t2\n") != NULL, "filter count is not 2");

    return write_verdict(result);
}
