/* What the self-verifying C workloads of the end-to-end tests share (fx-unix.c, fx-seccomp.c,
 * fx-kinds.c); common::workload::c_program writes it next to the source it compiles.
 *
 *   go, on_go()         go = 1 once the verify signal (SIGUSR2) arrives
 *   verdict, CHECK()    "PASS" until the first failed check, then "FAIL: <reason>"
 *   detach_stdio()      a session of its own, fds 0-2 on /dev/null
 *   abstract()          a unix address on an abstract name, and its length
 *   readn()             reads n bytes (2 s without data ends it early), returns how many
 *   write_verdict()     the verdict into RESULT (temporary file + rename); the exit status
 */
#ifndef FX_VERDICT_H
#define FX_VERDICT_H

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define FX_UNUSED __attribute__((unused))

static volatile sig_atomic_t go;
static void on_go(int s) { (void)s; go = 1; }

static char verdict[256] = "PASS";
#define CHECK(c, ...) do { if (!(c) && !strcmp(verdict, "PASS")) { \
    snprintf(verdict, sizeof(verdict), "FAIL: " __VA_ARGS__); } } while (0)

static FX_UNUSED void detach_stdio(void) {
    setsid();
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0); dup2(null, 1); dup2(null, 2);
}

static FX_UNUSED socklen_t abstract(struct sockaddr_un *a, const char *name) {
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    size_t n = strlen(name);
    memcpy(a->sun_path + 1, name, n);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

static FX_UNUSED int readn(int fd, char *buf, int n) {
    int got = 0;
    while (got < n) {
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, 2000) <= 0) return got;
        int k = read(fd, buf + got, n - got);
        if (k <= 0) return got;
        got += k;
    }
    return got;
}

static FX_UNUSED int write_verdict(const char *result) {
    char tmpf[512];
    snprintf(tmpf, sizeof(tmpf), "%s.tmp", result);
    FILE *f = fopen(tmpf, "w");
    fputs(verdict, f);
    fclose(f);
    rename(tmpf, result);
    return strcmp(verdict, "PASS") != 0;
}

#endif
