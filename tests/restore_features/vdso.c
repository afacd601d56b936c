/* Workload of the vdso proxy test: reads the clocks through the vdso, both through glibc
 * (clock_gettime, gettimeofday, time) and by calling the vdso's own entry points, which it
 * looks up once at start in the vdso's ELF symbol table (AT_SYSINFO_EHDR). On SIGUSR2 it
 * checks that every way gives sane, consistent, advancing times: PASS or FAIL: <what>. */
#define _GNU_SOURCE
#include <elf.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef int (*cgt_t)(clockid_t, struct timespec *);
typedef int (*gtod_t)(struct timeval *, void *);

static volatile sig_atomic_t verify;
static cgt_t vdso_cgt;
static gtod_t vdso_gtod;
static volatile unsigned long calls;

static void on_usr2(int s) { (void)s; verify = 1; }

static void *vdso_sym(const char *name)
{
	unsigned long base = getauxval(AT_SYSINFO_EHDR);
	if (!base) return NULL;
	Elf64_Ehdr *eh = (Elf64_Ehdr *)base;
	Elf64_Phdr *ph = (Elf64_Phdr *)(base + eh->e_phoff);
	unsigned long load = 0;
	for (int i = 0; i < eh->e_phnum; i++)
		if (ph[i].p_type == PT_LOAD) { load = ph[i].p_vaddr; break; }
	Elf64_Shdr *sh = (Elf64_Shdr *)(base + eh->e_shoff);
	for (int i = 0; i < eh->e_shnum; i++) {
		if (sh[i].sh_type != SHT_DYNSYM) continue;
		Elf64_Sym *sym = (Elf64_Sym *)(base + sh[i].sh_offset);
		const char *str = (const char *)(base + sh[sh[i].sh_link].sh_offset);
		for (unsigned long k = 0; k < sh[i].sh_size / sizeof(*sym); k++)
			if (sym[k].st_shndx && !strcmp(str + sym[k].st_name, name))
				return (void *)(base + sym[k].st_value - load);
	}
	return NULL;
}

static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }

static void write_file(const char *path, const char *text)
{
	char tmp[512];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f) exit(2);
	fputs(text, f);
	fclose(f);
	rename(tmp, path);
}

static const char *check(void)
{
	static char why[256];
	struct timespec a, b, s, r;
	struct timeval tv;
	long long last = 0;
	for (int i = 0; i < 20000; i++) {
		if (vdso_cgt(CLOCK_MONOTONIC, &a) || clock_gettime(CLOCK_MONOTONIC, &b))
			return "clock_gettime failed";
		if (ns(a) < last || ns(b) < ns(a))
			return "CLOCK_MONOTONIC went backwards";
		last = ns(b);
	}
	syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &s);
	vdso_cgt(CLOCK_MONOTONIC, &a);
	if (ns(a) < ns(s) || ns(a) - ns(s) > 100000000LL) {
		snprintf(why, sizeof(why), "vdso CLOCK_MONOTONIC %lld vs syscall %lld", ns(a), ns(s));
		return why;
	}
	syscall(SYS_clock_gettime, CLOCK_REALTIME, &s);
	vdso_cgt(CLOCK_REALTIME, &r);
	if (vdso_gtod(&tv, NULL) || gettimeofday(&tv, NULL))
		return "gettimeofday failed";
	long long tv_ns = tv.tv_sec * 1000000000LL + tv.tv_usec * 1000LL;
	if (llabs(ns(r) - ns(s)) > 1000000000LL || llabs(tv_ns - ns(s)) > 1000000000LL ||
	    llabs(time(NULL) - s.tv_sec) > 1) {
		snprintf(why, sizeof(why), "realtime: vdso %lld gettimeofday %lld syscall %lld", ns(r),
			 tv_ns, ns(s));
		return why;
	}
	vdso_cgt(CLOCK_MONOTONIC, &a);
	struct timespec nap = {0, 50 * 1000 * 1000};
	nanosleep(&nap, NULL);
	vdso_cgt(CLOCK_MONOTONIC, &b);
	if (ns(b) - ns(a) < 40000000LL)
		return "CLOCK_MONOTONIC does not advance through a 50 ms sleep";
	if (calls < 10)
		return "the loop did not run";
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 2) return 2;
	vdso_cgt = (cgt_t)vdso_sym("__vdso_clock_gettime");
	vdso_gtod = (gtod_t)vdso_sym("__vdso_gettimeofday");
	if (!vdso_cgt || !vdso_gtod) {
		write_file(argv[1], "FAIL: no vdso symbols");
		return 1;
	}
	signal(SIGUSR2, on_usr2);
	char path[512];
	snprintf(path, sizeof(path), "%s.ready", argv[1]);
	write_file(path, "READY");
	struct timespec prev = {0, 0};
	while (!verify) {
		struct timespec t;
		struct timeval tv;
		vdso_cgt(CLOCK_MONOTONIC, &t);
		gettimeofday(&tv, NULL);
		if (ns(t) < ns(prev)) {
			write_file(argv[1], "FAIL: CLOCK_MONOTONIC went backwards in the loop");
			return 1;
		}
		prev = t;
		calls++;
		struct timespec nap = {0, 1000 * 1000};
		nanosleep(&nap, NULL);
	}
	const char *why = check();
	if (why) {
		char text[400];
		snprintf(text, sizeof(text), "FAIL: %s", why);
		write_file(argv[1], text);
		return 1;
	}
	write_file(argv[1], "PASS");
	return 0;
}
