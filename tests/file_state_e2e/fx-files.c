/* Self-verifying workload for file and socket state (one scenario per run):
 *   fx-files RESULT WORKDIR SCENARIO
 * sets the scenario's state up under WORKDIR, writes READY to RESULT, and on SIGUSR2 checks
 * the state the way its user would and writes PASS or FAIL: <reason> to RESULT. The verdict is
 * written through a descriptor of RESULT's directory (some scenarios leave the cwd or root
 * in a deleted directory). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fx_verdict.h"

#ifndef F_SEAL_SEAL
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#define F_SEAL_WRITE 0x0008
#define F_ADD_SEALS 1033
#define F_GET_SEALS 1034
#endif
#ifndef SO_GET_FILTER
#define SO_GET_FILTER SO_ATTACH_FILTER
#endif

static const char *work;
static int resdir = -1;
static char resname[256];

static void path_of(char *out, const char *name) { snprintf(out, 512, "%s/%s", work, name); }

static int verdict_out(void) {
    char tmpn[300];
    snprintf(tmpn, sizeof(tmpn), "%s.tmp", resname);
    int fd = openat(resdir, tmpn, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 3;
    write(fd, verdict, strlen(verdict));
    close(fd);
    renameat(resdir, tmpn, resdir, resname);
    return strcmp(verdict, "PASS") != 0;
}

static void fill(char *b, size_t n, int seed) {
    for (size_t i = 0; i < n; i++) b[i] = (char)((i * 7 + seed) ^ (i >> 9));
}

static int same(const char *b, size_t n, int seed) {
    for (size_t i = 0; i < n; i++)
        if (b[i] != (char)((i * 7 + seed) ^ (i >> 9))) return 0;
    return 1;
}

static int exists(const char *p) { struct stat st; return lstat(p, &st) == 0; }

/* ---- unlinked files ---- */
static int g_fd, g_fd2;
static char g_path[512], g_dir[512];
#define G_SIZE 10000
static void ghost_setup(void) {
    char buf[G_SIZE];
    fill(buf, G_SIZE, 1);
    path_of(g_path, "ghost.dat");
    g_fd = open(g_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    write(g_fd, buf, G_SIZE);
    fchmod(g_fd, 0641);
    fchown(g_fd, 1234, 5678);
    struct timespec ts[2] = { { 1000000, 0 }, { 2000000, 0 } };
    futimens(g_fd, ts);
    lseek(g_fd, 123, SEEK_SET);
    g_fd2 = open(g_path, O_RDONLY);
    unlink(g_path);
}
static void ghost_check(void) {
    struct stat st;
    CHECK(fstat(g_fd, &st) == 0, "fstat: %s", strerror(errno));
    CHECK(st.st_size == G_SIZE, "size %lld", (long long)st.st_size);
    CHECK(st.st_nlink == 0, "nlink %lu: no longer unlinked", (unsigned long)st.st_nlink);
    CHECK((st.st_mode & 07777) == 0641, "mode %o", st.st_mode & 07777);
    CHECK(st.st_uid == 1234 && st.st_gid == 5678, "owner %d:%d", st.st_uid, st.st_gid);
    CHECK(st.st_mtime == 2000000, "mtime %lld", (long long)st.st_mtime);
    CHECK(lseek(g_fd, 0, SEEK_CUR) == 123, "pos %lld", (long long)lseek(g_fd, 0, SEEK_CUR));
    char buf[G_SIZE];
    CHECK(pread(g_fd, buf, G_SIZE, 0) == G_SIZE && same(buf, G_SIZE, 1), "content");
    CHECK(!exists(g_path), "%s exists again", g_path);
    CHECK(write(g_fd, "x", 1) == 1, "write: %s", strerror(errno));
    struct stat st2;
    char c = 0;
    CHECK(fstat(g_fd2, &st2) == 0 && st2.st_ino == st.st_ino, "two opens of one file became two files");
    CHECK(pread(g_fd2, &c, 1, 123) == 1 && c == 'x', "a write through one open is not seen through the other");
}

static void ghost_dir_setup(void) {
    char buf[4096];
    fill(buf, sizeof(buf), 2);
    path_of(g_dir, "gone");
    mkdir(g_dir, 0755);
    char sub[600];
    snprintf(sub, sizeof(sub), "%s/deeper", g_dir);
    mkdir(sub, 0755);
    snprintf(g_path, sizeof(g_path), "%s/f.dat", sub);
    g_fd = open(g_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    write(g_fd, buf, sizeof(buf));
    unlink(g_path);
    rmdir(sub);
    rmdir(g_dir);
}
static void ghost_dir_check(void) {
    struct stat st;
    char buf[4096];
    CHECK(fstat(g_fd, &st) == 0 && st.st_nlink == 0 && st.st_size == 4096, "stat");
    CHECK(pread(g_fd, buf, sizeof(buf), 0) == 4096 && same(buf, sizeof(buf), 2), "content");
    CHECK(!exists(g_dir), "%s exists again", g_dir);
}

static void ghost_sparse_setup(void) {
    char buf[4096];
    fill(buf, sizeof(buf), 3);
    path_of(g_path, "sparse.dat");
    g_fd = open(g_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    pwrite(g_fd, buf, sizeof(buf), 64 << 20);
    ftruncate(g_fd, 256 << 20);
    unlink(g_path);
}
static void ghost_sparse_check(void) {
    struct stat st;
    char buf[4096], zero[4096] = { 0 };
    CHECK(fstat(g_fd, &st) == 0 && st.st_nlink == 0 && st.st_size == 256 << 20, "stat");
    CHECK(st.st_blocks < 1024, "holes filled: %lld blocks", (long long)st.st_blocks);
    CHECK(pread(g_fd, buf, sizeof(buf), 64 << 20) == 4096 && same(buf, sizeof(buf), 3), "data");
    CHECK(pread(g_fd, buf, sizeof(buf), 1 << 20) == 4096 && !memcmp(buf, zero, 4096), "hole");
}

static void cwd_gone_setup(void) {
    path_of(g_dir, "cwd-gone");
    mkdir(g_dir, 0700);
    chdir(g_dir);
    rmdir(g_dir);
}
static void cwd_gone_check(void) {
    struct stat st;
    CHECK(stat(".", &st) == 0, "stat cwd: %s", strerror(errno));
    CHECK(st.st_nlink == 0, "cwd nlink %lu", (unsigned long)st.st_nlink);
    CHECK((st.st_mode & 07777) == 0700, "cwd mode %o", st.st_mode & 07777);
    CHECK(!exists(g_dir), "%s exists again", g_dir);
    CHECK(open("new", O_CREAT | O_WRONLY, 0600) < 0 && errno == ENOENT, "create in deleted cwd");
}

static void root_gone_setup(void) {
    path_of(g_dir, "root-gone");
    mkdir(g_dir, 0711);
    chdir(g_dir);
    rmdir(g_dir);
    chroot(".");
}
static void root_gone_check(void) {
    struct stat st, cw;
    CHECK(stat("/", &st) == 0, "stat root: %s", strerror(errno));
    CHECK(st.st_nlink == 0 && (st.st_mode & 07777) == 0711, "root nlink %lu mode %o",
          (unsigned long)st.st_nlink, st.st_mode & 07777);
    CHECK(stat(".", &cw) == 0 && cw.st_ino == st.st_ino, "cwd is not the root");
    CHECK(faccessat(resdir, ".", F_OK, 0) == 0, "result dir");
}

static char *m_priv, *m_shared;
static void ghost_map_setup(void) {
    char buf[8192];
    fill(buf, sizeof(buf), 4);
    path_of(g_path, "mapped.dat");
    int fd = open(g_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    write(fd, buf, sizeof(buf));
    m_priv = mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, fd, 0);
    m_shared = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    unlink(g_path);
}
static void ghost_map_check(void) {
    CHECK(same(m_priv, 8192, 4), "private mapping");
    CHECK(same(m_shared, 8192, 4), "shared mapping");
    m_shared[5] = 'Q';
    CHECK(!exists(g_path), "%s exists again", g_path);
}

/* ---- fd table shared with a child (CLONE_FILES) ---- */
struct shared { volatile int fd, asked, answer, closed; };
static struct shared *sh;
static pid_t kid;
static char kid_stack[65536] __attribute__((aligned(16)));
static int kid_main(void *arg) {
    (void)arg;
    while (!sh->asked) usleep(1000);
    sh->answer = fcntl(sh->fd, F_GETFD) >= 0 ? 1 : 2;
    close(0);
    sh->closed = 1;
    for (;;) pause();
    return 0;
}
static void fdshare_setup(void) {
    sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    kid = clone(kid_main, kid_stack + sizeof(kid_stack), CLONE_FILES | SIGCHLD, NULL);
}
static void fdshare_check(void) {
    int fd = open("/dev/null", O_RDONLY);
    sh->fd = fd;
    sh->asked = 1;
    for (int i = 0; i < 2000 && !sh->closed; i++) usleep(1000);
    CHECK(sh->answer == 1, "the child does not see the parent's new fd %d (%d)", fd, sh->answer);
    CHECK(sh->closed && fcntl(0, F_GETFD) < 0, "the child's close is not the parent's");
    kill(kid, SIGKILL);
}

/* ---- owner and signal of files ---- */
static int o_pipe[2], o_sock[2], o_file;
static volatile sig_atomic_t got_io;
static void on_io(int s) { (void)s; got_io++; }
static void fown_setup(void) {
    pipe(o_pipe);
    fcntl(o_pipe[0], F_SETOWN, getpid());
    fcntl(o_pipe[0], F_SETSIG, SIGRTMIN + 1);
    fcntl(o_pipe[0], F_SETFL, O_ASYNC | O_NONBLOCK);
    socketpair(AF_UNIX, SOCK_STREAM, 0, o_sock);
    struct f_owner_ex ex = { F_OWNER_PGRP, getpgrp() };
    fcntl(o_sock[0], F_SETOWN_EX, &ex);
    fcntl(o_sock[0], F_SETSIG, SIGRTMIN + 2);
    path_of(g_path, "owned");
    o_file = open(g_path, O_RDWR | O_CREAT, 0600);
    fcntl(o_file, F_SETOWN, getpid());
    signal(SIGRTMIN + 1, on_io);
}
static void fown_check(void) {
    CHECK(fcntl(o_pipe[0], F_GETOWN) == getpid(), "pipe owner %d", fcntl(o_pipe[0], F_GETOWN));
    CHECK(fcntl(o_pipe[0], F_GETSIG) == SIGRTMIN + 1, "pipe signal %d", fcntl(o_pipe[0], F_GETSIG));
    CHECK(fcntl(o_pipe[0], F_GETFL) & O_ASYNC, "pipe lost O_ASYNC");
    struct f_owner_ex ex = { 0, 0 };
    fcntl(o_sock[0], F_GETOWN_EX, &ex);
    CHECK(ex.type == F_OWNER_PGRP && ex.pid == getpgrp(), "socket owner %d/%d", ex.type, ex.pid);
    CHECK(fcntl(o_sock[0], F_GETSIG) == SIGRTMIN + 2, "socket signal");
    CHECK(fcntl(o_file, F_GETOWN) == getpid(), "file owner %d", fcntl(o_file, F_GETOWN));
    write(o_pipe[1], "x", 1);
    for (int i = 0; i < 1000 && !got_io; i++) usleep(1000);
    CHECK(got_io, "no SIGIO signal from the pipe");
}

/* ---- status flags and positions ---- */
static int a_app, a_nb, a_one, a_two, a_dup, a_ro;
static void attrs_setup(void) {
    char buf[1000];
    fill(buf, sizeof(buf), 5);
    path_of(g_path, "attrs");
    int fd = open(g_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    write(fd, buf, sizeof(buf));
    close(fd);
    a_app = open(g_path, O_WRONLY | O_APPEND);
    a_nb = open(g_path, O_RDONLY | O_NONBLOCK);
    lseek(a_nb, 77, SEEK_SET);
    a_one = open(g_path, O_RDONLY);
    a_two = open(g_path, O_RDONLY);
    lseek(a_one, 10, SEEK_SET);
    lseek(a_two, 10, SEEK_SET);
    a_dup = dup(a_one);
    a_ro = open(g_path, O_RDONLY | O_NOATIME);
}
static void attrs_check(void) {
    CHECK((fcntl(a_app, F_GETFL) & (O_ACCMODE | O_APPEND)) == (O_WRONLY | O_APPEND), "O_APPEND");
    write(a_app, "zz", 2);
    struct stat st;
    fstat(a_app, &st);
    CHECK(st.st_size == 1002, "append went elsewhere: size %lld", (long long)st.st_size);
    CHECK(fcntl(a_nb, F_GETFL) & O_NONBLOCK, "O_NONBLOCK");
    CHECK(lseek(a_nb, 0, SEEK_CUR) == 77, "pos %lld", (long long)lseek(a_nb, 0, SEEK_CUR));
    CHECK(fcntl(a_ro, F_GETFL) & O_NOATIME, "O_NOATIME");
    char c;
    read(a_one, &c, 1);
    CHECK(lseek(a_dup, 0, SEEK_CUR) == 11, "dup'ed fds no longer share their position");
    CHECK(lseek(a_two, 0, SEEK_CUR) == 10, "separately opened files share a position");
}

/* ---- memfd ---- */
static int mf_a, mf_b;
static char *mf_map;
#define MF_SIZE (3 * 4096 + 100)
static void memfd_setup(void) {
    char buf[MF_SIZE];
    fill(buf, MF_SIZE, 6);
    mf_a = memfd_create("fx-memfd name", MFD_ALLOW_SEALING);
    write(mf_a, buf, MF_SIZE);
    lseek(mf_a, 4000, SEEK_SET);
    fcntl(mf_a, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
    mf_b = memfd_create("plain", 0);
    ftruncate(mf_b, 8192);
    mf_map = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, mf_b, 0);
    memcpy(mf_map + 4096, "mapped", 6);
}
static void memfd_check(void) {
    char link[128], want[128];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", mf_a);
    ssize_t n = readlink(link, want, sizeof(want) - 1);
    want[n > 0 ? n : 0] = 0;
    CHECK(!strcmp(want, "/memfd:fx-memfd name (deleted)"), "name [%s]", want);
    struct stat st;
    fstat(mf_a, &st);
    CHECK(st.st_size == MF_SIZE, "size %lld", (long long)st.st_size);
    CHECK(lseek(mf_a, 0, SEEK_CUR) == 4000, "pos");
    char buf[MF_SIZE];
    CHECK(pread(mf_a, buf, MF_SIZE, 0) == MF_SIZE && same(buf, MF_SIZE, 6), "content");
    CHECK(fcntl(mf_a, F_GET_SEALS) == (F_SEAL_SHRINK | F_SEAL_GROW), "seals %x", fcntl(mf_a, F_GET_SEALS));
    CHECK(ftruncate(mf_a, 10) < 0 && errno == EPERM, "shrink seal not enforced");
    CHECK(fcntl(mf_b, F_GET_SEALS) == F_SEAL_SEAL, "no-sealing memfd seals %x", fcntl(mf_b, F_GET_SEALS));
    CHECK(pread(mf_b, buf, 6, 4096) == 6 && !memcmp(buf, "mapped", 6), "mapped memfd content");
    mf_map[0] = 'W';
    CHECK(pread(mf_b, buf, 1, 0) == 1 && buf[0] == 'W', "mapping not shared with the fd");
}

/* ---- pipe buffer sizes ---- */
static int p_empty[2], p_full[2];
static void pipesz_setup(void) {
    pipe(p_empty);
    fcntl(p_empty[1], F_SETPIPE_SZ, 256 * 1024);
    pipe(p_full);
    fcntl(p_full[1], F_SETPIPE_SZ, 128 * 1024);
    write(p_full[1], "abc", 3);
}
static void pipesz_check(void) {
    CHECK(fcntl(p_empty[0], F_GETPIPE_SZ) == 256 * 1024, "empty pipe size %d", fcntl(p_empty[0], F_GETPIPE_SZ));
    CHECK(fcntl(p_full[0], F_GETPIPE_SZ) == 128 * 1024, "pipe size %d", fcntl(p_full[0], F_GETPIPE_SZ));
    char b[3];
    CHECK(read(p_full[0], b, 3) == 3 && !memcmp(b, "abc", 3), "pipe data");
}

/* ---- socket filter ---- */
static int f_sk, f_tx;
static struct sockaddr_in f_addr;
static void filter_setup(void) {
    /* Accept datagrams of 4 bytes of payload (UDP: 8 + 4), drop the others. */
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 12, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 0xffff),
        BPF_STMT(BPF_RET | BPF_K, 0),
    };
    struct sock_fprog prog = { 4, code };
    f_sk = socket(AF_INET, SOCK_DGRAM, 0);
    f_addr.sin_family = AF_INET;
    f_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(f_sk, (struct sockaddr *)&f_addr, sizeof(f_addr));
    socklen_t l = sizeof(f_addr);
    getsockname(f_sk, (struct sockaddr *)&f_addr, &l);
    setsockopt(f_sk, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog));
    f_tx = socket(AF_INET, SOCK_DGRAM, 0);
}
static void filter_check(void) {
    struct sock_filter got[8];
    socklen_t n = 8;
    CHECK(getsockopt(f_sk, SOL_SOCKET, SO_GET_FILTER, got, &n) == 0 && n == 4, "filter: %u insns", n);
    sendto(f_tx, "abc", 3, 0, (struct sockaddr *)&f_addr, sizeof(f_addr));
    sendto(f_tx, "four", 4, 0, (struct sockaddr *)&f_addr, sizeof(f_addr));
    char b[16];
    CHECK(readn(f_sk, b, 4) == 4 && !memcmp(b, "four", 4), "the filter did not drop the 3-byte datagram");
}

/* ---- UDP after shutdown ---- */
static int u_a, u_b;
static void udp_shut_setup(void) {
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    struct sockaddr_in b = a;
    socklen_t l = sizeof(a);
    u_a = socket(AF_INET, SOCK_DGRAM, 0);
    u_b = socket(AF_INET, SOCK_DGRAM, 0);
    bind(u_a, (struct sockaddr *)&a, sizeof(a));
    bind(u_b, (struct sockaddr *)&b, sizeof(b));
    getsockname(u_a, (struct sockaddr *)&a, &l);
    l = sizeof(b);
    getsockname(u_b, (struct sockaddr *)&b, &l);
    connect(u_a, (struct sockaddr *)&b, sizeof(b));
    connect(u_b, (struct sockaddr *)&a, sizeof(a));
    shutdown(u_a, SHUT_WR);
    shutdown(u_b, SHUT_RD);
}
static void udp_shut_check(void) {
    signal(SIGPIPE, SIG_IGN);
    CHECK(send(u_a, "x", 1, 0) < 0 && errno == EPIPE, "send after SHUT_WR succeeded");
    struct pollfd p = { u_b, POLLIN | POLLRDHUP, 0 };
    CHECK(poll(&p, 1, 0) == 1 && (p.revents & POLLRDHUP), "no POLLRDHUP after SHUT_RD");
    CHECK(send(u_b, "y", 1, 0) == 1, "the other way is closed");
}

/* ---- FIFOs ---- */
static int fi_rw, fi_r, fi_w;
static void fifo_setup(void) {
    path_of(g_path, "fifo");
    mkfifo(g_path, 0600);
    fi_rw = open(g_path, O_RDWR);
    fi_r = open(g_path, O_RDONLY | O_NONBLOCK);
    fi_w = open(g_path, O_WRONLY);
    write(fi_w, "queued", 6);
    char rd[512];
    path_of(rd, "fifo-ronly");
    mkfifo(rd, 0600);
    int k = open(rd, O_RDWR);
    int r = open(rd, O_RDONLY);
    close(k);
    g_fd = r;
}
static void fifo_check(void) {
    char b[8] = { 0 };
    CHECK(read(fi_r, b, 6) == 6 && !memcmp(b, "queued", 6), "fifo data [%s]", b);
    write(fi_w, "more", 4);
    CHECK(read(fi_rw, b, 4) == 4 && !memcmp(b, "more", 4), "fifo connection");
    CHECK((fcntl(g_fd, F_GETFL) & O_ACCMODE) == O_RDONLY, "read-only fifo flags");
    struct stat st;
    CHECK(fstat(g_fd, &st) == 0 && S_ISFIFO(st.st_mode), "not a fifo");
}

/* ---- O_PATH ---- */
static int op_file, op_link, op_dir;
static struct stat op_st;
static void opath_setup(void) {
    path_of(g_path, "opath-target");
    close(open(g_path, O_CREAT | O_WRONLY, 0600));
    stat(g_path, &op_st);
    op_file = open(g_path, O_PATH);
    char l[512];
    path_of(l, "opath-link");
    symlink("opath-target", l);
    op_link = open(l, O_PATH | O_NOFOLLOW);
    op_dir = open(work, O_PATH | O_DIRECTORY);
}
static void opath_check(void) {
    struct stat st;
    CHECK(fcntl(op_file, F_GETFL) & O_PATH, "not O_PATH");
    CHECK(fstat(op_file, &st) == 0 && st.st_ino == op_st.st_ino, "O_PATH file");
    char t[64] = { 0 };
    CHECK(readlinkat(op_link, "", t, sizeof(t)) == 12 && !memcmp(t, "opath-target", 12), "symlink [%s]", t);
    CHECK(faccessat(op_dir, "opath-target", F_OK, 0) == 0, "O_PATH directory");
}

/* ---- shared /dev/zero ---- */
static char *z_map;
static void devzero_setup(void) {
    int fd = open("/dev/zero", O_RDWR);
    z_map = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    memcpy(z_map + 4096, "zero-shared", 11);
    kid = fork();
    if (kid == 0) {
        while (z_map[0] != 'P') usleep(1000);
        z_map[1] = 'C';
        for (;;) pause();
    }
}
static void devzero_check(void) {
    CHECK(!memcmp(z_map + 4096, "zero-shared", 11), "content");
    z_map[0] = 'P';
    for (int i = 0; i < 2000 && z_map[1] != 'C'; i++) usleep(1000);
    CHECK(z_map[1] == 'C', "not shared with the child");
    kill(kid, SIGKILL);
}

/* ---- inotify watch of an unlinked file ---- */
static int in_fd, in_wd, in_wd2;
static void inotify_gone_setup(void) {
    path_of(g_path, "watched-gone");
    g_fd = open(g_path, O_CREAT | O_RDWR, 0600);
    in_fd = inotify_init1(IN_NONBLOCK);
    in_wd = inotify_add_watch(in_fd, g_path, IN_MODIFY);
    in_wd2 = inotify_add_watch(in_fd, work, IN_CREATE);
    unlink(g_path);
    char b[4096];
    while (read(in_fd, b, sizeof(b)) > 0) {}
}
static void inotify_gone_check(void) {
    char p[512], b[4096];
    write(g_fd, "m", 1);
    usleep(10000);
    int n = read(in_fd, b, sizeof(b));
    struct inotify_event *e = (struct inotify_event *)b;
    CHECK(n >= (int)sizeof(*e) && e->wd == in_wd && (e->mask & IN_MODIFY), "no event of the unlinked file (%d)", n);
    path_of(p, "created");
    close(open(p, O_CREAT | O_WRONLY, 0600));
    usleep(10000);
    n = read(in_fd, b, sizeof(b));
    CHECK(n >= (int)sizeof(*e) && e->wd == in_wd2, "directory watch");
}

/* ---- unix socket bound under a removed directory ---- */
static int us_sk, us_peer;
static void unix_gone_setup(void) {
    path_of(g_dir, "sockdir");
    mkdir(g_dir, 0755);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    snprintf(a.sun_path, sizeof(a.sun_path), "%s/s", g_dir);
    us_sk = socket(AF_UNIX, SOCK_DGRAM, 0);
    bind(us_sk, (struct sockaddr *)&a, sizeof(a));
    us_peer = socket(AF_UNIX, SOCK_DGRAM, 0);
    connect(us_peer, (struct sockaddr *)&a, sizeof(a));
    send(us_peer, "hey", 3, 0);
    unlink(a.sun_path);
    rmdir(g_dir);
}
static void unix_gone_check(void) {
    struct sockaddr_un a;
    socklen_t l = sizeof(a);
    char want[600];
    snprintf(want, sizeof(want), "%s/s", g_dir);
    CHECK(getsockname(us_sk, (struct sockaddr *)&a, &l) == 0 && !strcmp(a.sun_path, want), "name [%s]", a.sun_path);
    char b[4];
    CHECK(recv(us_sk, b, 3, MSG_DONTWAIT) == 3 && !memcmp(b, "hey", 3), "queued datagram");
    CHECK(send(us_peer, "two", 3, 0) == 3 && recv(us_sk, b, 3, MSG_DONTWAIT) == 3, "peer");
    CHECK(!exists(g_dir), "%s exists again", g_dir);
}

/* ---- listeners with SO_REUSEPORT and IP_FREEBIND ---- */
static int rp_a, rp_b, rp_free;
static struct sockaddr_in rp_addr;
static void reuseport_setup(void) {
    int one = 1;
    rp_addr.sin_family = AF_INET;
    rp_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    rp_a = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(rp_a, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    bind(rp_a, (struct sockaddr *)&rp_addr, sizeof(rp_addr));
    socklen_t l = sizeof(rp_addr);
    getsockname(rp_a, (struct sockaddr *)&rp_addr, &l);
    listen(rp_a, 4);
    rp_b = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(rp_b, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    bind(rp_b, (struct sockaddr *)&rp_addr, sizeof(rp_addr));
    listen(rp_b, 4);
    struct sockaddr_in f = { .sin_family = AF_INET, .sin_port = htons(0),
                             .sin_addr.s_addr = inet_addr("192.0.2.77") };
    rp_free = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(rp_free, IPPROTO_IP, IP_FREEBIND, &one, sizeof(one));
    bind(rp_free, (struct sockaddr *)&f, sizeof(f));
    listen(rp_free, 1);
}
static void reuseport_check(void) {
    int v = 0;
    socklen_t l = sizeof(v);
    CHECK(getsockopt(rp_b, SOL_SOCKET, SO_REUSEPORT, &v, &l) == 0 && v == 1, "SO_REUSEPORT");
    struct sockaddr_in a;
    l = sizeof(a);
    CHECK(getsockname(rp_b, (struct sockaddr *)&a, &l) == 0 && a.sin_port == rp_addr.sin_port, "port");
    for (int i = 0; i < 4; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        CHECK(connect(c, (struct sockaddr *)&rp_addr, sizeof(rp_addr)) == 0, "connect: %s", strerror(errno));
        close(c);
    }
    l = sizeof(a);
    CHECK(getsockname(rp_free, (struct sockaddr *)&a, &l) == 0 && a.sin_addr.s_addr == inet_addr("192.0.2.77"), "freebind address");
    v = 0;
    l = sizeof(v);
    CHECK(getsockopt(rp_free, IPPROTO_IP, IP_FREEBIND, &v, &l) == 0 && v == 1, "IP_FREEBIND");
}

/* ---- unconnected unix sockets ---- */
static int uu_stream, uu_dgram, uu_seq;
static void unix_unconn_setup(void) {
    uu_stream = socket(AF_UNIX, SOCK_STREAM, 0);
    uu_dgram = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    uu_seq = socket(AF_UNIX, SOCK_SEQPACKET, 0);
}
static void unix_unconn_check(void) {
    int t = 0;
    socklen_t l = sizeof(t);
    CHECK(getsockopt(uu_stream, SOL_SOCKET, SO_TYPE, &t, &l) == 0 && t == SOCK_STREAM, "stream");
    CHECK(getsockopt(uu_dgram, SOL_SOCKET, SO_TYPE, &t, &l) == 0 && t == SOCK_DGRAM, "dgram");
    CHECK(getsockopt(uu_seq, SOL_SOCKET, SO_TYPE, &t, &l) == 0 && t == SOCK_SEQPACKET, "seqpacket");
    CHECK(fcntl(uu_dgram, F_GETFL) & O_NONBLOCK, "dgram O_NONBLOCK");
    struct sockaddr_un a;
    l = abstract(&a, "fx-files-unconn");
    a.sun_path[1] = 'X';
    CHECK(bind(uu_dgram, (struct sockaddr *)&a, l) == 0, "bind after restore: %s", strerror(errno));
}

/* ---- locks ---- */
static int lk_flock, lk_posix, lk_ofd;
static void locks_setup(void) {
    char p[512];
    path_of(p, "lock-flock");
    lk_flock = open(p, O_RDWR | O_CREAT, 0600);
    flock(lk_flock, LOCK_EX);
    path_of(p, "lock-posix");
    lk_posix = open(p, O_RDWR | O_CREAT, 0600);
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 20 };
    fcntl(lk_posix, F_SETLK, &fl);
    path_of(p, "lock-ofd");
    lk_ofd = open(p, O_RDWR | O_CREAT, 0600);
    struct flock ofl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 5 };
    fcntl(lk_ofd, F_OFD_SETLK, &ofl);
}
static void locks_check(void) {
    char p[512];
    path_of(p, "lock-flock");
    int o = open(p, O_RDWR);
    CHECK(flock(o, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK, "flock lost");
    path_of(p, "lock-ofd");
    o = open(p, O_RDWR);
    struct flock q = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100 };
    CHECK(fcntl(o, F_OFD_GETLK, &q) == 0 && q.l_type == F_RDLCK && q.l_start == 0 && q.l_len == 5, "OFD lock lost");
    pid_t c = fork();
    if (c == 0) {
        char pp[512];
        path_of(pp, "lock-posix");
        int fd = open(pp, O_RDWR);
        struct flock q2 = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100 };
        _exit(fcntl(fd, F_GETLK, &q2) == 0 && q2.l_type == F_WRLCK && q2.l_start == 10 && q2.l_len == 20 ? 0 : 1);
    }
    int status = 1;
    waitpid(c, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "POSIX lock lost");
}

