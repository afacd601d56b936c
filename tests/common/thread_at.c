/* thread_at: holds a TID with a thread of its own. usage: thread_at TID NAME
 * Names itself NAME (the thread inherits it), creates one thread whose TID is exactly TID
 * (clone3's set_tid: that TID or EEXIST, no race with forks elsewhere on the machine), prints
 * "ready PID" and waits until its standard input closes; then it exits with its thread.
 * Exit status: 0 on success, 3 if TID is taken, 2 on any other error.
 * x86-64 only: the thread starts on an empty stack, so the clone3 call and the thread's
 * whole life (a pause loop) are in one inline asm block that never returns in the thread. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static long clone3_pausing_thread(struct clone_args *ca) {
    long ret;
    __asm__ volatile(
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "2: mov %[pause], %%eax\n\t"
        "syscall\n\t"
        "jmp 2b\n\t"
        "1:\n\t"
        : "=a"(ret)
        : "a"((long)SYS_clone3), "D"(ca), "S"(sizeof(*ca)), [pause] "i"(SYS_pause)
        : "rcx", "r11", "memory");
    return ret;
}

int main(int argc, char **argv) {
    int want;
    if (argc != 3 || (want = atoi(argv[1])) < 2) {
        fprintf(stderr, "usage: %s TID NAME\n", argv[0]);
        return 2;
    }
    prctl(PR_SET_NAME, argv[2]);
    size_t size = 64 * 1024;
    char *stack = malloc(size);
    if (!stack) return 2;
    pid_t tid = want;
    struct clone_args ca;
    memset(&ca, 0, sizeof(ca));
    ca.flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
    ca.stack = (unsigned long)stack;
    ca.stack_size = size;
    ca.set_tid = (unsigned long)&tid;
    ca.set_tid_size = 1;
    long r = clone3_pausing_thread(&ca);
    if (r < 0 && r == -EEXIST) {
        fprintf(stderr, "thread_at: TID %d is taken\n", want);
        return 3;
    }
    if (r < 0) {
        fprintf(stderr, "thread_at: clone3: %s\n", strerror((int)-r));
        return 2;
    }
    printf("ready %d\n", getpid());
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {
    }
    return 0;
}
