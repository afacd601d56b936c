/* What runc builds, by hand: in a new mount namespace (started by `unshare --mount --fork
 * --propagation private`), ROOTFS bound on itself with proc and a tmpfs at /tmp below it,
 * pivot_root into it, the old root detached, stdio on /tmp/log; then exec CMD.
 *
 * usage: container ROOTFS CMD ARGS...
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

static void die(const char *what)
{
	perror(what);
	exit(1);
}

int main(int argc, char **argv)
{
	char p[4096];
	if (argc < 3)
		return 2;
	setsid();
	if (mount(argv[1], argv[1], NULL, MS_BIND | MS_REC, NULL))
		die("bind the rootfs");
	snprintf(p, sizeof(p), "%s/proc", argv[1]);
	if (mount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
		die("mount proc");
	snprintf(p, sizeof(p), "%s/tmp", argv[1]);
	if (mount("tmp", p, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=1777"))
		die("mount tmpfs");
	if (chdir(argv[1]) || syscall(SYS_pivot_root, ".", ".") || umount2(".", MNT_DETACH) ||
	    chdir("/"))
		die("pivot_root");
	int fd = open("/tmp/log", O_RDWR | O_CREAT | O_APPEND, 0644);
	if (fd < 0)
		die("open /tmp/log");
	for (int i = 0; i < 3; i++)
		dup2(fd, i);
	for (int i = 3; i < 64; i++)
		close(i);
	execv(argv[2], argv + 2);
	die("exec");
}