/* ---- descriptors in flight (SCM_RIGHTS): a pipe's read end that only the queue holds,
 * and a file the process still has open (one open file description: a shared offset) ---- */
static int sc_pair[2], sc_file;
static void scm_setup(void) {
    socketpair(AF_UNIX, SOCK_STREAM, 0, sc_pair);
    int p[2];
    pipe(p);
    write(p[1], "inflight", 8);
    char fp[512];
    path_of(fp, "scm.dat");
    sc_file = open(fp, O_RDWR | O_CREAT | O_TRUNC, 0600);
    write(sc_file, "0123456789", 10);
    lseek(sc_file, 2, SEEK_SET);
    char c = 'm';
    struct iovec io = { &c, 1 };
    char cbuf[CMSG_SPACE(2 * sizeof(int))];
    struct msghdr mh = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(2 * sizeof(int));
    int two[2] = { p[0], sc_file };
    memcpy(CMSG_DATA(cm), two, sizeof(two));
    sendmsg(sc_pair[0], &mh, 0);
    write(sc_pair[0], "after", 5);
    close(p[0]);
    close(p[1]);
}
static void scm_check(void) {
    char c = 0;
    struct iovec io = { &c, 1 };
    char cbuf[CMSG_SPACE(2 * sizeof(int))];
    struct msghdr mh = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
    CHECK(recvmsg(sc_pair[1], &mh, MSG_DONTWAIT) == 1 && c == 'm', "message");
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    int fds[2] = { -1, -1 };
    if (cm && cm->cmsg_type == SCM_RIGHTS && cm->cmsg_len == CMSG_LEN(2 * sizeof(int)))
        memcpy(fds, CMSG_DATA(cm), sizeof(fds));
    CHECK(fds[0] >= 0 && fds[1] >= 0, "no descriptors came with the message");
    char b[8];
    CHECK(read(fds[0], b, 8) == 8 && !memcmp(b, "inflight", 8), "the passed pipe");
    CHECK(read(fds[0], b, 8) == 0, "the passed pipe has a writer again");
    CHECK(lseek(fds[1], 0, SEEK_CUR) == 2, "passed file offset %lld", (long long)lseek(fds[1], 0, SEEK_CUR));
    lseek(sc_file, 7, SEEK_SET);
    CHECK(lseek(fds[1], 0, SEEK_CUR) == 7, "the passed file is not the open one (offset not shared)");
    CHECK(read(fds[1], b, 3) == 3 && !memcmp(b, "789", 3), "passed file content");
    char rest[8] = { 0 };
    CHECK(readn(sc_pair[1], rest, 5) == 5 && !memcmp(rest, "after", 5), "the data after the message");
}

