/* Self-verifying terminal workload: after setting up it writes READY to argv[1]; on
 * SIGUSR2 it checks its terminals and writes PASS or FAIL: <reason> to argv[1].
 *
 *   fx-tty RESULT pair     a pty pair in raw mode with changed termios (VINTR, VMIN),
 *                          window size and exclusive mode, data queued both ways; a second
 *                          pair in packet mode, its master locked
 *   fx-tty RESULT session  a session leader whose controlling terminal is a pty slave, a
 *                          child in its own process group, that group in the foreground
 *   fx-tty RESULT devtty   session, and the leader holds a descriptor of /dev/tty
 *   fx-tty RESULT ext PATH a terminal opened by path (one of the test's ptys, outside the
 *                          tree); checked: still a terminal, "ext-ok" written to it
 *   fx-tty RESULT MODE criu-limits
 *                          the same without checking what CRIU 4.2's restore does not
 *                          restore: exclusive mode (dumped, never set again), and the
 *                          terminal of the session's other members (forked before the leader
 *                          takes the terminal, they have none)
 *
 * The child (session modes) checks its side when the leader passes SIGUSR2 on, and writes
 * its verdict to RESULT.child. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "fx_verdict.h"

/* Skip the checks of what CRIU 4.2 does not restore (see the top). */
static int criu_limits;

static const char TO_SLAVE[] = "to-slave\001\n";
static const char TO_MASTER[] = "to-master\r\n";

static int open_pair(int *slave, int slave_flags) {
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    grantpt(m);
    unlockpt(m);
    *slave = open(ptsname(m), O_RDWR | slave_flags);
    return m;
}

/* Nothing more to read within 200 ms. */
static int quiet(int fd) {
    struct pollfd p = { fd, POLLIN, 0 };
    return poll(&p, 1, 200) == 0;
}

static void sleep_ms(int ms) {
    struct timespec ts = { 0, ms * 1000000L };
    nanosleep(&ts, NULL);
}

static int pair(const char *result) {
    int ps, p2s;
    int pm = open_pair(&ps, O_NOCTTY);
    int p2m = open_pair(&p2s, O_NOCTTY);
    int idx = -1, idx2 = -1;
    ioctl(pm, TIOCGPTN, &idx);
    ioctl(p2m, TIOCGPTN, &idx2);

    struct termios t;
    tcgetattr(ps, &t);
    cfmakeraw(&t);
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    t.c_cc[VINTR] = 7;
    tcsetattr(ps, TCSANOW, &t);
    struct termios want;
    tcgetattr(ps, &want);
    struct winsize ws = { 33, 77, 640, 480 };
    ioctl(ps, TIOCSWINSZ, &ws);
    ioctl(ps, TIOCEXCL);
    write(pm, TO_SLAVE, strlen(TO_SLAVE));
    write(ps, TO_MASTER, strlen(TO_MASTER));

    int one = 1;
    ioctl(p2m, TIOCPKT, &one);
    ioctl(p2m, TIOCSPTLCK, &one);

    signal(SIGUSR2, on_go);
    FILE *f = fopen(result, "w");
    fputs("READY", f);
    fclose(f);
    while (!go) pause();

    struct termios got;
    CHECK(tcgetattr(ps, &got) == 0, "tcgetattr: %s", strerror(errno));
    CHECK(got.c_iflag == want.c_iflag && got.c_oflag == want.c_oflag &&
          got.c_cflag == want.c_cflag && got.c_lflag == want.c_lflag,
          "termios flags %x/%x/%x/%x", got.c_iflag, got.c_oflag, got.c_cflag, got.c_lflag);
    CHECK(!memcmp(got.c_cc, want.c_cc, NCCS), "termios c_cc (VINTR %d VMIN %d)", got.c_cc[VINTR],
          got.c_cc[VMIN]);
    struct winsize w2 = { 0 };
    CHECK(ioctl(ps, TIOCGWINSZ, &w2) == 0 && w2.ws_row == 33 && w2.ws_col == 77 &&
          w2.ws_xpixel == 640 && w2.ws_ypixel == 480, "winsize %dx%d", w2.ws_row, w2.ws_col);
    int v = -1;
    CHECK(criu_limits || (ioctl(ps, TIOCGEXCL, &v) == 0 && v == 1), "exclusive mode %d", v);
    int i2 = -1;
    CHECK(ioctl(pm, TIOCGPTN, &i2) == 0 && i2 == idx, "pty index %d != %d", i2, idx);
    CHECK(ioctl(p2m, TIOCGPTN, &i2) == 0 && i2 == idx2, "pty index %d != %d", i2, idx2);

    char buf[64] = { 0 };
    int n = readn(ps, buf, strlen(TO_SLAVE));
    CHECK(n == (int)strlen(TO_SLAVE) && !memcmp(buf, TO_SLAVE, n), "slave's queue: %d [%.*s]", n,
          n, buf);
    CHECK(quiet(ps), "more than the queued data on the slave");
    memset(buf, 0, sizeof(buf));
    n = readn(pm, buf, strlen(TO_MASTER));
    CHECK(n == (int)strlen(TO_MASTER) && !memcmp(buf, TO_MASTER, n), "master's queue: %d [%.*s]",
          n, n, buf);
    CHECK(quiet(pm), "more than the queued data on the master");
    write(pm, "x", 1);
    CHECK(readn(ps, buf, 1) == 1 && buf[0] == 'x', "pair not connected (master to slave)");
    write(ps, "y", 1);
    CHECK(readn(pm, buf, 1) == 1 && buf[0] == 'y', "pair not connected (slave to master)");

    v = -1;
    CHECK(ioctl(p2m, TIOCGPKT, &v) == 0 && v == 1, "packet mode %d", v);
    v = -1;
    CHECK(ioctl(p2m, TIOCGPTLCK, &v) == 0 && v == 1, "lock %d", v);
    write(p2s, "z", 1);
    memset(buf, 0, sizeof(buf));
    struct pollfd p = { p2m, POLLIN, 0 };
    n = poll(&p, 1, 2000) == 1 ? read(p2m, buf, sizeof(buf)) : -1;
    CHECK(n == 2 && buf[0] == TIOCPKT_DATA && buf[1] == 'z', "packet read %d", n);
    return write_verdict(result);
}

