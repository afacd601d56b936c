//! The embedded no_std blobs (built from `parasite/` by `build.rs`) and the code that drives
//! them: the dump parasite, injected into a frozen task, and the restorer, which switches a
//! restored task to its final address space.
//!
//! # Dump parasite API (dump-infra)
//!
//! ```text
//! let tree = sys::tree::seize_tree(pid)?;                // every thread stopped
//! let proc = tree.root();
//! let mut p = Parasite::inject(proc.leader())?;          // remote mmap + blob + socket
//! p.dump_pages(&[RemoteIov { base, len }], file.as_fd())? // vmsplice -> pipe -> splice
//! p.mprotect(&[MprotectReq { addr, len, prot }])?        // PROT_NONE regions readable
//! p.drain_fds(&[0, 1, 2])? -> Vec<(OwnedFd, FdOpts)>     // SCM_RIGHTS + F_GETFD/OWN/SIG
//! p.misc()? -> MiscState                                 // brk, pids, umask, dumpable,
//!                                                        // personality, itimers, rlimits..
//! p.sigactions()? -> Vec<KSigaction> (64, index sig-1)
//! p.posix_timers(&ids)? -> Vec<PosixTimerState>          // ids from /proc/PID/timers
//! p.thread_state(&thread)? -> ThreadState                // sigaltstack, tid address,
//!                                                        // pdeathsig, comm, creds, sched,
//!                                                        // robust list, TLS; any thread
//! p.threads_state(&[&t1, &t2, ..])? -> Vec<ThreadDump>   // the same + regs/xstate/mask of
//!                                                        // many threads, run all at once
//!                                                        // (Parasite::inject_with_slots)
//! p.cure()? (or drop)                                    // unmapped, regs/mask/code back
//! ```
//!
//! The wire format is documented in [`proto`] (`parasite/src/common/dump_proto.rs`).

pub(crate) mod blob;
pub(crate) mod driver;
pub(crate) mod error;
mod gadgets;
pub mod proto;
pub(crate) use crate::sys::sigframe;
pub mod reply;

pub use driver::{Parasite, ThreadDump};
pub use error::Error;
