//! `stasis check`: which kernel features the engine can use on this machine, like
//! `criu check`, each with why it matters when it is missing.
//!
//! Every probe reads files or compares the kernel version; none of them stops or traces a
//! task. `--feature NAME` checks one feature, `--all` also reports optional ones.
//!
//! Then what the caller's privileges allow ([`crate::privileges`]): a privilege without which
//! dump or restore cannot start is an error, the others are warnings (`--all`), each naming
//! the capability it lacks.

use std::ffi::OsString;
use std::path::Path;

use clap::Parser;

use super::common;

/// `stasis check` arguments (`--all`, `--extra`, `--experimental`, `--feature NAME` are
/// among the shared CRIU options).
#[derive(Debug, Parser)]
#[command(name = "check", about = "check kernel features the engine uses")]
pub struct CheckArgs {
    /// Options shared by every verb.
    #[command(flatten)]
    pub common: common::CommonArgs,
}

impl common::VerbArgs for CheckArgs {
    fn common(&self) -> &common::CommonArgs {
        &self.common
    }
}

/// The outcome of one feature probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Missing, with the consequence.
    Missing(String),
}

/// One feature.
pub struct Feature {
    pub name: &'static str,
    /// Needed for every dump/restore (else only for some workloads or options).
    pub required: bool,
    pub probe: fn() -> Outcome,
}

fn kernel_version() -> (u32, u32) {
    let rel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut it = rel
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let maj = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let min = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (maj, min)
}

fn at_least(maj: u32, min: u32, why: &str) -> Outcome {
    let (a, b) = kernel_version();
    if (a, b) >= (maj, min) {
        Outcome::Ok
    } else {
        Outcome::Missing(format!("kernel {a}.{b} is older than {maj}.{min}: {why}"))
    }
}

fn seize() -> Outcome {
    match std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") {
        Ok(s) if s.trim() == "3" => Outcome::Missing(
            "yama ptrace_scope is 3: ptrace is disabled, no task can be seized".into(),
        ),
        _ => at_least(
            3,
            4,
            "PTRACE_SEIZE/PTRACE_INTERRUPT are needed to stop tasks without signals they would see",
        ),
    }
}

fn freezer_v1() -> Outcome {
    if Path::new("/sys/fs/cgroup/freezer/freezer.state").exists()
        || Path::new("/sys/fs/cgroup/freezer").is_dir()
    {
        Outcome::Ok
    } else {
        Outcome::Missing(
            "no cgroup v1 freezer hierarchy: --freeze-cgroup works only with a v2 cgroup".into(),
        )
    }
}

fn freezer_v2() -> Outcome {
    for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        let p = Path::new(root);
        if p.join("cgroup.controllers").exists() {
            // cgroup.freeze exists in every non-root v2 cgroup on kernels with the v2 freezer.
            let has = std::fs::read_dir(p)
                .map(|d| d.flatten().any(|e| e.path().join("cgroup.freeze").exists()))
                .unwrap_or(false);
            if has || kernel_version() >= (5, 2) {
                return Outcome::Ok;
            }
        }
    }
    Outcome::Missing(
        "no cgroup v2 freezer: trees in v2 cgroups are stopped with ptrace only".into(),
    )
}

fn soft_dirty() -> Outcome {
    // A page just written is soft-dirty on kernels with CONFIG_MEM_SOFT_DIRTY (bit 55 of its
    // pagemap entry); without it the bit is always clear.
    let page = vec![1u8; 2 * 4096];
    let addr = (page.as_ptr() as u64 + 4095) & !4095;
    let mut entry = 0;
    let r = crate::proc::pagemap::PagemapReader::open(std::process::id() as i32)
        .and_then(|pm| pm.for_each(addr, addr + 4096, |_, e| entry = e));
    std::hint::black_box(&page);
    match r {
        Ok(()) if entry & crate::proc::pagemap::PM_SOFT_DIRTY != 0 => Outcome::Ok,
        Ok(()) => Outcome::Missing(
            "no soft-dirty bit in pagemap (CONFIG_MEM_SOFT_DIRTY off): incremental dumps track writes with PAGEMAP_SCAN/uffd WP_ASYNC instead".into(),
        ),
        Err(e) => Outcome::Missing(format!("cannot read pagemap: {e}")),
    }
}

