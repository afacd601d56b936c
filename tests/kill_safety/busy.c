/* The target of the kill-safety tests: a multi-threaded program that checks itself.
 * usage: busy NTHREADS MEM_MIB PROGRESS_FILE
 * Fills MEM_MIB MiB (byte i = (i * 7 + 3) ^ (i >> 12)), blocks SIGWINCH in every thread,
 * prints "ready PID" and runs:
 *   main thread   every ~1 ms: poll on a pipe (1 ms timeout), checks 64 KiB of MEM, counts,
 *                 writes the progress file
 *   thread k % 3 == 1: SSE arithmetic on a value kept in a register (its FPU state must
 *                 survive), counts
 *   thread k % 3 == 2: nanosleep 1 ms (EINTR is fine), checks its stack canary, counts
 *   thread k % 3 == 0: blocking read on a pipe, woken by the main thread every 2 ms (one
 *                 byte), counts
 * Every thread checks that its blocked mask is still exactly {SIGWINCH}.
 * Progress file: "bad=B c0 c1 ... c(N-1)\n" rewritten in place; B != 0 names the first
 * failed check (1 memory, 2 FPU, 3 stack, 4 mask, 5 read). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MAXT 64
static volatile unsigned long counts[MAXT];
static volatile int bad;
static unsigned char *mem;
static size_t len;
static int wake[2], idle[2];

static void fail(int code) {
    if (!bad) bad = code;
}

static void check_mask(void) {
    sigset_t cur, want;
    pthread_sigmask(SIG_SETMASK, NULL, &cur);
    sigemptyset(&want);
    sigaddset(&want, SIGWINCH);
    for (int s = 1; s < 64; s++)
        if (s != 32 && s != 33 && sigismember(&cur, s) != sigismember(&want, s)) fail(4);
}

static void *fpu(void *arg) {
    long k = (long)arg;
    double a = 1.0 + k, want = (1.0 + k) * 3.0;
    for (;;) {
        __asm__ volatile("" : "+x"(a));
        double b = a * 3.0;
        __asm__ volatile("" : "+x"(b));
        if (b != want) fail(2);
        if ((counts[k]++ & 0xffff) == 0) check_mask();
    }
    return 0;
}

static void *sleeper(void *arg) {
    long k = (long)arg;
    volatile unsigned long canary = 0x5a5a1234u + k;
    struct timespec ts = {0, 1000000};
    for (;;) {
        nanosleep(&ts, 0);
        if (canary != 0x5a5a1234u + k) fail(3);
        check_mask();
        counts[k]++;
    }
    return 0;
}

static void *reader(void *arg) {
    long k = (long)arg;
    char c;
    for (;;) {
        ssize_t n = read(wake[0], &c, 1);
        if (n != 1 && !(n < 0 && errno == EINTR)) fail(5);
        check_mask();
        counts[k]++;
    }
    return 0;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 4;
    len = (size_t)(argc > 2 ? atoi(argv[2]) : 16) << 20;
    int fd = open(argc > 3 ? argv[3] : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (n > MAXT) n = MAXT;
    if (n < 1) n = 1;
    mem = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return 1;
    for (size_t i = 0; i < len; i++) mem[i] = (unsigned char)((i * 7 + 3) ^ (i >> 12));
    if (pipe(wake) || pipe(idle)) return 1;
    fcntl(wake[1], F_SETFL, O_NONBLOCK);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGWINCH);
    pthread_sigmask(SIG_BLOCK, &set, 0);
    for (long k = 1; k < n; k++) {
        pthread_t t;
        void *(*fn)(void *) = k % 3 == 1 ? fpu : k % 3 == 2 ? sleeper : reader;
        pthread_create(&t, 0, fn, (void *)k);
    }
    printf("ready %d\n", getpid());
    fflush(stdout);
    size_t at = 0;
    char line[MAXT * 24 + 32];
    for (unsigned long round = 0;; round++) {
        struct pollfd p = {idle[0], POLLIN, 0};
        poll(&p, 1, 1);
        for (size_t i = 0; i < 65536; i++, at = (at + 1) % len)
            if (mem[at] != (unsigned char)((at * 7 + 3) ^ (at >> 12))) fail(1);
        if (round % 2 == 0) {
            char c = 1;
            if (write(wake[1], &c, 1) < 0) {
            }
        }
        check_mask();
        counts[0]++;
        int off = snprintf(line, 32, "bad=%d", bad);
        for (int k = 0; k < n; k++) off += snprintf(line + off, 24, " %lu", counts[k]);
        line[off++] = '\n';
        if (pwrite(fd, line, off, 0) < 0) {
        }
    }
}