static int child_side(const char *result) {
    char path[512];
    snprintf(path, sizeof(path), "%s.child", result);
    while (!go) pause();
    pid_t me = getpid(), leader = getppid();
    CHECK(getsid(0) == leader, "child: session %d, not %d", getsid(0), leader);
    CHECK(getpgrp() == me, "child: group %d, not its own", getpgrp());
    if (criu_limits) return write_verdict(path);
    int tty = open("/dev/tty", O_RDWR | O_NOCTTY);
    CHECK(tty >= 0, "child: no controlling terminal: %s", strerror(errno));
    pid_t fg = tcgetpgrp(tty), sid = -1;
    CHECK(fg == me, "child: foreground group %d, not its own %d", fg, me);
    CHECK(ioctl(tty, TIOCGSID, &sid) == 0 && sid == leader, "child: terminal's session %d", sid);
    return write_verdict(path);
}

static int session(const char *result, int devtty) {
    int ps;
    int pm = open_pair(&ps, 0);
    ioctl(ps, TIOCSCTTY, 0);
    int dt = devtty ? open("/dev/tty", O_RDWR) : -1;
    signal(SIGUSR2, on_go);
    pid_t child = fork();
    if (child == 0) {
        setpgid(0, 0);
        return child_side(result);
    }
    setpgid(child, child);
    while (getpgid(child) != child) sleep_ms(10);
    tcsetpgrp(ps, child);

    FILE *f = fopen(result, "w");
    fputs("READY", f);
    fclose(f);
    while (!go) pause();

    pid_t me = getpid(), sid = -1;
    CHECK(getsid(0) == me, "leader: session %d", getsid(0));
    CHECK(ioctl(ps, TIOCGSID, &sid) == 0 && sid == me,
          "leader: the pty is not its session's terminal: %d %s", sid, strerror(errno));
    CHECK(tcgetpgrp(ps) == child, "leader: foreground group %d, not %d", tcgetpgrp(ps), child);
    int tty = open("/dev/tty", O_RDWR | O_NOCTTY);
    CHECK(tty >= 0, "leader: no controlling terminal: %s", strerror(errno));
    struct winsize ws = { 11, 22, 0, 0 }, w2 = { 0 };
    ioctl(pm, TIOCSWINSZ, &ws);
    CHECK(ioctl(tty, TIOCGWINSZ, &w2) == 0 && w2.ws_row == 11 && w2.ws_col == 22,
          "leader: /dev/tty is not the pty (%d rows)", w2.ws_row);
    char buf[16] = { 0 };
    write(ps, "q", 1);
    CHECK(readn(pm, buf, 1) == 1 && buf[0] == 'q', "leader: pair not connected");
    if (devtty) {
        struct stat st;
        CHECK(fstat(dt, &st) == 0 && S_ISCHR(st.st_mode) && major(st.st_rdev) == 5 &&
              minor(st.st_rdev) == 0, "leader: the /dev/tty descriptor is not /dev/tty");
        memset(&w2, 0, sizeof(w2));
        CHECK(ioctl(dt, TIOCGWINSZ, &w2) == 0 && w2.ws_row == 11 && w2.ws_col == 22,
              "leader: held /dev/tty is not the pty (%d rows)", w2.ws_row);
        write(dt, "via-tty", 7);
        memset(buf, 0, sizeof(buf));
        CHECK(readn(pm, buf, 7) == 7 && !memcmp(buf, "via-tty", 7), "leader: /dev/tty write");
    }

    kill(child, SIGUSR2);
    char path[512], cv[256] = { 0 };
    snprintf(path, sizeof(path), "%s.child", result);
    for (int i = 0; i < 500 && access(path, F_OK); i++) sleep_ms(10);
    FILE *c = fopen(path, "r");
    if (c) {
        fgets(cv, sizeof(cv), c);
        fclose(c);
    }
    CHECK(!strcmp(cv, "PASS"), "%s", cv[0] ? cv : "child: no verdict");
    return write_verdict(result);
}

static int ext(const char *result, const char *path) {
    int fd = open(path, O_RDWR | O_NOCTTY);
    signal(SIGUSR2, on_go);
    FILE *f = fopen(result, "w");
    fputs(fd >= 0 ? "READY" : "cannot open the terminal", f);
    fclose(f);
    while (!go) pause();
    CHECK(isatty(fd), "not a terminal any more");
    CHECK(write(fd, "ext-ok", 6) == 6, "write: %s", strerror(errno));
    return write_verdict(result);
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    detach_stdio();
    criu_limits = argc > 3 && !strcmp(argv[3], "criu-limits");
    if (!strcmp(argv[2], "pair")) return pair(argv[1]);
    if (!strcmp(argv[2], "session")) return session(argv[1], 0);
    if (!strcmp(argv[2], "devtty")) return session(argv[1], 1);
    if (!strcmp(argv[2], "ext") && argc > 3) return ext(argv[1], argv[3]);

    return 2;
}
