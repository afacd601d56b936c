/* Workload of the creds round trip: as root it drops to uids 2001/2002/2003 (fsuid 2003),
 * gids 1001/1002/1003 (fsgid 1003), groups {100,200,300}, keeps a few capabilities
 * (permitted, effective, inheritable, one ambient), shrinks the bounding set and sets
 * securebits and no_new_privs; a second thread shares all of it. It records what /proc says about both threads
 * and, on SIGUSR2, checks that nothing changed: PASS or FAIL: <what>. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t verify;
static char before[2][2048];
static pid_t tids[2];

static void on_usr2(int s) { (void)s; verify = 1; }

static void die(const char *what) { perror(what); exit(2); }

/* The creds lines of /proc/self/task/TID/status plus the securebits, one string. */
static void snapshot(pid_t tid, char *out, size_t n)
{
	char path[64], buf[8192];
	snprintf(path, sizeof(path), "/proc/self/task/%d/status", tid);
	int fd = open(path, O_RDONLY);
	if (fd < 0) die("open status");
	ssize_t r = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (r <= 0) die("read status");
	buf[r] = 0;
	out[0] = 0;
	static const char *keys[] = {"Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:",
				     "CapBnd:", "CapAmb:", "NoNewPrivs:"};
	for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n"))
		for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
			if (!strncmp(l, keys[k], strlen(keys[k]))) {
				strncat(out, l, n - strlen(out) - 2);
				strcat(out, "\n");
			}
	char sb[64];
	snprintf(sb, sizeof(sb), "Securebits:\t%d\n", tid == gettid() ? prctl(PR_GET_SECUREBITS) : -1);
	strncat(out, sb, n - strlen(out) - 1);
}

static void *thread_main(void *arg)
{
	(void)arg;
	tids[1] = gettid();
	for (;;)
		pause();
	return NULL;
}

static void write_file(const char *path, const char *text)
{
	char tmp[512];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f) die(tmp);
	fputs(text, f);
	fclose(f);
	if (rename(tmp, path)) die("rename");
}

int main(int argc, char **argv)
{
	if (argc < 2) return 2;
	const char *result = argv[1];
	gid_t groups[] = {100, 200, 300};
	if (setgroups(3, groups)) die("setgroups");
	if (prctl(PR_SET_SECUREBITS, SECBIT_KEEP_CAPS | SECBIT_NOROOT)) die("securebits");
	if (prctl(PR_CAPBSET_DROP, CAP_SYS_MODULE) || prctl(PR_CAPBSET_DROP, CAP_MKNOD)) die("bset");
	if (setresgid(1001, 1002, 1003)) die("setresgid");
	if (setresuid(2001, 2002, 2003)) die("setresuid");
	setfsuid(2003);
	setfsgid(1003);
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct d[2] = {{0}};
	d[0].permitted = 1u << CAP_KILL | 1u << CAP_NET_BIND_SERVICE | 1u << CAP_SYS_NICE;
	d[0].effective = 1u << CAP_KILL | 1u << CAP_NET_BIND_SERVICE;
	d[0].inheritable = 1u << CAP_NET_BIND_SERVICE | 1u << CAP_SYS_NICE;
	d[1].permitted = 1u << (CAP_BLOCK_SUSPEND - 32);
	if (syscall(SYS_capset, &h, d)) die("capset");
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0)) die("ambient");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("no_new_privs");
	signal(SIGUSR2, on_usr2);
	pthread_t th;
	tids[0] = gettid();
	if (pthread_create(&th, NULL, thread_main, NULL)) die("pthread_create");
	while (!tids[1])
		usleep(1000);
	snapshot(tids[0], before[0], sizeof(before[0]));
	snapshot(tids[1], before[1], sizeof(before[1]));
	char path[512], text[4200];
	snprintf(text, sizeof(text), "%s--\n%s", before[0], before[1]);
	snprintf(path, sizeof(path), "%s.creds", result);
	write_file(path, text);
	snprintf(path, sizeof(path), "%s.ready", result);
	write_file(path, "READY");
	while (!verify) {
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	char now[2][2048];
	snapshot(tids[0], now[0], sizeof(now[0]));
	snapshot(tids[1], now[1], sizeof(now[1]));
	for (int i = 0; i < 2; i++)
		if (strcmp(before[i], now[i])) {
			snprintf(text, sizeof(text), "FAIL: thread %d creds changed:\n%s-- now:\n%s", i,
				 before[i], now[i]);
			write_file(result, text);
			return 1;
		}
	write_file(result, "PASS");
	return 0;
}
