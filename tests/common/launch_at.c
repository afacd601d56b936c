/* launch_at: the fixtures' fx-launch (src/fx-launch.c) for a machine where other processes
 * fork all the time. usage: launch_at CGROUP PID PROGRAM [ARGS...]
 * fx-launch writes PID-1 to ns_last_pid and forks: any fork elsewhere on the machine between
 * the two takes PID first. Here the workload gets PID from clone3's set_tid, which takes
 * exactly that PID or fails with EEXIST when a task holds it.
 * Moves itself into CGROUP (its cgroup.procs) first, unless CGROUP is "-". The child does what fx-launch's does:
 * setsid(), fds 0-2 on /dev/null, every other fd closed, umask 022, chdir("/"), exec PROGRAM
 * with this process's environment (the harness passes fx-launch's). The parent prints the
 * PID and exits at once (the workload is re-parented). Exit status: 0 on success, 3 if PID is
 * taken, 2 on any other error. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char **environ;

/* Writes "0" (this process) to DIR/cgroup.procs. */
static int join_cgroup(const char *dir) {
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/cgroup.procs", dir) >= (int)sizeof(path)) return -1;
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    int ok = write(fd, "0", 1) == 1;
    close(fd);
    return ok ? 0 : -1;
}

/* The child: fx-launch's setup, then exec. */
static void run(char **argv) {
    setsid();
    int fd = open("/dev/null", O_RDWR);
    dup2(fd, 0), dup2(fd, 1), dup2(fd, 2);
    syscall(SYS_close_range, 3, ~0U, 0);
    umask(022);
    if (chdir("/")) _exit(127);
    execve(argv[0], argv, environ);
    _exit(127);
}

int main(int argc, char **argv) {
    int want;
    if (argc < 4 || (want = atoi(argv[2])) < 2) {
        fprintf(stderr, "usage: %s CGROUP PID PROGRAM [ARGS...]\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "-") != 0 && join_cgroup(argv[1])) {
        perror("cgroup.procs");
        return 2;
    }
    pid_t tid = want;
    struct clone_args ca;
    memset(&ca, 0, sizeof(ca));
    ca.exit_signal = SIGCHLD;
    ca.set_tid = (unsigned long)&tid;
    ca.set_tid_size = 1;
    long pid = syscall(SYS_clone3, &ca, sizeof(ca));
    if (pid == 0) run(argv + 3);
    if (pid < 0 && errno == EEXIST) {
        fprintf(stderr, "launch_at: PID %d is taken\n", want);
        return 3;
    }
    if (pid < 0) {
        perror("clone3");
        return 2;
    }
    printf("%ld\n", pid);
    return 0;
}