/* ---- the controlling terminal (a pty slave) and a descriptor of /dev/tty ---- */
static int k_fd;
static void devtty_setup(void) {
    int pm = posix_openpt(O_RDWR | O_NOCTTY);
    grantpt(pm);
    unlockpt(pm);
    int ps = open(ptsname(pm), O_RDWR | O_NOCTTY);
    ioctl(ps, TIOCSCTTY, 0);
    k_fd = open("/dev/tty", O_RDWR);
}
static void devtty_check(void) { CHECK(isatty(k_fd), "/dev/tty"); }
/* ---- pidfds: of itself, of a child (O_NONBLOCK; signalled and waited for through it after
 * the restore), and of a child that had exited and been reaped (stays "exited") ---- */
#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif
static int pf_kid_fd, pf_dead_fd;
static pid_t pf_kid;
static void pidfd_setup(void) {
    k_fd = syscall(SYS_pidfd_open, getpid(), 0);
    pf_kid = fork();
    if (pf_kid == 0) { for (;;) pause(); }
    pf_kid_fd = syscall(SYS_pidfd_open, pf_kid, PIDFD_NONBLOCK);
    int p[2];
    pipe(p);
    pid_t d = fork();
    if (d == 0) { char c; close(p[1]); read(p[0], &c, 1); _exit(3); }
    close(p[0]);
    pf_dead_fd = syscall(SYS_pidfd_open, d, 0);
    close(p[1]);
    waitpid(d, NULL, 0);
}
static void pidfd_check(void) {
    CHECK(k_fd >= 0 && syscall(SYS_pidfd_send_signal, k_fd, 0, NULL, 0) == 0, "pidfd of itself: %s", strerror(errno));
    CHECK(fcntl(pf_kid_fd, F_GETFL) & O_NONBLOCK, "the child's pidfd lost O_NONBLOCK");
    struct pollfd q = { .fd = pf_kid_fd, .events = POLLIN };
    CHECK(poll(&q, 1, 0) == 0, "the live child's pidfd says it exited");
    CHECK(syscall(SYS_pidfd_send_signal, pf_kid_fd, SIGTERM, NULL, 0) == 0, "signal through the child's pidfd: %s", strerror(errno));
    CHECK(poll(&q, 1, 5000) == 1, "the child's pidfd does not tell its exit");
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    CHECK(waitid((idtype_t)P_PIDFD, pf_kid_fd, &si, WEXITED) == 0 && si.si_pid == pf_kid && si.si_status == SIGTERM,
          "waitid on the child's pidfd: pid %d status %d", si.si_pid, si.si_status);
    struct pollfd qd = { .fd = pf_dead_fd, .events = POLLIN };
    CHECK(pf_dead_fd >= 0 && poll(&qd, 1, 0) == 1, "the pidfd of the reaped child is not readable");
    CHECK(syscall(SYS_pidfd_send_signal, pf_dead_fd, 0, NULL, 0) < 0 && errno == ESRCH, "the reaped child's pidfd reaches a process");
}
/* ---- fanotify: a group with an inode mark (FAN_MODIFY) on a file; after the restore a write
 * to it is reported, with a descriptor of that file ---- */
