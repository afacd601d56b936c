/* A workload that keeps writing its memory and can tell whether a restored copy is
 * consistent: every page of its regions holds a version number and a pattern derived from
 * it, and a separate table (other pages) records the version each page was last given.
 * A stale page (an old copy where a newer one was written) breaks the match.
 *
 *   workload_dirty RESULT MIB MODE  MODE: busy | bench | idle | newvma | mremap | fork | exec
 *   ready:   RESULT.ready once every page holds a version
 *   SIGUSR1: the MODE's action (new VMA, mremap + a new VMA at the old place, fork a child
 *            that keeps writing too, re-exec itself), then RESULT.acted
 *   SIGUSR2: checks every page (and the child's, through RESULT.child), writes the verdict
 *            to RESULT, and goes on writing
 *   busy: about 1 % of the pages rewritten every 10 ms (bench: every 100 ms); idle: nothing
 *   after the start
 */
#define _GNU_SOURCE
#include "fx_verdict.h"
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#define PAGE 4096
#define MAXR 8

struct region { uint8_t *base; uint64_t npages; uint64_t *ver; };
static struct region R[MAXR];
static int nr;
static uint64_t iter;
static uint64_t rng = 88172645463325252ull;
static volatile sig_atomic_t act;
static void on_act(int s) { (void)s; act = 1; }
static const char *result;
static char self_result[600];
static pid_t child;

static uint8_t pat(uint64_t p, uint64_t v) { return (uint8_t)((p * 31 + v * 7) & 0xff); }

static void fill(struct region *r, uint64_t p, uint64_t v) {
    uint8_t *pg = r->base + p * PAGE;
    memset(pg + 8, pat(p, v), PAGE - 8);
    memcpy(pg, &v, 8);
    r->ver[p] = v;
}

static void add_region(uint8_t *base, uint64_t npages) {
    struct region *r = &R[nr++];
    r->base = base;
    r->npages = npages;
    r->ver = calloc(npages, sizeof(uint64_t));
    for (uint64_t p = 0; p < npages; p++) fill(r, p, ++iter);
}

static uint8_t *map(uint64_t npages) {
    void *m = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) _exit(2);
    return m;
}

static void check(void) {
    strcpy(verdict, "PASS");
    for (int i = 0; i < nr; i++) {
        struct region *r = &R[i];
        for (uint64_t p = 0; p < r->npages; p++) {
            uint8_t *pg = r->base + p * PAGE;
            uint64_t v, want = r->ver[p];
            memcpy(&v, pg, 8);
            CHECK(v == want, "region %d page %lu holds version %lu, the table says %lu",
                  i, (unsigned long)p, (unsigned long)v, (unsigned long)want);
            CHECK(want <= iter, "region %d page %lu: version %lu after the counter %lu",
                  i, (unsigned long)p, (unsigned long)want, (unsigned long)iter);
            uint8_t b = pat(p, v);
            for (int k = 8; k < PAGE; k++)
                if (pg[k] != b) {
                    CHECK(0, "region %d page %lu byte %d: %u, pattern %u", i,
                          (unsigned long)p, k, pg[k], b);
                    break;
                }
        }
    }
}

static void touch(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    struct region *r = &R[rng % nr];
    fill(r, (rng >> 8) % r->npages, ++iter);
}

static void acted(void) {
    char p[600];
    snprintf(p, sizeof(p), "%s.acted", result);
    close(open(p, O_CREAT | O_WRONLY, 0644));
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    result = argv[1];
    uint64_t npages = strtoull(argv[2], NULL, 10) * 256;
    const char *mode = argv[3];
    int busy = strcmp(mode, "idle") != 0;
    snprintf(self_result, sizeof(self_result), "%s", result);
    signal(SIGUSR1, on_act);
    signal(SIGUSR2, on_go);
    add_region(map(npages), npages);
    add_region(map(64), 64);
    char ready[600];
    snprintf(ready, sizeof(ready), "%s.%s", result, strcmp(mode, "exec-done") ? "ready" : "acted");
    close(open(ready, O_CREAT | O_WRONLY, 0644));
    uint64_t per_ms = strcmp(mode, "bench") ? npages / 1000 + 1 : npages / 10000 + 1;
    for (;;) {
        if (busy)
            for (uint64_t i = 0; i < per_ms; i++) touch();
        if (act) {
            act = 0;
            if (!strcmp(mode, "newvma")) {
                add_region(map(256), 256);
            } else if (!strcmp(mode, "mremap")) {
                /* Move region 0, then map a new region where it was. */
                uint64_t len = R[0].npages * PAGE;
                uint8_t *old = R[0].base;
                void *to = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                void *moved = mremap(old, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
                if (moved == MAP_FAILED) _exit(3);
                R[0].base = moved;
                void *again = mmap(old, len, PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
                if (again != old) _exit(4);
                add_region(again, R[0].npages);
            } else if (!strcmp(mode, "fork")) {
                child = fork();
                if (child == 0) {
                    snprintf(self_result, sizeof(self_result), "%s.child", result);
                    rng ^= 0x9e3779b97f4a7c15ull;
                }
            } else if (!strcmp(mode, "exec")) {
                char *args[] = { argv[0], argv[1], argv[2], "exec-done", NULL };
                execv("/proc/self/exe", args);
                _exit(5);
            }
            acted();
        }
        if (go) {
            go = 0;
            check();
            if (child > 0) {
                char cr[600], v[256] = "";
                snprintf(cr, sizeof(cr), "%s.child", result);
                unlink(cr);
                kill(child, SIGUSR2);
                for (int i = 0; i < 500 && access(cr, F_OK); i++) usleep(10000);
                FILE *f = fopen(cr, "r");
                if (f) { if (!fgets(v, sizeof(v), f)) v[0] = 0; fclose(f); }
                CHECK(!strcmp(v, "PASS"), "child: %s", v[0] ? v : "no verdict");
            }
            write_verdict(self_result);
        }
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
}
