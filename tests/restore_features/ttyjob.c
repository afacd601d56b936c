/* Workload of the shell-job test, in two roles.
 *
 * `ttyjob shell TTY PIDFILE`: a minimal job-control shell: a new session with TTY as its
 * controlling terminal; it starts `ttyjob job` in a process group of its own, makes that group
 * the terminal's foreground, writes the job's pid to PIDFILE and waits.
 *
 * `ttyjob job`: the job, stdin/stdout/stderr on the terminal: prints `count N` every 50 ms and
 * answers each line it reads with `got: LINE`. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int job(void)
{
	char line[256];
	size_t used = 0;
	for (unsigned long n = 0;; n++) {
		dprintf(1, "count %lu\n", n);
		struct pollfd p = {0, POLLIN, 0};
		if (poll(&p, 1, 50) == 1 && (p.revents & POLLIN)) {
			ssize_t r = read(0, line + used, sizeof(line) - 1 - used);
			if (r <= 0)
				return 1;
			used += r;
			char *nl;
			while ((nl = memchr(line, '\n', used))) {
				*nl = 0;
				dprintf(1, "got: %s\n", line);
				used -= nl + 1 - line;
				memmove(line, nl + 1, used);
			}
			if (used == sizeof(line) - 1)
				used = 0;
		}
	}
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "job"))
		return job();
	if (argc < 4 || strcmp(argv[1], "shell"))
		return 2;
	if (setsid() < 0) { perror("setsid"); return 2; }
	int t = open(argv[2], O_RDWR);
	if (t < 0 || ioctl(t, TIOCSCTTY, 0)) { perror("tty"); return 2; }
	signal(SIGTTOU, SIG_IGN);
	pid_t c = fork();
	if (c == 0) {
		setpgid(0, 0);
		signal(SIGTTOU, SIG_DFL);
		dup2(t, 0);
		dup2(t, 1);
		dup2(t, 2);
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
		execl("/proc/self/exe", argv[0], "job", (char *)NULL);
		_exit(127);
	}
	setpgid(c, c);
	if (tcsetpgrp(t, c)) { perror("tcsetpgrp"); return 2; }
	FILE *f = fopen(argv[3], "w");
	fprintf(f, "%d", c);
	fclose(f);
	for (;;) {
		int st;
		if (waitpid(-1, &st, 0) < 0)
			pause();
	}
}
