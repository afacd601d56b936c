/* Self-verifying workload for unix sockets (stasis dump + restore): writes READY to argv[1]
 * once set up; on SIGUSR2 checks everything and writes PASS or FAIL: <reason> to argv[1]
 * (temporary file + rename). argv[2] is a directory for the socket files.
 *
 *  sp[0] <-> sp[1]   stream socketpair, "s-0to1" queued on sp[1], "s-1to0" on sp[0]
 *  qp[0] <-> qp[1]   seqpacket socketpair, messages "q1", "q22" queued on qp[1]
 *  dp[0] <-> dp[1]   dgram socketpair, datagrams "d1", "d22", "d333" queued on dp[1]
 *  lst               stream listener bound to DIR/listen.sock, backlog 4 (accepts after restore)
 *  cli <-> srv       connect()/accept() through DIR/conn.sock (listener closed), "c2s"
 *                    queued on srv, "s2c" on cli, then shutdown(cli, SHUT_WR)
 *  abs               seqpacket listener on an abstract name
 *  child process     holds ch[1] of a stream socketpair, "to-child" queued on it; the parent
 *                    keeps ch[0]; on SIGUSR1 the child reads and answers "ok-child"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fx_verdict.h"

static socklen_t path_addr(struct sockaddr_un *a, const char *dir, const char *name) {
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    snprintf(a->sun_path, sizeof(a->sun_path), "%s/%s", dir, name);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(a->sun_path) + 1);
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *result = argv[1], *dir = argv[2];
    detach_stdio();
    char tmp[256];

    int ch[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, ch);
    signal(SIGUSR1, on_go);
    pid_t child = fork();
    if (child == 0) {
        close(ch[0]);
        while (!go) pause();
        char b[16] = {0};
        if (readn(ch[1], b, 8) == 8 && !memcmp(b, "to-child", 8))
            write(ch[1], "ok-child", 8);
        else
            write(ch[1], "bad-chld", 8);
        _exit(0);
    }
    close(ch[1]);
    write(ch[0], "to-child", 8);

    int sp[2], qp[2], dp[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sp);
    write(sp[0], "s-0to1", 6);
    write(sp[1], "s-1to0", 6);
    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, qp);
    write(qp[0], "q1", 2);
    write(qp[0], "q22", 3);
    socketpair(AF_UNIX, SOCK_DGRAM, 0, dp);
    send(dp[0], "d1", 2, 0);
    send(dp[0], "d22", 3, 0);
    send(dp[0], "d333", 4, 0);

    struct sockaddr_un la, ca, aa;
    socklen_t lalen = path_addr(&la, dir, "listen.sock");
    int lst = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(bind(lst, (struct sockaddr *)&la, lalen) == 0, "bind listen.sock");
    chmod(la.sun_path, 0640);
    listen(lst, 4);

    socklen_t calen = path_addr(&ca, dir, "conn.sock");
    int cl = socket(AF_UNIX, SOCK_STREAM, 0);
    bind(cl, (struct sockaddr *)&ca, calen);
    listen(cl, 1);
    int cli = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(connect(cli, (struct sockaddr *)&ca, calen) == 0, "connect conn.sock");
    int srv = accept(cl, NULL, NULL);
    close(cl);
    write(cli, "c2s", 3);
    write(srv, "s2c", 3);
    shutdown(cli, SHUT_WR);

    char aname[64];
    snprintf(aname, sizeof(aname), "stasis-fx-unix-%d", getpid());
    socklen_t aalen = abstract(&aa, aname);
    int abs_l = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    bind(abs_l, (struct sockaddr *)&aa, aalen);
    listen(abs_l, 2);

    signal(SIGUSR2, on_go);
    FILE *f = fopen(result, "w");
    fputs("READY", f);
    fclose(f);
    while (!go) pause();

    memset(tmp, 0, sizeof(tmp));
    CHECK(readn(sp[1], tmp, 6) == 6 && !memcmp(tmp, "s-0to1", 6), "stream pair 0->1 [%s]", tmp);
    CHECK(readn(sp[0], tmp, 6) == 6 && !memcmp(tmp, "s-1to0", 6), "stream pair 1->0");
    write(sp[1], "y", 1);
    CHECK(readn(sp[0], tmp, 1) == 1 && tmp[0] == 'y', "stream pair not connected");

    CHECK(recv(qp[1], tmp, sizeof(tmp), MSG_DONTWAIT) == 2 && !memcmp(tmp, "q1", 2), "seqpacket 1");
    CHECK(recv(qp[1], tmp, sizeof(tmp), MSG_DONTWAIT) == 3 && !memcmp(tmp, "q22", 3), "seqpacket 2");
    int ty = 0; socklen_t tl = sizeof(ty);
    getsockopt(qp[0], SOL_SOCKET, SO_TYPE, &ty, &tl);
    CHECK(ty == SOCK_SEQPACKET, "seqpacket type %d", ty);

    CHECK(recv(dp[1], tmp, sizeof(tmp), MSG_DONTWAIT) == 2, "dgram 1");
    CHECK(recv(dp[1], tmp, sizeof(tmp), MSG_DONTWAIT) == 3 && !memcmp(tmp, "d22", 3), "dgram 2");
    CHECK(recv(dp[1], tmp, sizeof(tmp), MSG_DONTWAIT) == 4 && !memcmp(tmp, "d333", 4), "dgram 3");

    struct stat st;
    CHECK(stat(la.sun_path, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 0777) == 0640,
          "listen.sock file mode %o", (unsigned)st.st_mode);
    int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(connect(c2, (struct sockaddr *)&la, lalen) == 0, "connect to restored listener: %s", strerror(errno));
    int a2 = accept(lst, NULL, NULL);
    CHECK(a2 >= 0, "accept on restored listener: %s", strerror(errno));
    write(c2, "z", 1);
    CHECK(a2 >= 0 && readn(a2, tmp, 1) == 1 && tmp[0] == 'z', "accepted connection dead");

    memset(tmp, 0, sizeof(tmp));
    CHECK(readn(srv, tmp, 3) == 3 && !memcmp(tmp, "c2s", 3), "accepted end queue [%s]", tmp);
    CHECK(read(srv, tmp, 1) == 0, "peer shut down writing: EOF expected");
    CHECK(readn(cli, tmp, 3) == 3 && !memcmp(tmp, "s2c", 3), "client end queue");
    errno = 0;
    signal(SIGPIPE, SIG_IGN);
    CHECK(write(cli, "x", 1) < 0 && errno == EPIPE, "client shutdown(SHUT_WR) lost");
    write(srv, "w", 1);
    CHECK(readn(cli, tmp, 1) == 1 && tmp[0] == 'w', "server to client after restore");

    int a3 = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    CHECK(connect(a3, (struct sockaddr *)&aa, aalen) == 0, "abstract seqpacket listener: %s", strerror(errno));

    kill(child, SIGUSR1);
    memset(tmp, 0, sizeof(tmp));
    CHECK(readn(ch[0], tmp, 8) == 8 && !memcmp(tmp, "ok-child", 8), "child pair [%s]", tmp);
    int wst = 0;
    waitpid(child, &wst, 0);

    return write_verdict(result);
}
