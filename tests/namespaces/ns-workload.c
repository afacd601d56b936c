/* A tree that owns its uts, ipc, net, pid and cgroup namespaces (started under
 * `unshare --pid --uts --ipc --net --cgroup --fork`) and checks itself after a restore.
 *
 *   ns-workload READY RESULT PORT
 *
 * Start: PID 1 of its pid namespace, a session of its own, host name "stasis-ns",
 * kernel.msgmax 12345 (its IPC namespace), lo up and a TCP socket listening on
 * 127.0.0.1:PORT (its network namespace), one child sleeping, one thread sleeping.
 * READY gets "child PID\n".
 * On SIGUSR1 it checks all of that again (the child is still its child with the same PID,
 * its thread has its tid, /proc/self/cgroup reads the same (its cgroup namespace's root), a connection to the listener is accepted, CLOCK_MONOTONIC did not go back: in a time
 * namespace of its own its offsets came back) and writes "PASS\n" or "FAIL: why\n" to RESULT.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HOST "stasis-ns"
#define MSGMAX "12345"

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static const char *result;
static void verdict(const char *v) {
	FILE *f = fopen(result, "w");
	if (f) { fprintf(f, "%s\n", v); fclose(f); }
}

static int write_file(const char *p, const char *v) {
	int fd = open(p, O_WRONLY);
	if (fd < 0) return -1;
	int r = write(fd, v, strlen(v)) == (ssize_t)strlen(v) ? 0 : -1;
	close(fd);
	return r;
}

static int read_file(const char *p, char *buf, size_t n) {
	int fd = open(p, O_RDONLY);
	if (fd < 0) return -1;
	ssize_t r = read(fd, buf, n - 1);
	close(fd);
	if (r < 0) return -1;
	buf[r] = 0;
	return 0;
}

static int lo_flags(void) {
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct ifreq r;
	memset(&r, 0, sizeof(r));
	strcpy(r.ifr_name, "lo");
	int ok = ioctl(s, SIOCGIFFLAGS, &r);
	close(s);
	return ok < 0 ? -1 : r.ifr_flags;
}

static char why[1200];
static struct timespec started;
static char cgroup_at_start[512];
static volatile pid_t thread_tid;

static void *sleeper(void *a) {
	(void)a;
	thread_tid = syscall(SYS_gettid);
	for (;;) pause();
	return NULL;
}
#define CHECK(c, ...) do { if (!(c)) { snprintf(why, sizeof(why), __VA_ARGS__); return -1; } } while (0)

static int check(pid_t child, int lsk, int port) {
	char buf[128];
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	CHECK(now.tv_sec >= started.tv_sec, "FAIL: CLOCK_MONOTONIC went back from %ld to %ld",
	      (long)started.tv_sec, (long)now.tv_sec);
	CHECK(getpid() == 1, "FAIL: pid %d, not 1", getpid());
	char cg[512];
	CHECK(read_file("/proc/self/cgroup", cg, sizeof(cg)) == 0 && !strcmp(cg, cgroup_at_start),
	      "FAIL: /proc/self/cgroup %s, was %s", cg, cgroup_at_start);
	CHECK(gethostname(buf, sizeof(buf)) == 0 && !strcmp(buf, HOST), "FAIL: hostname %s", buf);
	CHECK(read_file("/proc/sys/kernel/msgmax", buf, sizeof(buf)) == 0 && atoi(buf) == atoi(MSGMAX),
	      "FAIL: msgmax %s", buf);
	CHECK(syscall(SYS_tgkill, 1, thread_tid, 0) == 0, "FAIL: no thread %d", thread_tid);
	int st;
	CHECK(waitpid(child, &st, WNOHANG) == 0, "FAIL: child %d not ours or gone", child);
	CHECK(getsid(0) == 1, "FAIL: session %d", getsid(0));
	int fl = lo_flags();
	CHECK(fl >= 0 && (fl & IFF_UP), "FAIL: lo flags %x", fl);
	int c = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CHECK(connect(c, (struct sockaddr *)&a, sizeof(a)) == 0, "FAIL: connect: %s", strerror(errno));
	struct pollfd p = { .fd = lsk, .events = POLLIN };
	CHECK(poll(&p, 1, 5000) == 1, "FAIL: the listener saw no connection");
	int s = accept(lsk, NULL, NULL);
	CHECK(s >= 0, "FAIL: accept: %s", strerror(errno));
	CHECK(write(c, "x", 1) == 1 && read(s, buf, 1) == 1 && buf[0] == 'x', "FAIL: no data");
	close(s);
	close(c);
	return 0;
}

int main(int argc, char **argv) {
	if (argc != 4) return 2;
	result = argv[2];
	int port = atoi(argv[3]);
	if (getpid() != 1) { verdict("FAIL: not started as PID 1"); return 1; }
	clock_gettime(CLOCK_MONOTONIC, &started);
	/* In its own cgroup namespace it sees its cgroup as the root ("0::/"). */
	if (read_file("/proc/self/cgroup", cgroup_at_start, sizeof(cgroup_at_start))) return 1;
	setsid();
	if (sethostname(HOST, strlen(HOST)) || write_file("/proc/sys/kernel/msgmax", MSGMAX)) {
		verdict("FAIL: setup (hostname, msgmax)");
		return 1;
	}
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct ifreq r;
	memset(&r, 0, sizeof(r));
	strcpy(r.ifr_name, "lo");
	ioctl(s, SIOCGIFFLAGS, &r);
	r.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &r)) { verdict("FAIL: lo up"); return 1; }
	close(s);
	int lsk = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(lsk, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(lsk, (struct sockaddr *)&a, sizeof(a)) || listen(lsk, 4)) {
		verdict("FAIL: listen");
		return 1;
	}
	sigset_t usr1, old;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, &old);
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
	pid_t child = fork();
	if (child == 0) {
		for (;;) pause();
	}
	pthread_t th;
	if (pthread_create(&th, NULL, sleeper, NULL)) return 1;
	while (!thread_tid) usleep(1000);
	char buf[64];
	snprintf(buf, sizeof(buf), "%d\n", child);
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s.tmp", argv[1]);
	FILE *f = fopen(tmp, "w");
	if (!f || fputs(buf, f) < 0 || fclose(f)) return 1;
	rename(tmp, argv[1]);
	while (!asked) sigsuspend(&old);
	verdict(check(child, lsk, port) ? why : "PASS");
	for (;;) pause();
}