static char fa_path[512];
static void fanotify_setup(void) {
    path_of(fa_path, "fan.dat");
    int f = open(fa_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    close(f);
    k_fd = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK, O_RDONLY);
    fanotify_mark(k_fd, FAN_MARK_ADD, FAN_MODIFY, AT_FDCWD, fa_path);
}
static void fanotify_check(void) {
    CHECK(k_fd >= 0 && fcntl(k_fd, F_GETFD) >= 0, "fanotify fd");
    struct fanotify_event_metadata ev[8];
    CHECK(read(k_fd, ev, sizeof(ev)) < 0 && errno == EAGAIN, "an event before any write (or not O_NONBLOCK)");
    int f = open(fa_path, O_WRONLY | O_APPEND);
    write(f, "x", 1);
    struct stat want, got;
    fstat(f, &want);
    close(f);
    ssize_t n = read(k_fd, ev, sizeof(ev));
    CHECK(n >= (ssize_t)sizeof(ev[0]) && (ev[0].mask & FAN_MODIFY), "no FAN_MODIFY event (%zd, %s)", n, strerror(errno));
    CHECK(n > 0 && ev[0].fd >= 0 && fstat(ev[0].fd, &got) == 0 && got.st_ino == want.st_ino, "the event's file is not the marked one");
}

