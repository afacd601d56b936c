/* The workload of tests/unprivileged.rs, run as an ordinary user:
 *
 *   fx-user RESULT plain     memory with a pattern, a second thread counting, a pipe holding
 *                            data, a file open at an offset; writes READY to RESULT and waits;
 *                            on SIGUSR2 (after a dump and a restore by the same user) checks
 *                            all of it and its own uid/gid, writes PASS or FAIL: why
 *   fx-user RESULT seccomp   the same under a seccomp filter (allow everything): dumping it
 *                            needs CAP_SYS_ADMIN, which the user lacks
 */
#define _GNU_SOURCE
#include "fx_verdict.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/prctl.h>

#define MEM (1 << 20)

static volatile unsigned long ticks;

static void *counter(void *arg) {
    (void)arg;
    for (;;) {
        ticks++;
        usleep(1000);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *result = argv[1];
    detach_stdio();
    signal(SIGUSR2, on_go);
    uid_t uid = getuid();
    gid_t gid = getgid();
    if (!strcmp(argv[2], "seccomp")) {
        struct sock_filter allow[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
        struct sock_fprog prog = { 1, allow };
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
            return 3;
    }
    unsigned char *mem = malloc(MEM);
    for (int i = 0; i < MEM; i++) mem[i] = (unsigned char)((i * 7 + 3) ^ (i >> 12));
    int p[2];
    if (pipe(p)) return 4;
    if (write(p[1], "queued", 6) != 6) return 5;
    char path[512];
    snprintf(path, sizeof(path), "%s.data", result);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, "0123456789", 10) != 10 || lseek(fd, 4, SEEK_SET) != 4) return 6;
    /* SIGUSR2 stays blocked but in sigsuspend (no wake-up lost between the check of go
     * and the wait), in both threads (the counting one must not take it). */
    sigset_t usr2, waiting;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &usr2, &waiting);
    sigdelset(&waiting, SIGUSR2);
    pthread_t t;
    pthread_create(&t, NULL, counter, NULL);
    strcpy(verdict, "READY");
    write_verdict(result);
    strcpy(verdict, "PASS");
    while (!go) sigsuspend(&waiting);
    for (int i = 0; i < MEM; i++)
        CHECK(mem[i] == (unsigned char)((i * 7 + 3) ^ (i >> 12)), "memory byte %d", i);
    char buf[16] = {0};
    CHECK(read(p[0], buf, sizeof(buf)) == 6 && !memcmp(buf, "queued", 6), "pipe data '%s'", buf);
    CHECK(lseek(fd, 0, SEEK_CUR) == 4, "file offset");
    CHECK(read(fd, buf, 3) == 3 && !memcmp(buf, "456", 3), "file data");
    CHECK(getuid() == uid && geteuid() == uid && getgid() == gid, "uid %d gid %d", getuid(), getgid());
    unsigned long before = ticks;
    usleep(50000);
    CHECK(ticks != before, "the counting thread stopped");
    return write_verdict(result);
}
