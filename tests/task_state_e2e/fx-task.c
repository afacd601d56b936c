/* Self-verifying workload of tests/task_state_e2e.rs: `fx-task RESULT MODE` sets one kind of
 * task or memory state, writes READY to RESULT and waits; on SIGUSR2 (after a dump and a
 * restore) it checks that state the way its user would and writes PASS or FAIL: <every
 * failed check> to RESULT. Modes:
 *
 *   oom        oom_score_adj 345 (raising needs no privilege)
 *   loginuid   loginuid 4242 (set once by root)
 *   sched      nice 5 in main; threads: SCHED_BATCH nice 3, SCHED_IDLE, SCHED_FIFO 10, SCHED_RR 7
 *   dumpable   PR_SET_DUMPABLE 0
 *   thp        PR_SET_THP_DISABLE 1
 *   madv       regions with MADV_DONTFORK, DONTDUMP, HUGEPAGE, NOHUGEPAGE, WIPEONFORK,
 *              MERGEABLE: VmFlags, content, and what a fork sees (DONTFORK gone, WIPEONFORK 0)
 *   mlock      mlock() of a range: VmFlags lo, VmLck
 *   mlockall   mlockall(MCL_CURRENT|MCL_FUTURE): a mapping made after the restore is locked
 *   mlock-setuid  mlock() as root, RLIMIT_MEMLOCK 0, then uid 65534: still locked
 *   membarrier MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: the barrier works (no EPERM)
 *   cow        a parent and a child share 8 MiB copy-on-write; each wrote its own part; both
 *              check their whole view (the child reports through its exit status)
 *   sigpending blocked pending signals: an RT one private, SIGUSR1 and an RT one shared, with
 *              their siginfo
 *   sigtrap    the same and a pending SIGTRAP (private)
 *   wait-pause | wait-sigsuspend | wait-nanosleep | wait-read | wait-futex
 *              the main thread sits in that syscall (SIGTERM default); the test kills it
 *   wait-sigsuspend-mask | wait-ppoll-mask
 *              waits for SIGUSR2 in that call with a temporary mask blocking everything else,
 *              then pauses with its own mask (nothing blocked): SIGUSR2, then SIGTERM kills it
 *              (single-threaded: the temporary mask must not become the task's own)
 *   stopped    counts in a loop; the test stops it with SIGSTOP before the dump
 *   zombie     two children exit unreaped: one with status 42, one killed by SIGPIPE; each
 *              renamed itself; the parent reaps them on SIGUSR2 and checks their statuses
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_go(int s) { (void)s; go = 1; }

/* Every failed check, appended. */
static char verdict[4096];
#define CHECK(c, ...) do { if (!(c)) { size_t n_ = strlen(verdict); \
    snprintf(verdict + n_, sizeof(verdict) - n_, "%s" , n_ ? "; " : "FAIL: "); n_ = strlen(verdict); \
    snprintf(verdict + n_, sizeof(verdict) - n_, __VA_ARGS__); } } while (0)

static const char *result;

static void put(const char *text) {
    char tmp[512];
    snprintf(tmp, sizeof(tmp), "%s.tmp", result);
    FILE *f = fopen(tmp, "w");
    if (!f) _exit(3);
    fputs(text, f);
    fclose(f);
    rename(tmp, result);
}

static int finish(void) {
    put(verdict[0] ? verdict : "PASS");
    return verdict[0] != 0;
}

static void ready(void) { put("READY"); }

static void wait_go(void) {
    while (!go) pause();
}

static pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

/* ---- oom, dumpable, thp ---- */

static int read_int_file(const char *path) {
    char b[64] = {0};
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -99999;
    int n = read(fd, b, sizeof(b) - 1);
    close(fd);
    return n > 0 ? atoi(b) : -99999;
}

static int mode_oom(void) {
    int fd = open("/proc/self/oom_score_adj", O_WRONLY);
    if (fd < 0 || write(fd, "345", 3) != 3) { CHECK(0, "set oom_score_adj: %s", strerror(errno)); return finish(); }
    close(fd);
    ready(); wait_go();
    int v = read_int_file("/proc/self/oom_score_adj");
    CHECK(v == 345, "oom_score_adj is %d, not 345", v);
    return finish();
}