fn pagemap_scan() -> Outcome {
    at_least(
        6,
        7,
        "no PAGEMAP_SCAN ioctl: pages are found by reading /proc/PID/pagemap entry by entry",
    )
}

fn mem_dirty_track() -> Outcome {
    match crate::dump::dirty::detect() {
        Ok(_) => Outcome::Ok,
        Err(why) => Outcome::Missing(format!("{why}: pre-dumps copy everything every time")),
    }
}

fn uffd_wp_async() -> Outcome {
    if !Path::new("/dev/userfaultfd").exists()
        && !Path::new("/proc/sys/vm/unprivileged_userfaultfd").exists()
    {
        return Outcome::Missing(
            "no userfaultfd: no lazy restore and no write tracking for incremental dumps".into(),
        );
    }
    at_least(
        6,
        7,
        "no UFFD_FEATURE_WP_ASYNC: incremental dumps cannot track written pages without soft-dirty",
    )
}

/// CRIU's `uffd-noncoop`: a userfaultfd with the fork/remap/remove/unmap events a lazy
/// restore needs (opened for real).
fn uffd_noncoop() -> Outcome {
    match crate::sys::uffd::open_lazy() {
        Ok(_) => Outcome::Ok,
        Err(e) => Outcome::Missing(format!(
            "userfaultfd with non-cooperative events: {e}: no lazy restore (--lazy-pages)"
        )),
    }
}

fn clone3_set_tid() -> Outcome {
    if !Path::new("/proc/sys/kernel/ns_last_pid").exists() {
        return Outcome::Missing("no ns_last_pid: restored tasks cannot get their old pids".into());
    }
    at_least(
        5,
        5,
        "no clone3 set_tid: pids are restored through ns_last_pid, racy with other forks",
    )
}

fn rseq() -> Outcome {
    at_least(
        5,
        13,
        "no PTRACE_GET_RSEQ_CONFIGURATION: threads registered with rseq cannot be dumped",
    )
}

fn time_ns() -> Outcome {
    if Path::new("/proc/self/ns/time").exists() {
        Outcome::Ok
    } else {
        Outcome::Missing(
            "no time namespaces: monotonic clocks jump when restored on another boot".into(),
        )
    }
}

fn memfd_seals() -> Outcome {
    at_least(
        3,
        17,
        "no memfd_create/F_GET_SEALS: memfds and shared anonymous memory cannot be dumped",
    )
}

fn timer_restore_ids() -> Outcome {
    at_least(6, 17, "no PR_TIMER_CREATE_RESTORE_IDS: POSIX timers are recreated by creating timers until ids match")
}

fn pidfd_getfd() -> Outcome {
    at_least(
        5,
        6,
        "no pidfd_getfd: fds are fetched through the parasite only",
    )
}

fn kcmp() -> Outcome {
    at_least(
        3,
        5,
        "no kcmp: files, mm and fs shared between tasks cannot be recognised",
    )
}

fn get_robust_list() -> Outcome {
    at_least(
        2,
        6,
        "no get_robust_list: robust futexes are lost on restore",
    )
}

/// Every feature, mandatory ones first.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "seize",
        required: true,
        probe: seize,
    },
    Feature {
        name: "kcmp",
        required: true,
        probe: kcmp,
    },
    Feature {
        name: "memfd",
        required: true,
        probe: memfd_seals,
    },
    Feature {
        name: "rseq",
        required: true,
        probe: rseq,
    },
    Feature {
        name: "clone3_set_tid",
        required: true,
        probe: clone3_set_tid,
    },
    Feature {
        name: "robust_list",
        required: true,
        probe: get_robust_list,
    },
    Feature {
        name: "freezer_v1",
        required: false,
        probe: freezer_v1,
    },
    Feature {
        name: "freezer_v2",
        required: false,
        probe: freezer_v2,
    },
    Feature {
        name: "pagemap_scan",
        required: false,
        probe: pagemap_scan,
    },
    Feature {
        name: "uffd_wp_async",
        required: false,
        probe: uffd_wp_async,
    },
    Feature {
        name: "uffd-noncoop",
        required: false,
        probe: uffd_noncoop,
    },
    Feature {
        name: "soft_dirty",
        required: false,
        probe: soft_dirty,
    },
    Feature {
        name: "mem_dirty_track",
        required: false,
        probe: mem_dirty_track,
    },
    Feature {
        name: "time_ns",
        required: false,
        probe: time_ns,
    },
    Feature {
        name: "timer_restore_ids",
        required: false,
        probe: timer_restore_ids,
    },
    Feature {
        name: "pidfd_getfd",
        required: false,
        probe: pidfd_getfd,
    },
];

