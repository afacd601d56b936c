/* Workload of the dump parasite tests with known in-task state (launched by workload.rs).
 * usage: workload NTHREADS MEM_MIB [fpu]
 * Sets up known in-task state, then prints one line
 *   ready PID MEM_ADDR MEM_LEN COUNTER_ADDR ALT_BASE FILE_FD PIPE_FD SOCK_FD
 * and the main thread counts (counter += 1 per millisecond, nanosleep between) while the
 * NTHREADS-1 other threads sleep. State:
 *   MEM: MEM_MIB MiB anonymous, byte i = (i * 7 + 3) ^ (i >> 12)
 *   SIGUSR1 handler (SA_RESTART, mask {SIGUSR2}), SIGUSR2 ignored, SIGHUP handler
 *     (SA_SIGINFO | SA_ONSTACK)
 *   ITIMER_VIRTUAL 1000 s every 100 s, ITIMER_PROF 2000 s once
 *   one POSIX timer (CLOCK_MONOTONIC, SIGEV_NONE) 1000 s every 5 s
 *   RLIMIT_NOFILE 512/1024, RLIMIT_CORE 0/unlimited, umask 027, child subreaper,
 *   PR_SET_PDEATHSIG SIGUSR2 on the main thread only
 *   thread k (main = 0) has sigaltstack ALT_BASE + k * 64 KiB, size (k + 1) * 8 KiB
 *   main thread blocks SIGWINCH
 *   FILE_FD: /proc/self/exe O_RDONLY|O_CLOEXEC, PIPE_FD: a pipe read end (O_NONBLOCK),
 *   SOCK_FD: one end of a unix socketpair
 *   with fpu: thread 3 loads x87 (pi) and, with AVX-512, zmm5 and zmm20 (1.25 in every
 *     lane) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long counter;
static unsigned char *alt_base;
static pthread_barrier_t barrier;
static int fpu_state;

static void on_sig(int sig) { (void)sig; }
static void on_info(int sig, siginfo_t *si, void *uc) { (void)sig; (void)si; (void)uc; }

static void set_altstack(int k) {
    stack_t ss = { .ss_sp = alt_base + k * 65536, .ss_flags = 0, .ss_size = (k + 1) * 8192 };
    if (sigaltstack(&ss, NULL)) { perror("sigaltstack"); exit(1); }
}

static void *sleeper(void *arg) {
    set_altstack((int)(long)arg);
    if (fpu_state && (long)arg == 3) {
        double d = 1.25;
        __asm__ volatile("fldpi" ::: "memory");
        if (__builtin_cpu_supports("avx512f"))
            __asm__ volatile("vbroadcastsd %0, %%zmm5\n\tvbroadcastsd %0, %%zmm20" :: "m"(d)
                             : "xmm5");
    }
    pthread_barrier_wait(&barrier);
    for (;;) {
        struct timespec ts = { 1, 0 };
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int nthreads = argc > 1 ? atoi(argv[1]) : 1;
    size_t len = (size_t)(argc > 2 ? atoi(argv[2]) : 1) << 20;
    fpu_state = argc > 3 && strcmp(argv[3], "fpu") == 0;
    unsigned char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return 1;
    for (size_t i = 0; i < len; i++) mem[i] = (unsigned char)((i * 7 + 3) ^ (i >> 12));
    alt_base = mmap(NULL, 64 * 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (alt_base == MAP_FAILED) return 1;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sig;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGUSR2);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGUSR2, SIG_IGN);
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_info;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGHUP, &sa, NULL);

    struct itimerval it = { { 100, 0 }, { 1000, 0 } };
    if (setitimer(ITIMER_VIRTUAL, &it, NULL)) return 1;
    struct itimerval it2 = { { 0, 0 }, { 2000, 0 } };
    if (setitimer(ITIMER_PROF, &it2, NULL)) return 1;
    struct sigevent sev;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_NONE;
    timer_t timer;
    if (timer_create(CLOCK_MONOTONIC, &sev, &timer)) return 1;
    struct itimerspec its = { { 5, 0 }, { 1000, 0 } };
    if (timer_settime(timer, 0, &its, NULL)) return 1;

    struct rlimit rl = { 512, 1024 };
    if (setrlimit(RLIMIT_NOFILE, &rl)) return 1;
    struct rlimit core = { 0, RLIM_INFINITY };
    if (setrlimit(RLIMIT_CORE, &core)) return 1;
    umask(027);
    if (prctl(PR_SET_CHILD_SUBREAPER, 1)) return 1;
    if (prctl(PR_SET_PDEATHSIG, SIGUSR2)) return 1;

    int file_fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    int p[2];
    if (file_fd < 0 || pipe2(p, O_NONBLOCK)) return 1;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return 1;

    set_altstack(0);
    pthread_barrier_init(&barrier, NULL, nthreads);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (long i = 1; i < nthreads; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, sleeper, (void *)i)) { perror("pthread_create"); return 1; }
    }
    pthread_barrier_wait(&barrier);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGWINCH);
    pthread_sigmask(SIG_BLOCK, &block, NULL);
    printf("ready %d %lx %zu %lx %lx %d %d %d\n", getpid(), (unsigned long)mem, len,
           (unsigned long)&counter, (unsigned long)alt_base, file_fd, p[0], sv[0]);
    fflush(stdout);
    for (;;) {
        counter++;
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
}