static int mode_loginuid(void) {
    int fd = open("/proc/self/loginuid", O_WRONLY);
    if (fd < 0 || write(fd, "4242", 4) != 4) { CHECK(0, "set loginuid: %s", strerror(errno)); return finish(); }
    close(fd);
    ready(); wait_go();
    int v = read_int_file("/proc/self/loginuid");
    CHECK(v == 4242, "loginuid is %d, not 4242", v);
    return finish();
}

static int mode_dumpable(void) {
    prctl(PR_SET_DUMPABLE, 0);
    ready(); wait_go();
    int d = prctl(PR_GET_DUMPABLE);
    CHECK(d == 0, "dumpable is %d, not 0", d);
    return finish();
}

static int mode_thp(void) {
    if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)) CHECK(0, "PR_SET_THP_DISABLE: %s", strerror(errno));
    ready(); wait_go();
    int d = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
    CHECK(d == 1, "thp_disable is %d, not 1", d);
    return finish();
}

/* ---- sched ---- */

struct want { int policy, prio, nice; pid_t tid; volatile int set; };
static struct want wants[5] = {
    {SCHED_OTHER, 0, 5, 0, 0},
    {SCHED_BATCH, 0, 3, 0, 0},
    {SCHED_IDLE, 0, 0, 0, 0},
    {SCHED_FIFO, 10, 0, 0, 0},
    {SCHED_RR, 7, 0, 0, 0},
};

static void apply(struct want *w) {
    struct sched_param p = {w->prio};
    w->tid = gettid_();
    if (sched_setscheduler(0, w->policy, &p)) CHECK(0, "sched_setscheduler %d: %s", w->policy, strerror(errno));
    if (w->nice && setpriority(PRIO_PROCESS, 0, w->nice)) CHECK(0, "setpriority: %s", strerror(errno));
    w->set = 1;
}

static void *sched_thread(void *a) {
    apply(a);
    for (;;) pause();
    return NULL;
}

static int mode_sched(void) {
    pthread_t t;
    for (int i = 1; i < 5; i++) pthread_create(&t, NULL, sched_thread, &wants[i]);
    apply(&wants[0]);
    for (int i = 1; i < 5; i++) while (!wants[i].set) usleep(1000);
    ready(); wait_go();
    for (int i = 0; i < 5; i++) {
        struct want *w = &wants[i];
        int pol = sched_getscheduler(w->tid);
        struct sched_param p = {0};
        sched_getparam(w->tid, &p);
        errno = 0;
        int nice = getpriority(PRIO_PROCESS, w->tid);
        CHECK(pol == w->policy, "thread %d: policy %d, not %d", i, pol, w->policy);
        CHECK(p.sched_priority == w->prio, "thread %d: priority %d, not %d", i, p.sched_priority, w->prio);
        CHECK(nice == w->nice, "thread %d: nice %d, not %d", i, nice, w->nice);
    }
    return finish();
}

/* ---- madvise ---- */

#define REG (2u << 20)
struct madv_region { int advice; const char *flag; char *p; int ok; };
static struct madv_region regs[] = {
    {MADV_DONTFORK, "dc", 0, 0},  {MADV_DONTDUMP, "dd", 0, 0},  {MADV_HUGEPAGE, "hg", 0, 0},
    {MADV_NOHUGEPAGE, "nh", 0, 0}, {MADV_WIPEONFORK, "wf", 0, 0}, {MADV_MERGEABLE, "mg", 0, 0},
};
#define NREGS (int)(sizeof(regs) / sizeof(regs[0]))

/* The VmFlags line of the mapping at `addr` in /proc/self/smaps ("" if none). */
static void vmflags(void *addr, char *out, size_t n) {
    static char buf[1 << 20];
    out[0] = 0;
    int fd = open("/proc/self/smaps", O_RDONLY);
    size_t len = 0;
    ssize_t r;
    while (fd >= 0 && (r = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0) len += r;
    if (fd >= 0) close(fd);
    buf[len] = 0;
    int inside = 0;
    for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n")) {
        unsigned long s, e;
        if (sscanf(l, "%lx-%lx ", &s, &e) == 2) {
            inside = (uintptr_t)addr >= s && (uintptr_t)addr < e;
        } else if (inside && !strncmp(l, "VmFlags:", 8)) {
            snprintf(out, n, "%s ", l + 8);
            return;
        }
    }
}

