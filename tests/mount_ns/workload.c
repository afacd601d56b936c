/* A process in its own mount namespace (started by `unshare --mount --fork --propagation
 * private`) that builds a small tree of its own under DIR and checks it after a restore.
 *
 *   DIR/t          tmpfs (size=4m,mode=755) with d/file ("hello\n")
 *   DIR/t/bind     bind of the directory DIR/src (on the host's root file system)
 *   DIR/t/ro       read-only bind of DIR/t/d
 *   DIR/t/fb       bind of the file DIR/src/a
 *   DIR/t/proc     proc
 *   DIR/t/pts, DIR/t/mq, DIR/t/sys   devpts (a new instance), mqueue, sysfs
 *   fd 3           DIR/t/d/file, O_RDWR, offset 2
 *
 * usage: workload DIR [exact|sorted|shared]   writes DIR/ready, waits for DIR/go, writes
 * its verdict (PASS or FAIL: why) to DIR/result. exact: /proc/self/mountinfo (but the ids)
 * is the one before, line for line; sorted: the same lines in any order (another restorer's
 * mount order); shared: the tmpfs is made shared (a dump must refuse it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[512];

static void die(const char *what)
{
	char p[600];
	snprintf(p, sizeof(p), "%s/result", dir);
	FILE *f = fopen(p, "w");
	if (f) {
		fprintf(f, "FAIL: %s: %s", what, strerror(errno));
		fclose(f);
	}
	exit(1);
}

static char *at(const char *rel)
{
	static char bufs[8][600];
	static int n;
	char *b = bufs[n++ % 8];
	snprintf(b, 600, "%s/%s", dir, rel);
	return b;
}

static void put(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		die(path);
	close(fd);
}

static int get(const char *path, char *buf, size_t n)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t r = read(fd, buf, n - 1);
	close(fd);
	if (r < 0)
		return -1;
	buf[r] = 0;
	return 0;
}

/* mountinfo without the ids and device numbers (fields 1-3), lines as in the file */
static char *mounts(void)
{
	static char raw[1 << 16];
	char *out = calloc(1, 1 << 16);
	if (get("/proc/self/mountinfo", raw, sizeof(raw)))
		die("read mountinfo");
	char *save, *line;
	for (line = strtok_r(raw, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *p = line;
		for (int i = 0; i < 3 && p; i++)
			p = strchr(p, ' ') ? strchr(p, ' ') + 1 : NULL;
		if (p) {
			strcat(out, p);
			strcat(out, "\n");
		}
	}
	return out;
}

static int cmp_line(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *sorted(const char *text)
{
	char *copy = strdup(text), *lines[1024], *save, *l;
	int n = 0;
	for (l = strtok_r(copy, "\n", &save); l && n < 1024; l = strtok_r(NULL, "\n", &save))
		lines[n++] = l;
	qsort(lines, n, sizeof(char *), cmp_line);
	char *out = calloc(1, strlen(text) + 2);
	for (int i = 0; i < n; i++) {
		strcat(out, lines[i]);
		strcat(out, "\n");
	}
	return out;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 2 ? argv[2] : "exact";
	char buf[256];
	if (argc < 2)
		return 2;
	snprintf(dir, sizeof(dir), "%s", argv[1]);
	/* Descriptors of this namespace (the inherited ones are the host's mounts). */
	int null = open("/dev/null", O_RDWR);
	for (int i = 0; i < 3; i++)
		dup2(null, i);
	if (null > 2)
		close(null);
	for (int i = 3; i < 64; i++)
		close(i);
	setsid();

	mkdir(at("t"), 0755);
	mkdir(at("src"), 0755);
	put(at("src/a"), "srcfile\n");
	if (mount("stasis-t", at("t"), "tmpfs", 0, "size=4m,mode=755"))
		die("mount tmpfs");
	mkdir(at("t/d"), 0755);
	mkdir(at("t/bind"), 0755);
	mkdir(at("t/ro"), 0755);
	mkdir(at("t/proc"), 0555);
	mkdir(at("t/pts"), 0755);
	mkdir(at("t/mq"), 0755);
	mkdir(at("t/sys"), 0555);
	put(at("t/fb"), "");
	put(at("t/d/file"), "hello\n");
	if (mount(at("src"), at("t/bind"), NULL, MS_BIND, NULL))
		die("bind a directory");
	if (mount(at("t/d"), at("t/ro"), NULL, MS_BIND, NULL) ||
	    mount(NULL, at("t/ro"), NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL))
		die("read-only bind");
	if (mount(at("src/a"), at("t/fb"), NULL, MS_BIND, NULL))
		die("bind a file");
	if (mount("proc", at("t/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
		die("mount proc");
	if (mount("devpts", at("t/pts"), "devpts", MS_NOSUID | MS_NOEXEC, "mode=620,ptmxmode=666"))
		die("mount devpts");
	if (mount("mqueue", at("t/mq"), "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
		die("mount mqueue");
	if (mount("sysfs", at("t/sys"), "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
		die("mount sysfs");
	if (!strcmp(mode, "shared") && mount(NULL, at("t"), NULL, MS_SHARED, NULL))
		die("make shared");
	int fd = open(at("t/d/file"), O_RDWR);
	if (fd != 3 || lseek(fd, 2, SEEK_SET) != 2)
		die("open the tmpfs file as fd 3");
	char *before = mounts();
	put(at("ready"), "");

	struct stat st;
	while (stat(at("go"), &st))
		usleep(20000);

	const char *why = NULL;
	char *now = mounts();
	int same = !strcmp(mode, "sorted") ? !strcmp(sorted(before), sorted(now)) : !strcmp(before, now);
	if (!same) {
		put(at("mounts.before"), before);
		put(at("mounts.after"), now);
		why = "mountinfo differs (mounts.before, mounts.after)";
	} else if (read(3, buf, 4) != 4 || memcmp(buf, "llo\n", 4))
		why = "fd 3 does not read on from offset 2";
	else if (pwrite(3, "HELLO", 5, 0) != 5)
		why = "fd 3 does not write";
	else if (get(at("t/d/file"), buf, sizeof(buf)) || strcmp(buf, "HELLO\n"))
		why = "t/d/file does not have what fd 3 wrote";
	else if (get(at("t/ro/file"), buf, sizeof(buf)) || strcmp(buf, "HELLO\n"))
		why = "t/ro/file is not t/d/file";
	else if (open(at("t/ro/new"), O_WRONLY | O_CREAT, 0644) >= 0 || errno != EROFS)
		why = "t/ro is not read-only";
	else if (get(at("t/bind/a"), buf, sizeof(buf)) || strcmp(buf, "srcfile\n"))
		why = "t/bind/a is not src/a";
	else if (get(at("t/fb"), buf, sizeof(buf)) || strcmp(buf, "srcfile\n"))
		why = "t/fb is not a bind of src/a";
	else {
		char self[64], want[32];
		ssize_t n = readlink(at("t/proc/self"), self, sizeof(self) - 1);
		snprintf(want, sizeof(want), "%d", getpid());
		if (n <= 0 || (self[n] = 0, strcmp(self, want)))
			why = "t/proc/self is not this process";
		else if (stat(at("t/pts/ptmx"), &st) || stat(at("t/sys/kernel"), &st))
			why = "t/pts or t/sys is empty";
	}
	if (why) {
		errno = 0;
		die(why);
	}
	put(at("result"), "PASS");
	for (;;)
		pause();
}