/// What the caller's privileges allow.
fn privileges() -> Vec<crate::privileges::Feature> {
    crate::privileges::Privileges::current().features()
}

/// `stasis check ...`: `args[1]` is "check"; returns the exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    let a: CheckArgs = match common::start(&args, common::Verb::Check) {
        Ok(a) => a,
        Err(status) => return status,
    };
    let c = &a.common.criu;
    let all = c.all || c.extra || c.experimental;
    if let Some(name) = &c.feature {
        if name == "list" {
            for f in FEATURES {
                println!("{}", f.name);
            }
            for f in privileges() {
                println!("{}", f.name);
            }
            return 0;
        }
        if let Some(f) = privileges().into_iter().find(|f| f.name == name) {
            return match f.missing {
                None => {
                    println!("{} is allowed", f.name);
                    0
                }
                Some(why) => {
                    println!("Error: {} is not allowed: {why}", f.name);
                    1
                }
            };
        }
        let Some(f) = FEATURES.iter().find(|f| f.name == name) else {
            eprintln!("Error: unknown feature {name} (see --feature list)");
            return 1;
        };
        return match (f.probe)() {
            Outcome::Ok if f.name == "mem_dirty_track" => {
                let m = crate::dump::dirty::detect().map_or("?", |m| m.name());
                println!("{} is supported (method: {m})", f.name);
                0
            }
            Outcome::Ok => {
                println!("{} is supported", f.name);
                0
            }
            Outcome::Missing(why) => {
                println!("Error: {} is not supported: {why}", f.name);
                1
            }
        };
    }
    let mut bad = false;
    let mut warned = false;
    for f in FEATURES.iter().filter(|f| f.required || all) {
        if let Outcome::Missing(why) = (f.probe)() {
            if f.required {
                bad = true;
                println!("Error ({}): {why}", f.name);
            } else {
                warned = true;
                println!("Warn  ({}): {why}", f.name);
            }
        } else if all {
            println!("Ok    ({})", f.name);
        }
    }
    let p = crate::privileges::Privileges::current();
    for f in p.features() {
        let required = ["map_files", "restore_pids"].contains(&f.name);
        match f.missing {
            Some(why) if required => {
                bad = true;
                println!("Error ({}): {why}", f.name);
            }
            Some(why) if all => {
                warned = true;
                println!("Warn  ({}): {why}", f.name);
            }
            None if all => println!("Ok    ({})", f.name),
            _ => {}
        }
    }
    if bad {
        println!("Looks bad.");
        1
    } else {
        println!(
            "{}",
            if warned {
                "Looks good but some kernel features are missing\nwhich, depending on your process tree, may cause\ndump or restore failure."
            } else {
                "Looks good."
            }
        );
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine() {
        // The machine the project targets: 6.18, no soft-dirty, both freezers.
        assert_eq!((seize)(), Outcome::Ok);
        assert_eq!((clone3_set_tid)(), Outcome::Ok);
        assert_eq!((pagemap_scan)(), Outcome::Ok);
        assert!(matches!((soft_dirty)(), Outcome::Missing(_)));
        assert_eq!(run(vec!["stasis".into(), "check".into()]), 0);
        assert_eq!(
            run(vec![
                "stasis".into(),
                "check".into(),
                "--feature".into(),
                "bogus".into()
            ]),
            1
        );
        assert_eq!(
            run(vec![
                "stasis".into(),
                "check".into(),
                "--feature".into(),
                "soft_dirty".into()
            ]),
            1
        );
    }
}