static int has_flag(void *addr, const char *f) {
    char line[512], want[8];
    vmflags(addr, line, sizeof(line));
    snprintf(want, sizeof(want), " %s ", f);
    return strstr(line, want) != NULL;
}

static unsigned char pat(int r, size_t i) { return (unsigned char)(i * 13 + r * 7 + 1); }

static int mode_madv(void) {
    for (int r = 0; r < NREGS; r++) {
        /* 2 MiB aligned so a huge page could back the HUGEPAGE one. */
        char *m = mmap(NULL, 2 * REG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        char *p = (char *)(((uintptr_t)m + REG - 1) & ~(uintptr_t)(REG - 1));
        regs[r].p = p;
        regs[r].ok = madvise(p, REG, regs[r].advice) == 0;
        CHECK(regs[r].ok || regs[r].advice == MADV_MERGEABLE, "madvise(%s): %s", regs[r].flag, strerror(errno));
        for (size_t i = 0; i < REG; i += 512) p[i] = pat(r, i);
        /* Separate it from its neighbours (same flags would merge them). */
        if (p > m) munmap(m, p - m);
        munmap(p + REG, m + 2 * REG - (p + REG));
        CHECK(!regs[r].ok || has_flag(p, regs[r].flag), "before the dump: %s not in VmFlags", regs[r].flag);
    }
    if (verdict[0]) return finish();
    ready(); wait_go();
    for (int r = 0; r < NREGS; r++) {
        if (!regs[r].ok) continue;
        char line[512];
        vmflags(regs[r].p, line, sizeof(line));
        CHECK(has_flag(regs[r].p, regs[r].flag), "%s lost, VmFlags:%s", regs[r].flag, line);
        size_t bad = 0;
        for (size_t i = 0; i < REG; i += 512) bad += regs[r].p[i] != (char)pat(r, i);
        CHECK(!bad, "%s region: %zu bytes changed", regs[r].flag, bad);
    }
    pid_t c = fork();
    if (c == 0) {
        int code = 0;
        for (int r = 0; r < NREGS; r++) {
            if (regs[r].advice == MADV_DONTFORK && regs[r].ok) {
                unsigned char v;
                if (mincore(regs[r].p, 4096, &v) == 0) code |= 1; /* mapped: DONTFORK lost */
            }
            if (regs[r].advice == MADV_WIPEONFORK && regs[r].ok) {
                for (size_t i = 0; i < REG; i += 512) if (regs[r].p[i]) { code |= 2; break; }
            }
        }
        _exit(code);
    }
    int st = 0;
    waitpid(c, &st, 0);
    CHECK(WIFEXITED(st) && !(WEXITSTATUS(st) & 1), "a fork still maps the MADV_DONTFORK range");
    CHECK(WIFEXITED(st) && !(WEXITSTATUS(st) & 2), "a fork sees MADV_WIPEONFORK memory not wiped");
    return finish();
}

/* ---- mlock ---- */

static int vmlck_kb(void) {
    char b[8192] = {0};
    int fd = open("/proc/self/status", O_RDONLY);
    int n = read(fd, b, sizeof(b) - 1);
    close(fd);
    if (n <= 0) return -1;
    char *l = strstr(b, "VmLck:");
    return l ? atoi(l + 6) : -1;
}

static int mode_mlock(int setuid_too) {
    size_t len = 64 << 10;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(p, 0x5a, len);
    if (mlock(p, len)) { CHECK(0, "mlock: %s", strerror(errno)); return finish(); }
    int before = vmlck_kb();
    if (setuid_too) {
        struct rlimit rl = {0, 0};
        if (setrlimit(RLIMIT_MEMLOCK, &rl)) CHECK(0, "RLIMIT_MEMLOCK: %s", strerror(errno));
        if (setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534))
            CHECK(0, "setresuid: %s", strerror(errno));
        /* Unprivileged with a zero limit: mlock is refused now. */
        CHECK(mlock(p, 4096) != 0, "mlock as nobody with RLIMIT_MEMLOCK 0 worked");
    }
    if (verdict[0]) return finish();
    ready(); wait_go();
    char line[512];
    vmflags(p, line, sizeof(line));
    CHECK(has_flag(p, "lo"), "range not locked, VmFlags:%s", line);
    int after = vmlck_kb();
    CHECK(after == before, "VmLck %d kB, was %d kB", after, before);
    for (size_t i = 0; i < len; i++) if (p[i] != 0x5a) { CHECK(0, "content changed at %zu", i); break; }
    if (setuid_too) CHECK(getuid() == 65534 && geteuid() == 65534, "uid %d/%d", getuid(), geteuid());
    return finish();
}

