/* fx-cow RESULT: a forked server in miniature. The parent fills 64 MiB of private anonymous
 * memory with a per-page pattern and forks three workers, then (page numbers in the area):
 *
 *   parent    rewrites pages 10..13 after the fork (its own copies from then on)
 *   worker 1  rewrites pages 100..103
 *   worker 2  rewrites pages 200..203 and 16000..16003
 *   worker 3  MADV_DONTNEEDs pages 3000..3063 (zero for it, the pattern for the others)
 *
 * Everything else stays shared copy-on-write. Once all are done the parent writes
 * "READY ADDR W1 W2 W3" (ADDR in hex). On SIGUSR2 the parent checks every byte of its view,
 * sends SIGUSR2 to each worker, which checks its own view and exits 0 (or 1), and writes PASS
 * or FAIL with what differs.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#define PAGES 16384u /* 64 MiB */
#define PG 4096u
#define WORDS (PG / 8)

static volatile sig_atomic_t go;
static void on_go(int s) { (void)s; go = 1; }

static uint64_t word(uint32_t page, uint32_t j, int who) {
    return ((uint64_t)page * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)j << 20) ^ ((uint64_t)(who + 1) << 56);
}

static void fill(uint64_t *p, uint32_t page, int who) {
    for (uint32_t j = 0; j < WORDS; j++) p[(size_t)page * WORDS + j] = word(page, j, who);
}

/* Who wrote page `page` last in the view of process `me` (0 parent, 1..3 workers); -1: zero. */
static int owner(uint32_t page, int me) {
    if (me == 0 && page >= 10 && page < 14) return 9;
    if (me == 1 && page >= 100 && page < 104) return 1;
    if (me == 2 && ((page >= 200 && page < 204) || (page >= 16000 && page < 16004))) return 2;
    if (me == 3 && page >= 3000 && page < 3064) return -1;
    return 0;
}

/* Number of pages of the view of `me` that differ from what it should be. */
static unsigned check(const uint64_t *p, int me, uint32_t *first) {
    unsigned bad = 0;
    for (uint32_t page = 0; page < PAGES; page++) {
        int who = owner(page, me);
        const uint64_t *w = p + (size_t)page * WORDS;
        int ok = 1;
        for (uint32_t j = 0; j < WORDS && ok; j++) ok = w[j] == (who < 0 ? 0 : word(page, j, who));
        if (!ok && bad++ == 0) *first = page;
    }
    return bad;
}

static void wait_go(sigset_t *unblocked) {
    while (!go) sigsuspend(unblocked);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *result = argv[1];
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0); dup2(null, 1); dup2(null, 2);
    sigset_t usr2, old;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr2, &old);
    signal(SIGUSR2, on_go);
    uint64_t *p = mmap(NULL, (size_t)PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 2;
    for (uint32_t page = 0; page < PAGES; page++) fill(p, page, 0);
    int done[2];
    if (pipe(done)) return 2;
    pid_t w[3];
    for (int k = 1; k <= 3; k++) {
        w[k - 1] = fork();
        if (w[k - 1] < 0) return 2;
        if (w[k - 1] == 0) {
            if (k == 1) for (uint32_t pg = 100; pg < 104; pg++) fill(p, pg, 1);
            if (k == 2) {
                for (uint32_t pg = 200; pg < 204; pg++) fill(p, pg, 2);
                for (uint32_t pg = 16000; pg < 16004; pg++) fill(p, pg, 2);
            }
            if (k == 3 && madvise((char *)p + 3000ul * PG, 64ul * PG, MADV_DONTNEED)) _exit(2);
            if (write(done[1], "w", 1) != 1) _exit(2);
            wait_go(&old);
            uint32_t first = 0;
            _exit(check(p, k, &first) ? 1 : 0);
        }
    }
    char b;
    for (int k = 0; k < 3; k++)
        if (read(done[0], &b, 1) != 1) return 2;
    for (uint32_t pg = 10; pg < 14; pg++) fill(p, pg, 9);
    char txt[256], tmp[512];
    snprintf(txt, sizeof(txt), "READY %lx %d %d %d", (unsigned long)p, w[0], w[1], w[2]);
    snprintf(tmp, sizeof(tmp), "%s.tmp", result);
    FILE *f = fopen(tmp, "w");
    if (!f) return 3;
    fputs(txt, f);
    fclose(f);
    rename(tmp, result);
    wait_go(&old);
    char verdict[1024] = "";
    uint32_t first = 0;
    unsigned bad = check(p, 0, &first);
    if (bad) snprintf(verdict, sizeof(verdict), "FAIL: parent: %u pages differ (first %u)", bad, first);
    for (int k = 0; k < 3; k++) {
        kill(w[k], SIGUSR2);
        int st = 0;
        waitpid(w[k], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            size_t n = strlen(verdict);
            snprintf(verdict + n, sizeof(verdict) - n, "%sworker %d: its view differs (status 0x%x)",
                     n ? "; " : "FAIL: ", k + 1, st);
        }
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp", result);
    f = fopen(tmp, "w");
    if (!f) return 3;
    fputs(verdict[0] ? verdict : "PASS", f);
    fclose(f);
    rename(tmp, result);
    return 0;
}
