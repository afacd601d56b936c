/* Self-verifying workload for the fd kinds of stasis::files: after setting up it writes
 * READY to argv[1]; on SIGUSR2 it checks every object and writes PASS or FAIL: <reason>
 * to argv[1] (via a temporary file and rename). argv[2] is a directory it watches. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include "fx_verdict.h"

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *result = argv[1], *dir = argv[2];
    detach_stdio();
    char name[64], lname[64];
    snprintf(name, sizeof(name), "fx-kinds-dgram-%d", getpid());
    snprintf(lname, sizeof(lname), "fx-kinds-listen-%d", getpid());

    int efd = eventfd(0, EFD_NONBLOCK);
    uint64_t seven = 7;
    write(efd, &seven, 8);

    int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec its = { { 0, 50000000 }, { 0, 50000000 } };
    timerfd_settime(tfd, 0, &its, NULL);

    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigprocmask(SIG_BLOCK, &m, NULL);
    int sfd = signalfd(-1, &m, SFD_NONBLOCK);

    int pair[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, pair);
    write(pair[0], "pair-data", 9);
    write(pair[1], "back", 4);

    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0x1234 };
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
    ev.data.u64 = 0x99;
    epoll_ctl(ep, EPOLL_CTL_ADD, pair[1], &ev);

    struct sockaddr_un a;
    socklen_t alen = abstract(&a, name);
    int dg = socket(AF_UNIX, SOCK_DGRAM, 0);
    bind(dg, (struct sockaddr *)&a, alen);
    int snd = socket(AF_UNIX, SOCK_DGRAM, 0);
    sendto(snd, "d1", 2, 0, (struct sockaddr *)&a, alen);
    sendto(snd, "d2!", 3, 0, (struct sockaddr *)&a, alen);
    close(snd);

    struct sockaddr_un la;
    socklen_t lalen = abstract(&la, lname);
    int ul = socket(AF_UNIX, SOCK_STREAM, 0);
    bind(ul, (struct sockaddr *)&la, lalen);
    listen(ul, 4);

    int ino = inotify_init1(0);
    int wd = inotify_add_watch(ino, dir, IN_CREATE);

    struct sockaddr_in lo = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t slen = sizeof(lo);
    int tl = socket(AF_INET, SOCK_STREAM, 0);
    bind(tl, (struct sockaddr *)&lo, sizeof(lo));
    listen(tl, 5);
    getsockname(tl, (struct sockaddr *)&lo, &slen);
    int tc = socket(AF_INET, SOCK_STREAM, 0);
    connect(tc, (struct sockaddr *)&lo, sizeof(lo));
    int ts = accept(tl, NULL, NULL);
    write(tc, "tcp-c2s", 7);
    write(ts, "tcp-s2c", 7);
    char tmp[64];
    recv(ts, tmp, 7, MSG_PEEK | MSG_WAITALL);
    recv(tc, tmp, 7, MSG_PEEK | MSG_WAITALL);

    struct sockaddr_in ua = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t ualen = sizeof(ua);
    int us = socket(AF_INET, SOCK_DGRAM, 0);
    bind(us, (struct sockaddr *)&ua, sizeof(ua));
    getsockname(us, (struct sockaddr *)&ua, &ualen);
    int uport = ntohs(ua.sin_port);

    int pm = posix_openpt(O_RDWR | O_NOCTTY);
    grantpt(pm);
    unlockpt(pm);
    int ps = open(ptsname(pm), O_RDWR | O_NOCTTY);
    struct winsize ws = { 40, 120, 0, 0 };
    ioctl(ps, TIOCSWINSZ, &ws);

    signal(SIGUSR2, on_go);
    FILE *f = fopen(result, "w");
    fputs("READY", f);
    fclose(f);
    while (!go) pause();

    /* epoll first: it must report both targets ready. */
    struct epoll_event evs[8];
    int n = epoll_wait(ep, evs, 8, 1000), seen = 0;
    for (int i = 0; i < n; i++) seen |= evs[i].data.u64 == 0x1234 ? 1 : evs[i].data.u64 == 0x99 ? 2 : 4;
    CHECK(seen == 3, "epoll reported %d events, mask %d", n, seen);
    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, efd, NULL) == 0, "epoll item of the eventfd not at its fd number");

    uint64_t v = 0;
    CHECK(read(efd, &v, 8) == 8 && v == 7, "eventfd count %llu", (unsigned long long)v);

    uint64_t ticks = 0;
    CHECK(read(tfd, &ticks, 8) == 8 && ticks >= 1, "timerfd did not fire");

    kill(getpid(), SIGUSR1);
    struct signalfd_siginfo si;
    CHECK(read(sfd, &si, sizeof(si)) == sizeof(si) && si.ssi_signo == SIGUSR1, "signalfd");

    memset(tmp, 0, sizeof(tmp));
    CHECK(readn(pair[1], tmp, 9) == 9 && !memcmp(tmp, "pair-data", 9), "pair data [%s]", tmp);
    CHECK(readn(pair[0], tmp, 4) == 4 && !memcmp(tmp, "back", 4), "pair back data");
    write(pair[0], "x", 1);
    CHECK(readn(pair[1], tmp, 1) == 1 && tmp[0] == 'x', "pair not connected");

    CHECK(recv(dg, tmp, sizeof(tmp), MSG_DONTWAIT) == 2 && !memcmp(tmp, "d1", 2), "dgram 1");
    CHECK(recv(dg, tmp, sizeof(tmp), MSG_DONTWAIT) == 3 && !memcmp(tmp, "d2!", 3), "dgram 2");

    int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(connect(c2, (struct sockaddr *)&la, lalen) == 0, "unix listener: %s", strerror(errno));
    CHECK(accept(ul, NULL, NULL) >= 0, "unix accept");

    char path[512];
    snprintf(path, sizeof(path), "%s/created", dir);
    close(open(path, O_CREAT | O_WRONLY, 0600));
    char ibuf[4096];
    int k = read(ino, ibuf, sizeof(ibuf));
    struct inotify_event *ie = (struct inotify_event *)ibuf;
    CHECK(k >= (int)sizeof(*ie) && ie->wd == wd && (ie->mask & IN_CREATE), "inotify wd %d", k > 0 ? ie->wd : -1);

    memset(tmp, 0, sizeof(tmp));
    CHECK(readn(ts, tmp, 7) == 7 && !memcmp(tmp, "tcp-c2s", 7), "tcp server queue [%s]", tmp);
    CHECK(readn(tc, tmp, 7) == 7 && !memcmp(tmp, "tcp-s2c", 7), "tcp client queue");
    write(tc, "more", 4);
    CHECK(readn(ts, tmp, 4) == 4 && !memcmp(tmp, "more", 4), "tcp connection dead");
    int c3 = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(c3, (struct sockaddr *)&lo, sizeof(lo)) == 0, "tcp listener: %s", strerror(errno));

    ualen = sizeof(ua);
    getsockname(us, (struct sockaddr *)&ua, &ualen);
    CHECK(ntohs(ua.sin_port) == uport, "udp port %d != %d", ntohs(ua.sin_port), uport);
    sendto(us, "u", 1, 0, (struct sockaddr *)&ua, ualen);
    CHECK(readn(us, tmp, 1) == 1, "udp self send");

    struct winsize w2;
    CHECK(ioctl(ps, TIOCGWINSZ, &w2) == 0 && w2.ws_row == 40 && w2.ws_col == 120, "pty winsize");
    write(pm, "hi\n", 3);
    CHECK(readn(ps, tmp, 3) == 3 && !memcmp(tmp, "hi\n", 3), "pty not connected");

    return write_verdict(result);
}
