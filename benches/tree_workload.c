/* Process-tree workload for benches/tree.sh and tests/dump_tree.rs.
 *
 *   tree_workload NPROC MIB READY_FILE
 *
 * The root forks NPROC-1 children; every process (root included) maps MIB MiB of private
 * anonymous memory and writes every page with a pattern of its own (the page's index mixed
 * with the process's index), then they all wait in sigsuspend(). When every child is ready,
 * the root writes READY_FILE (its pid) and waits too.
 *
 * Verification after a restore: SIGUSR1 to any process makes it re-check every page of its
 * region; a process whose memory is wrong exits with status 3 at once, a good one writes
 * "ok INDEX\n" to the file READY_FILE.ok.INDEX and keeps running.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>

static unsigned long *mem;
static size_t words, page_words;
static unsigned long me;
static const char *ready;
static volatile sig_atomic_t check_req;

static unsigned long pattern(size_t page) { return (me << 40) ^ (page * 0x9e3779b97f4a7c15ul); }

static void on_usr1(int s) { (void)s; check_req = 1; }

static void verify(void) {
    for (size_t w = 0; w < words; w += 8) /* 8 words per 64 bytes */
        if (mem[w] != pattern(w / page_words) + w) _exit(3);
    char path[4096], line[64];
    snprintf(path, sizeof path, "%s.ok.%lu", ready, me);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) _exit(4);
    int n = snprintf(line, sizeof line, "ok %lu\n", me);
    if (write(fd, line, n) != n) _exit(4);
    close(fd);
}

/* Waits for SIGUSR1 with it blocked outside sigsuspend: a signal that comes while the task
 * is anywhere else (e.g. just restored, before its sigsuspend restarts) stays pending
 * instead of being handled and then waited for again forever, as with pause(). */
static void run(void) {
    sigset_t usr1, others;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &others);
    sigdelset(&others, SIGUSR1);
    for (;;) {
        while (!check_req) sigsuspend(&others);
        check_req = 0;
        verify();
    }
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s NPROC MIB READY_FILE\n", argv[0]); return 2; }
    long nproc = atol(argv[1]);
    size_t bytes = (size_t)atol(argv[2]) << 20;
    ready = argv[3];
    words = bytes / sizeof(unsigned long);
    page_words = 4096 / sizeof(unsigned long);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    int pipefd[2];
    if (pipe(pipefd)) return 1;
    for (long i = 1; i < nproc; i++) {
        pid_t p = fork();
        if (p < 0) return 1;
        if (p == 0) { me = i; break; }
    }
    if (bytes) {
        mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) _exit(1);
        for (size_t w = 0; w < words; w += 8) mem[w] = pattern(w / page_words) + w;
    }
    if (me != 0) {
        close(pipefd[0]);
        if (write(pipefd[1], "r", 1) != 1) _exit(1);
        close(pipefd[1]);
        run();
    }
    close(pipefd[1]);
    char c;
    for (long i = 1; i < nproc; i++)
        if (read(pipefd[0], &c, 1) != 1) return 1;
    close(pipefd[0]);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", ready);
    FILE *f = fopen(tmp, "w");
    if (!f) return 1;
    fprintf(f, "%d\n", getpid());
    fclose(f);
    rename(tmp, ready);
    run();
}