static int mode_mlockall(void) {
    if (mlockall(MCL_CURRENT | MCL_FUTURE)) { CHECK(0, "mlockall: %s", strerror(errno)); return finish(); }
    char *p = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(has_flag(p, "lo"), "before the dump: a new mapping is not locked");
    int before = vmlck_kb();
    ready(); wait_go();
    CHECK(has_flag(p, "lo"), "an old mapping is not locked");
    char *q = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(has_flag(q, "lo"), "a mapping made after the restore is not locked (MCL_FUTURE lost)");
    munmap(q, 1 << 16);
    int after = vmlck_kb();
    CHECK(after >= before - 16, "VmLck %d kB, was %d kB", after, before);
    return finish();
}

/* ---- membarrier ---- */

static long membarrier(int cmd, unsigned flags) { return syscall(SYS_membarrier, cmd, flags, 0); }

static int mode_membarrier(void) {
    if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0)) {
        CHECK(0, "register: %s", strerror(errno));
        return finish();
    }
    CHECK(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0) == 0, "barrier before the dump: %s", strerror(errno));
    ready(); wait_go();
    errno = 0;
    long r = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0);
    CHECK(r == 0, "MEMBARRIER_CMD_PRIVATE_EXPEDITED gave %ld (%s): registration lost", r, strerror(errno));
    return finish();
}

/* ---- copy-on-write ---- */

#define COW (8u << 20)
static unsigned char cowpat(size_t i, int who) {
    /* who 0: original, 1: parent's writes (first quarter), 2: child's (second half). */
    return (unsigned char)((i >> 12) * 31 + (i & 0xfff) + who * 101);
}

static int check_cow(const unsigned char *p, int me) {
    size_t bad = 0;
    for (size_t i = 0; i < COW; i += 64) {
        int who = 0;
        if (me == 1 && i < COW / 4) who = 1;
        if (me == 2 && i >= COW / 2) who = 2;
        bad += p[i] != cowpat(i, who);
    }
    return (int)bad;
}