/* ---- a file owned by one thread (F_OWNER_TID) ---- */
static int t_pipe[2];
static volatile pid_t t_tid, t_got;
static void on_tid_io(int s) { (void)s; t_got = (pid_t)syscall(SYS_gettid); }
static void *tid_owner(void *arg) {
    (void)arg;
    t_tid = (pid_t)syscall(SYS_gettid);
    for (;;) pause();
    return NULL;
}
static void fown_tid_setup(void) {
    pthread_t th;
    pthread_create(&th, NULL, tid_owner, NULL);
    while (!t_tid) usleep(1000);
    signal(SIGRTMIN + 3, on_tid_io);
    pipe(t_pipe);
    struct f_owner_ex ex = { F_OWNER_TID, t_tid };
    fcntl(t_pipe[0], F_SETOWN_EX, &ex);
    fcntl(t_pipe[0], F_SETSIG, SIGRTMIN + 3);
    fcntl(t_pipe[0], F_SETFL, O_ASYNC | O_NONBLOCK);
}
static void fown_tid_check(void) {
    struct f_owner_ex ex = { 0, 0 };
    fcntl(t_pipe[0], F_GETOWN_EX, &ex);
    CHECK(ex.type == F_OWNER_TID && ex.pid == t_tid, "pipe owner type %d pid %d, want thread %d",
          ex.type, ex.pid, t_tid);
    write(t_pipe[1], "x", 1);
    for (int i = 0; i < 1000 && !t_got; i++) usleep(1000);
    CHECK(t_got == t_tid, "the pipe's signal went to thread %d, not its owner %d", t_got, t_tid);
}

