/* A workload for post-copy restore: a large region of patterned private anonymous memory
 * (every page holds its index and a byte pattern derived from it, so a page restored at the
 * wrong address, a zero page or a stale page is seen), plus threads that keep reading it (after
 * a lazy restore they fault on pages still missing, concurrently) and writing their own small
 * regions.
 *
 *   workload_lazy RESULT MIB NTHREADS
 *   ready:   RESULT.ready once every page is written and the threads run
 *   SIGUSR2: checks every page of every region and the threads' own findings, writes the
 *            verdict to RESULT
 */
#define _GNU_SOURCE
#include "fx_verdict.h"
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096
#define MAXT 16

static uint8_t *big;
static uint64_t big_pages;
static volatile int thread_fail[MAXT];
static volatile uint64_t thread_bad[MAXT];
static uint8_t *own[MAXT];
static volatile uint64_t own_ver[MAXT];

static uint8_t pat(uint64_t p) { return (uint8_t)((p * 131 + 17) & 0xff); }

static int page_ok(uint64_t p) {
    uint8_t *pg = big + p * PAGE;
    uint64_t v;
    memcpy(&v, pg, 8);
    if (v != p) return 0;
    uint8_t b = pat(p);
    for (int k = 8; k < PAGE; k += 61)
        if (pg[k] != b) return 0;
    return pg[PAGE - 1] == b;
}

static void *reader(void *arg) {
    int id = (int)(intptr_t)arg;
    uint64_t rng = 0x9e3779b97f4a7c15ull * (id + 1);
    for (;;) {
        for (int i = 0; i < 64; i++) {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            uint64_t p = rng % big_pages;
            if (!page_ok(p) && !thread_fail[id]) { thread_bad[id] = p; thread_fail[id] = 1; }
        }
        /* Its own region: a counter in every page, rewritten each round. */
        uint64_t v = own_ver[id];
        for (int p = 0; p < 64; p++) {
            uint64_t got;
            memcpy(&got, own[id] + p * PAGE, 8);
            if (got != v && !thread_fail[id]) { thread_bad[id] = 1000000 + p; thread_fail[id] = 2; }
        }
        v++;
        for (int p = 0; p < 64; p++) memcpy(own[id] + p * PAGE, &v, 8);
        own_ver[id] = v;
        struct timespec ts = { 0, 500000 };
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    const char *result = argv[1];
    big_pages = strtoull(argv[2], NULL, 10) * 256;
    int nt = atoi(argv[3]);
    if (nt > MAXT) nt = MAXT;
    signal(SIGUSR2, on_go);
    big = mmap(NULL, big_pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (big == MAP_FAILED) return 3;
    for (uint64_t p = 0; p < big_pages; p++) {
        memset(big + p * PAGE + 8, pat(p), PAGE - 8);
        memcpy(big + p * PAGE, &p, 8);
    }
    pthread_t t[MAXT];
    for (int i = 0; i < nt; i++) {
        own[i] = mmap(NULL, 64 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (own[i] == MAP_FAILED) return 3;
        for (int p = 0; p < 64; p++) memset(own[i] + p * PAGE, 0, 8);
        pthread_create(&t[i], NULL, reader, (void *)(intptr_t)i);
    }
    char ready[600];
    snprintf(ready, sizeof(ready), "%s.ready", result);
    close(open(ready, O_CREAT | O_WRONLY, 0644));
    for (;;) {
        if (go) {
            go = 0;
            strcpy(verdict, "PASS");
            for (uint64_t p = 0; p < big_pages; p++)
                CHECK(page_ok(p), "page %lu of the large region is wrong", (unsigned long)p);
            for (int i = 0; i < nt; i++)
                CHECK(!thread_fail[i], "thread %d saw a wrong page (%d, %lu)", i, thread_fail[i],
                      (unsigned long)thread_bad[i]);
            write_verdict(result);
        }
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
}