static int mode_cow(void) {
    unsigned char *p = mmap(NULL, COW, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < COW; i++) p[i] = cowpat(i, 0);
    int sync_[2];
    if (pipe(sync_)) return 2;
    pid_t c = fork();
    if (c == 0) {
        for (size_t i = COW / 2; i < COW; i++) p[i] = cowpat(i, 2);
        (void)write(sync_[1], "c", 1);
        /* Waits for the parent's word: a byte after the restore. */
        while (!go) pause();
        _exit(check_cow(p, 2) ? 1 : 0);
    }
    signal(SIGUSR2, on_go);
    char b;
    if (read(sync_[0], &b, 1) != 1) return 2;
    for (size_t i = 0; i < COW / 4; i++) p[i] = cowpat(i, 1);
    char txt[64];
    snprintf(txt, sizeof(txt), "READY %d", c);
    put(txt);
    wait_go();
    int bad = check_cow(p, 1);
    CHECK(!bad, "parent: %d checked bytes differ", bad);
    kill(c, SIGUSR2);
    int st = 0;
    waitpid(c, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: its view differs (status 0x%x)", st);
    return finish();
}

/* ---- pending signals ---- */

static void pending_lines(char *out, size_t n) {
    char b[8192] = {0};
    int fd = open("/proc/thread-self/status", O_RDONLY);
    int r = read(fd, b, sizeof(b) - 1);
    close(fd);
    out[0] = 0;
    if (r <= 0) return;
    for (char *l = strtok(b, "\n"); l; l = strtok(NULL, "\n"))
        if (!strncmp(l, "SigPnd:", 7) || !strncmp(l, "ShdPnd:", 7) || !strncmp(l, "SigBlk:", 7)) {
            strncat(out, l, n - strlen(out) - 2);
            strcat(out, " ");
        }
}

static int mode_sigpending(int trap) {
    int rt_p = SIGRTMIN + 3, rt_s = SIGRTMIN + 2;
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGTRAP); sigaddset(&s, SIGUSR1); sigaddset(&s, rt_p); sigaddset(&s, rt_s);
    sigprocmask(SIG_BLOCK, &s, NULL);
    pid_t me = getpid(), tid = gettid_();
    siginfo_t si;
    if (trap) {
        /* Queued with a siginfo of its own, to this thread. */
        memset(&si, 0, sizeof(si));
        si.si_signo = SIGTRAP; si.si_code = SI_QUEUE; si.si_pid = me; si.si_uid = getuid();
        si.si_value.sival_int = 5;
        syscall(SYS_rt_tgsigqueueinfo, me, tid, SIGTRAP, &si);
    }
    kill(me, SIGUSR1);
    union sigval v = {.sival_int = 4242};
    sigqueue(me, rt_s, v);
    memset(&si, 0, sizeof(si));
    si.si_signo = rt_p; si.si_code = SI_QUEUE; si.si_pid = me; si.si_uid = getuid();
    si.si_value.sival_int = 77;
    syscall(SYS_rt_tgsigqueueinfo, me, tid, rt_p, &si);
    char before[512], after[512];
    pending_lines(before, sizeof(before));
    ready(); wait_go();
    pending_lines(after, sizeof(after));
    CHECK(!strcmp(before, after), "pending/blocked changed: before [%s] after [%s]", before, after);
    struct timespec zero = {0, 0};
    struct { int sig, code, val; } want[] = {
        {SIGTRAP, SI_QUEUE, 5}, {SIGUSR1, SI_USER, 0}, {rt_s, SI_QUEUE, 4242}, {rt_p, SI_QUEUE, 77},
    };
    for (int i = trap ? 0 : 1; i < 4; i++) {
        sigset_t one;
        sigemptyset(&one); sigaddset(&one, want[i].sig);
        memset(&si, 0, sizeof(si));
        int r = sigtimedwait(&one, &si, &zero);
        CHECK(r == want[i].sig, "signal %d not pending (%s)", want[i].sig, r < 0 ? strerror(errno) : "?");
        if (r != want[i].sig) continue;
        CHECK(si.si_code == want[i].code, "signal %d: si_code %d, not %d", want[i].sig, si.si_code, want[i].code);
        CHECK(si.si_pid == me, "signal %d: si_pid %d, not %d", want[i].sig, si.si_pid, me);
        if (want[i].code == SI_QUEUE)
            CHECK(si.si_value.sival_int == want[i].val, "signal %d: value %d, not %d", want[i].sig, si.si_value.sival_int, want[i].val);
    }
    sigset_t left;
    sigpending(&left);
    for (int sig = 1; sig < 65; sig++) CHECK(!sigismember(&left, sig), "signal %d pending too", sig);
    return finish();
}

/* ---- blocked in a syscall, SIGTERM at its default ---- */

static void *spinner(void *a) { (void)a; for (;;) pause(); return NULL; }