/* ---- unlinked symlink (O_PATH|O_NOFOLLOW) and device node ---- */
static int gl_fd, gd_fd;
static char gl_path[512], gd_path[512];
static void ghost_link_setup(void) {
    path_of(gl_path, "ghost-link");
    symlink("../some/ghost-target", gl_path);
    gl_fd = open(gl_path, O_PATH | O_NOFOLLOW);
    unlink(gl_path);
}
static void ghost_link_check(void) {
    struct stat st;
    char t[64] = { 0 };
    CHECK(fstatat(gl_fd, "", &st, AT_EMPTY_PATH) == 0, "fstat: %s", strerror(errno));
    CHECK(S_ISLNK(st.st_mode), "mode %o: not a symlink", st.st_mode);
    CHECK(st.st_nlink == 0, "nlink %lu: no longer unlinked", (unsigned long)st.st_nlink);
    CHECK(readlinkat(gl_fd, "", t, sizeof(t)) == 20 && !memcmp(t, "../some/ghost-target", 20),
          "target [%s]", t);
    CHECK(fcntl(gl_fd, F_GETFL) & O_PATH, "not O_PATH");
    CHECK(!exists(gl_path), "%s exists again", gl_path);
}
static void ghost_dev_setup(void) {
    path_of(gd_path, "ghost-null");
    mknod(gd_path, S_IFCHR | 0620, makedev(1, 3));
    chmod(gd_path, 0620); /* past the umask */
    gd_fd = open(gd_path, O_RDWR);
    unlink(gd_path);
}
static void ghost_dev_check(void) {
    struct stat st;
    CHECK(fstat(gd_fd, &st) == 0, "fstat: %s", strerror(errno));
    CHECK(S_ISCHR(st.st_mode) && (st.st_mode & 07777) == 0620, "mode %o", st.st_mode);
    CHECK(major(st.st_rdev) == 1 && minor(st.st_rdev) == 3, "rdev %u:%u", major(st.st_rdev),
          minor(st.st_rdev));
    CHECK(st.st_nlink == 0, "nlink %lu: no longer unlinked", (unsigned long)st.st_nlink);
    CHECK((fcntl(gd_fd, F_GETFL) & O_ACCMODE) == O_RDWR, "flags");
    CHECK(write(gd_fd, "x", 1) == 1, "write to the null device: %s", strerror(errno));
    CHECK(!exists(gd_path), "%s exists again", gd_path);
}

