//! Support shared by every test binary (`mod common;`), one module per concern:
//!
//! ```text
//! counter   a Python counter in its own session (RPC and round-trip tests)
//! cow       the forked-server workload (parent + 3 workers sharing 64 MiB) and its sharing
//! criu      CRIU 4.2 in cross tests (`STASIS_CRIU`): run it, show its log's errors
//! crit      Debian's crit, the independent decoder (also used by the images crate's tests)
//! fixtures  where the CRIU 4.2 fixtures are (also used by the images crate's tests)
//! lock      the cross-process lock of tests that restore or use fixed PIDs
//! page_server  page servers on loopback (stasis or CRIU), their files merged into a dump
//! pki       a throw-away CA, certificates and CRLs (page-server TLS)
//! log       the engine's `tracing` log kept in memory
//! deadline  running a test body under a timeout (a stuck body fails the test)
//! workload  the compiled C workloads of the ptrace/parasite tests, with a watchdog
//! dump      fixture workloads in their own cgroup, probe double, image comparison
//! pids      who holds a fixture's fixed PIDs (not ours: restore in a fresh PID namespace)
//! restore   scratch copies of fixture images, `stasis restore`, verify.sh, leftovers
//! synth     fx-loop images with added threads and memory (restore bench, memory tests)
//! ```
#![allow(dead_code)]

pub mod counter;
pub mod cow;
pub mod crit;
pub mod criu;
pub mod deadline;
pub mod dump;
pub mod fixtures;
pub mod lock;
pub mod log;
pub mod page_server;
pub mod pids;
pub mod pki;
pub mod restore;
pub mod synth;
pub mod workload;
