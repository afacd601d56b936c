/* Workload of the ptrace and parasite tests (launched by workload.rs).
 * usage: workload NTHREADS [stop|read|churn]
 * Prints the ready line shared with workload_state.c once set up and every thread it started
 * runs (past glibc's thread start: robust list and rseq registered; a barrier)
 *   ready PID MEM_ADDR MEM_LEN COUNTER_ADDR ALT_BASE FILE_FD PIPE_FD SOCK_FD
 * (here ALT_BASE is 0, FILE_FD and SOCK_FD are -1), then the main thread counts (counter += 1
 * every millisecond, nanosleep between) and the NTHREADS-1 other threads sleep in a loop.
 * MEM is 4 pages, byte i = (i * 7 + 3) ^ (i >> 12). PIPE_FD is a pipe write end.
 * SIGUSR1 has a handler (SA_RESTART, mask {SIGUSR2}), SIGUSR2 is ignored.
 * ITIMER_VIRTUAL runs with interval 500 s; POSIX timer 0 (CLOCK_MONOTONIC, SIGEV_NONE) with
 * interval 1000 s.
 * With "stop" the process sends itself SIGSTOP after printing. With "read" the main thread
 * first blocks in read(0, 1 byte) and prints "read N ERRNO" when it returns. With "churn" one
 * more thread keeps creating threads that exit at once. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long counter;
/* Main, the sleepers and the churner: ready is printed once all of them are here. */
static pthread_barrier_t started;

static void on_usr1(int sig) { (void)sig; }

static void *short_lived(void *arg) { return arg; }

/* "churn" mode: keeps creating threads that exit at once. */
static void *churner(void *arg) {
    (void)arg;
    pthread_barrier_wait(&started);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (;;) {
        pthread_t t;
        pthread_create(&t, &attr, short_lived, NULL);
    }
    return NULL;
}

static void *sleeper(void *arg) {
    (void)arg;
    pthread_barrier_wait(&started);
    for (;;) {
        struct timespec ts = { 1, 0 };
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int nthreads = argc > 1 ? atoi(argv[1]) : 1;
    if (nthreads < 1) nthreads = 1;
    int stop = argc > 2 && strcmp(argv[2], "stop") == 0;
    int do_read = argc > 2 && strcmp(argv[2], "read") == 0;
    int churn = argc > 2 && strcmp(argv[2], "churn") == 0;
    size_t len = 4 * 4096;
    unsigned char *pattern = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pattern == MAP_FAILED) return 1;
    for (size_t i = 0; i < len; i++) pattern[i] = (unsigned char)((i * 7 + 3) ^ (i >> 12));
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGUSR2);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGUSR2, SIG_IGN);
    struct itimerval it = { { 500, 0 }, { 500, 0 } };
    setitimer(ITIMER_VIRTUAL, &it, NULL);
    struct sigevent sev;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_NONE;
    timer_t timer;
    if (timer_create(CLOCK_MONOTONIC, &sev, &timer)) return 1;
    struct itimerspec its = { { 1000, 0 }, { 1000, 0 } };
    timer_settime(timer, 0, &its, NULL);
    int fds[2];
    if (pipe(fds)) return 1;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    if (pthread_barrier_init(&started, NULL, (unsigned)(nthreads + churn))) return 1;
    for (int i = 1; i < nthreads; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, sleeper, NULL)) { perror("pthread_create"); return 1; }
    }
    if (churn) {
        pthread_t t;
        if (pthread_create(&t, &attr, churner, NULL)) { perror("pthread_create"); return 1; }
    }
    pthread_barrier_wait(&started);
    printf("ready %d %lx %zu %lx 0 -1 %d -1\n", getpid(), (unsigned long)pattern, len,
           (unsigned long)&counter, fds[1]);
    fflush(stdout);
    if (stop) raise(SIGSTOP);
    if (do_read) {
        char c;
        errno = 0;
        ssize_t n = read(0, &c, 1);
        printf("read %zd %d\n", n, errno);
        fflush(stdout);
    }
    for (;;) {
        counter++;
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
}
