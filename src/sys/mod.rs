//! The only layer with raw syscalls, ptrace and `unsafe`. Everything above it is safe Rust.
//!
//! # Dump-side API (owned by dump-infra)
//!
//! ```text
//! tree::seize_tree(root) -> SeizedTree            every thread of the tree, stopped, O(n):
//! tree::seize_tree_frozen(root, Freezer)            seize+interrupt all, then reap all stops
//!   .processes: Vec<SeizedProcess{pid, parent, threads: Vec<SeizedTask> (leader first)}>
//!   .zombies: Vec<Zombie{pid, parent}>, .died: Vec<tid>; drop (or .detach()) detaches all
//! task::SeizedTask::seize(tgid, tid)               one thread (tests, tools)
//!   .regs()/.set_regs(&UserRegs)                    NT_PRSTATUS (fs_base, gs_base included)
//!   .xstate()/.set_xstate(&XState)                  NT_X86_XSTATE, full XSAVE area
//!   .task_regs()/.set_task_regs(&TaskRegs)          both
//!   .sigmask()/.set_sigmask(u64)                    PTRACE_GETSIGMASK / SETSIGMASK
//!   .pending_signals(shared) -> Vec<[u8; 128]>      PTRACE_PEEKSIGINFO, raw siginfo
//!   .rseq() -> RseqConfig                           PTRACE_GET_RSEQ_CONFIGURATION
//!   .tls() -> [UserDesc; 3]                         PTRACE_GET_THREAD_AREA 12..=14
//!   .robust_list() -> (head, len)                   get_robust_list(tid)
//!   .stop_kind() -> Interrupted | GroupStop{sig}    a group-stopped task stays stopped
//!   .peek/.poke, .cont, .interrupt, .wait, .poll    low level
//! regs::UserRegs::syscall_state()/for_image()      CRIU's interrupted-syscall rules
//! remote::Remote::new(&task).syscall(op, nr, &args) -> u64   syscall inside the task;
//!   -4095..-1 -> Error::Remote{op, pid, errno}; registers, mask and code restored exactly
//! remote::RemoteMapping::new(remote, len, prot)    remote mmap, .write/.read, munmap on drop
//! mem::{read, write}(pid, addr, ..)                /proc/PID/mem
//! freezer::Freezer::freeze(cgroup_dir, timeout)    v1 freezer.state / v2 cgroup.freeze;
//!                                                   thaws on drop
//! channel::{pidfd_open, pidfd_getfd, send_msg, recv_msg, pipe, splice_exact, ..}
//! pidns::{command_in_new_pid_ns, run_in_new_pid_ns}   fresh PID namespace (tests)
//! tkill::tgkill, proc_tasks::{threads, children, state, exec_area, is_exiting}, wait::*
//! ```
//!
//! Errors: [`Error`] names operation, pid/path and errno; ESRCH is `Error::TaskDied`
//! ("task N died"). All ptrace calls must come from the thread that seized (the types are
//! not `Send`).

pub(crate) mod channel;
pub(crate) mod clone3;
pub(crate) mod continue_guard;
pub mod cpu;
pub(crate) mod daemon;
pub mod dirty;
pub(crate) mod errno;
pub(crate) mod error;
pub mod fdkinds;
pub(crate) mod fds;
pub(crate) mod freeze_guard;
pub mod freezer;
pub(crate) mod infect;
pub mod mem;
pub(crate) mod netdev;
pub mod pidns;
pub(crate) mod pod;
pub mod proc_tasks;
pub(crate) mod process;
pub mod ptrace;
pub mod regs;
pub mod remote;
pub(crate) mod restorer;
pub(crate) mod seccomp;
pub mod sigframe;
pub mod sock_diag;
pub mod socket;
pub(crate) mod spawn;
pub(crate) mod stop_point;
pub mod task;
pub mod tkill;
pub mod tree;
pub mod tty;
pub mod uffd;
pub(crate) mod wait;

pub use error::{Error, Result};