struct scenario { const char *name; void (*setup)(void); void (*check)(void); };
static const struct scenario scenarios[] = {
    { "ghost", ghost_setup, ghost_check },
    { "ghost_dir", ghost_dir_setup, ghost_dir_check },
    { "ghost_sparse", ghost_sparse_setup, ghost_sparse_check },
    { "cwd_gone", cwd_gone_setup, cwd_gone_check },
    { "root_gone", root_gone_setup, root_gone_check },
    { "ghost_map", ghost_map_setup, ghost_map_check },
    { "fdshare", fdshare_setup, fdshare_check },
    { "fown", fown_setup, fown_check },
    { "attrs", attrs_setup, attrs_check },
    { "memfd", memfd_setup, memfd_check },
    { "pipesz", pipesz_setup, pipesz_check },
    { "filter", filter_setup, filter_check },
    { "udp_shut", udp_shut_setup, udp_shut_check },
    { "fifo", fifo_setup, fifo_check },
    { "opath", opath_setup, opath_check },
    { "devzero", devzero_setup, devzero_check },
    { "inotify_gone", inotify_gone_setup, inotify_gone_check },
    { "unix_gone", unix_gone_setup, unix_gone_check },
    { "reuseport", reuseport_setup, reuseport_check },
    { "unix_unconn", unix_unconn_setup, unix_unconn_check },
    { "locks", locks_setup, locks_check },
    { "scm", scm_setup, scm_check },
    { "devtty", devtty_setup, devtty_check },
    { "pidfd", pidfd_setup, pidfd_check },
    { "fanotify", fanotify_setup, fanotify_check },
    { "fown_tid", fown_tid_setup, fown_tid_check },
    { "ghost_link", ghost_link_setup, ghost_link_check },
    { "ghost_dev", ghost_dev_setup, ghost_dev_check },
};

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    const char *result = argv[1];
    work = argv[2];
    const struct scenario *s = NULL;
    for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
        if (!strcmp(scenarios[i].name, argv[3])) s = &scenarios[i];
    if (!s) return 2;
    detach_stdio();
    char dir[512];
    snprintf(dir, sizeof(dir), "%s", result);
    char *slash = strrchr(dir, '/');
    if (!slash) return 2;
    *slash = 0;
    snprintf(resname, sizeof(resname), "%s", slash + 1);
    resdir = open(dir, O_RDONLY | O_DIRECTORY);
    signal(SIGUSR2, on_go);
    s->setup();
    strcpy(verdict, "READY");
    verdict_out();
    strcpy(verdict, "PASS");
    while (!go) pause();
    s->check();
    return verdict_out();
}