static int mode_wait(const char *how) {
    pthread_t t;
    /* Single-threaded with a temporary mask: no other thread may take the SIGTERM. */
    if (!strstr(how, "-mask")) pthread_create(&t, NULL, spinner, NULL);
    signal(SIGTERM, SIG_DFL);
    ready();
    if (!strcmp(how, "pause")) for (;;) pause();
    if (!strcmp(how, "sigsuspend")) { sigset_t none; sigemptyset(&none); sigaddset(&none, SIGUSR2); for (;;) sigsuspend(&none); }
    if (!strcmp(how, "nanosleep")) for (;;) { struct timespec ts = {3600, 0}; nanosleep(&ts, NULL); }
    if (!strcmp(how, "read")) { int p[2]; if (pipe(p)) return 2; char b; for (;;) (void)read(p[0], &b, 1); }
    /* A temporary mask that blocks SIGTERM while waiting for SIGUSR2; after that the
     * task's own mask (nothing blocked) is back and it pauses: SIGTERM must kill it. */
    sigset_t all_but_usr2;
    sigfillset(&all_but_usr2);
    sigdelset(&all_but_usr2, SIGUSR2);
    if (!strcmp(how, "sigsuspend-mask")) { while (!go) sigsuspend(&all_but_usr2); for (;;) pause(); }
    if (!strcmp(how, "ppoll-mask")) { while (!go) ppoll(NULL, 0, NULL, &all_but_usr2); for (;;) pause(); }
    if (!strcmp(how, "futex")) { static int f; for (;;) syscall(SYS_futex, &f, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0); }
    return 2;
}

/* ---- stopped ---- */

static int mode_stopped(void) {
    pthread_t t;
    pthread_create(&t, NULL, spinner, NULL);
    ready();
    volatile unsigned long n = 0;
    while (!go) { n++; usleep(1000); }
    return finish();
}

/* ---- zombies ---- */

static int mode_zombie(void) {
    pid_t a = fork();
    if (a == 0) { prctl(PR_SET_NAME, "fx-zombie-a"); _exit(42); }
    pid_t b = fork();
    if (b == 0) { prctl(PR_SET_NAME, "fx-zombie-b"); signal(SIGPIPE, SIG_DFL); raise(SIGPIPE); _exit(1); }
    /* Wait until both are zombies (without reaping them). */
    for (int i = 0; i < 5000; i++) {
        siginfo_t si; memset(&si, 0, sizeof(si));
        int za = !waitid(P_PID, a, &si, WEXITED | WNOHANG | WNOWAIT) && si.si_pid == a;
        memset(&si, 0, sizeof(si));
        int zb = !waitid(P_PID, b, &si, WEXITED | WNOHANG | WNOWAIT) && si.si_pid == b;
        if (za && zb) break;
        usleep(1000);
    }
    char txt[64];
    snprintf(txt, sizeof(txt), "READY %d %d", a, b);
    put(txt);
    wait_go();
    int st = 0;
    CHECK(waitpid(a, &st, WNOHANG) == a, "zombie %d is not our child (%s)", a, strerror(errno));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 42, "zombie %d: status 0x%x, not exit 42", a, st);
    st = 0;
    CHECK(waitpid(b, &st, WNOHANG) == b, "zombie %d is not our child (%s)", b, strerror(errno));
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGPIPE, "zombie %d: status 0x%x, not killed by SIGPIPE", b, st);
    return finish();
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    result = argv[1];
    const char *mode = argv[2];
    setsid();
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0); dup2(null, 1); dup2(null, 2);
    signal(SIGUSR2, on_go);
    if (!strcmp(mode, "oom")) return mode_oom();
    if (!strcmp(mode, "sched")) return mode_sched();
    if (!strcmp(mode, "dumpable")) return mode_dumpable();
    if (!strcmp(mode, "loginuid")) return mode_loginuid();
    if (!strcmp(mode, "thp")) return mode_thp();
    if (!strcmp(mode, "madv")) return mode_madv();
    if (!strcmp(mode, "mlock")) return mode_mlock(0);
    if (!strcmp(mode, "mlock-setuid")) return mode_mlock(1);
    if (!strcmp(mode, "mlockall")) return mode_mlockall();
    if (!strcmp(mode, "membarrier")) return mode_membarrier();
    if (!strcmp(mode, "cow")) return mode_cow();
    if (!strcmp(mode, "sigpending")) return mode_sigpending(0);
    if (!strcmp(mode, "sigtrap")) return mode_sigpending(1);
    if (!strncmp(mode, "wait-", 5)) return mode_wait(mode + 5);
    if (!strcmp(mode, "stopped")) return mode_stopped();
    if (!strcmp(mode, "zombie")) return mode_zombie();
    return 2;
}
