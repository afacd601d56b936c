//! `criu_opts` as a command line: every RPC option becomes the CRIU option of the same
//! meaning (CRIU's own spelling), so that an RPC request goes through the one option table
//! and the same typed options, checks and refusals as `stasis dump ...` does
//! (`cli::criu_options`, `cli::criu_args`).
//!
//! ```text
//!  criu_opts{images_dir_fd 5, pid 42, leave_running, log_file "dump.log", log_level 4}
//!    ─► criu dump -D /proc/<client>/fd/5 -o dump.log --verbosity=4 -t 42 --leave-running
//!    ─► default config files, then the RPC config file last (it wins, as with CRIU)
//!    ─► split_not_built ─► clap (DumpArgs/RestoreArgs/...) ─► CriuArgs::check
//! ```
//!
//! Descriptors the client names (`images_dir_fd`, `work_dir_fd`, `status_fd`) are opened as
//! `/proc/<client pid>/fd/N`, as CRIU does; `ps.fd` and `inherit_fd` are swrk-only and name
//! descriptors this process inherited.

use std::ffi::OsString;

use stasis_images::pb::CriuOpts;

use crate::cli::criu_options;

/// CLONE_NEWNET, the only namespace `empty_ns` may name.
const CLONE_NEWNET: u32 = 0x4000_0000;

/// Where the request comes from.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The client's PID (its descriptors are `/proc/PID/fd/N`).
    pub pid: i32,
    /// `swrk` mode: the client is our parent and its descriptors are inherited.
    pub swrk: bool,
}

/// The command line (`criu VERB ...`) of `o`, before config files. `verb` is the CLI verb
/// (`dump`, `pre-dump`, `restore`, `check`, `page-server`, `cpuinfo`).
pub fn to_args(verb: &str, o: &CriuOpts, peer: Peer) -> Result<Vec<OsString>, String> {
    let mut a = Args(vec!["criu".into(), verb.into()]);
    let fd_path = |fd: i32| format!("/proc/{}/fd/{fd}", peer.pid);
    // The images directory.
    if o.images_dir_fd != -1 {
        a.val("--images-dir", fd_path(o.images_dir_fd));
    } else if let Some(d) = &o.images_dir {
        let d = std::path::absolute(d).map_err(|e| format!("images_dir {d}: {e}"))?;
        a.val("--images-dir", &d);
    } else if verb != "check" {
        return Err("Neither images_dir_fd nor images_dir was passed by RPC client.".into());
    }
    if let Some(fd) = o.work_dir_fd {
        a.val("--work-dir", fd_path(fd));
    }
    // The log: a file name in the work directory (criu.log by default), or standard error.
    match &o.log_file {
        Some(f) if f.contains('/') => {
            return Err(format!(
                "log_file {f}: no subdirs are allowed in log_file name"
            ))
        }
        Some(f) => a.val("--log-file", f),
        None if o.log_to_stderr == Some(true) => {}
        None if verb == "check" => {}
        None => a.val("--log-file", "criu.log"),
    }
    let level = o.log_level.unwrap_or(2).clamp(0, 4);
    a.push(format!("--verbosity={level}"));
    if matches!(verb, "dump" | "pre-dump") {
        a.val("--tree", o.pid.unwrap_or(peer.pid).to_string());
    }
    for (v, long) in [
        (o.leave_running, "leave-running"),
        (o.leave_stopped, "leave-stopped"),
        (o.tcp_established, "tcp-established"),
        (o.evasive_devices, "evasive-devices"),
        (o.shell_job, "shell-job"),
        (o.file_locks, "file-locks"),
        (o.track_mem, "track-mem"),
        (o.auto_dedup, "auto-dedup"),
        (o.link_remap, "link-remap"),
        (o.force_irmap, "force-irmap"),
        (o.ext_sharing, "enable-external-sharing"),
        (o.ext_masters, "enable-external-masters"),
        (o.tcp_skip_in_flight, "skip-in-flight"),
        (o.weak_sysctls, "weak-sysctls"),
        (o.lazy_pages, "lazy-pages"),
        (o.tcp_close, "tcp-close"),
        (o.tls, "tls"),
        (o.tls_no_cn_verify, "tls-no-cn-verify"),
        (o.mntns_compat_mode, "mntns-compat-mode"),
        (o.skip_file_rwx_check, "skip-file-rwx-check"),
        (o.unprivileged, "unprivileged"),
        (o.display_stats, "display-stats"),
        (o.allow_uprobes, "allow-uprobes"),
        (o.ghost_fiemap, "ghost-fiemap"),
    ] {
        a.flag(v, long);
    }
    if o.ext_unix_sk == Some(true) {
        a.push("--ext-unix-sk");
        for sk in &o.unix_sk_ino {
            a.push(format!("--ext-unix-sk={}", sk.inode));
        }
    }
    if let Some(ps) = o.ps.as_ref().filter(|_| o.lazy_pages != Some(true)) {
        if verb != "page-server" {
            a.push("--page-server");
        }
        if let Some(addr) = &ps.address {
            a.val("--address", addr);
        }
        if let Some(port) = ps.port {
            a.val("--port", port.to_string());
        }
        if let Some(fd) = ps.fd {
            if !peer.swrk {
                return Err("ps.fd is allowed only in swrk mode".into());
            }
            a.val("--ps-socket", fd.to_string());
        }
    }
    for (v, long) in [
        (&o.root, "root"),
        (&o.parent_img, "prev-images-dir"),
        (&o.cgroup_props, "cgroup-props"),
        (&o.cgroup_props_file, "cgroup-props-file"),
        (&o.freeze_cgroup, "freeze-cgroup"),
        (&o.lsm_profile, "lsm-profile"),
        (&o.tls_cacert, "tls-cacert"),
        (&o.tls_cacrl, "tls-cacrl"),
        (&o.tls_cert, "tls-cert"),
        (&o.tls_key, "tls-key"),
        (&o.cgroup_yard, "cgroup-yard"),
        (&o.lsm_mount_context, "lsm-mount-context"),
    ] {
        if let Some(v) = v {
            a.val(&format!("--{long}"), v);
        }
    }
    for (list, long) in [
        (&o.skip_mnt, "skip-mnt"),
        (&o.enable_fs, "enable-fs"),
        (&o.irmap_scan_paths, "irmap-scan-path"),
        (&o.external, "external"),
        (&o.cgroup_dump_controller, "cgroup-dump-controller"),
    ] {
        for v in list {
            a.val(&format!("--{long}"), v);
        }
    }
    for v in &o.veths {
        a.val("--veth-pair", format!("{}={}", v.if_in, v.if_out));
    }
    for m in &o.ext_mnt {
        a.val("--ext-mount-map", format!("{}:{}", m.key, m.val));
    }
    if o.auto_ext_mnt == Some(true) {
        a.val("--ext-mount-map", "auto");
    }
    for c in &o.cg_root {
        match &c.ctrl {
            Some(ctl) => a.val("--cgroup-root", format!("{ctl}:{}", c.path)),
            None => a.val("--cgroup-root", &c.path),
        }
    }
    for j in &o.join_ns {
        let mut v = format!("{}:{}", j.ns, j.ns_file);
        if let Some(x) = &j.extra_opt {
            v = format!("{v},{x}");
        }
        a.val("--join-ns", v);
    }
    if o.rst_sibling.is_some() && !peer.swrk {
        return Err("rst_sibling is not allowed in standalone service".into());
    }
    a.flag(o.rst_sibling, "restore-sibling");
    if !o.inherit_fd.is_empty() && !peer.swrk {
        return Err("inherit_fd is not allowed in standalone service".into());
    }
    for i in &o.inherit_fd {
        a.val("--inherit-fd", format!("fd[{}]:{}", i.fd, i.key));
    }
    if let Some(caps) = o.cpu_cap {
        a.push(format!("--cpu-cap={}", cpu_cap_names(caps)));
    }
    // manage_cgroups (a bool, kept for old clients), overridden by manage_cgroups_mode.
    let mode = match o.manage_cgroups_mode {
        Some(m) => match m {
            0 => Some("ignore"),
            1 => Some("none"),
            2 => Some("props"),
            3 => Some("soft"),
            4 => Some("full"),
            5 => Some("strict"),
            6 => None,
            m => return Err(format!("manage_cgroups_mode: unknown mode {m}")),
        },
        None => o.manage_cgroups.map(|b| if b { "soft" } else { "ignore" }),
    };
    if let Some(m) = mode {
        a.push(format!("--manage-cgroups={m}"));
    }
    if let Some(g) = o.ghost_limit {
        a.val("--ghost-limit", g.to_string());
    }
    if let Some(ns) = o.empty_ns {
        if ns & !CLONE_NEWNET != 0 {
            return Err(format!("empty_ns: {ns:#x} names namespaces other than net"));
        }
        if ns != 0 {
            a.val("--empty-ns", "net");
        }
    }
    if let Some(t) = o.timeout {
        a.val("--timeout", t.to_string());
    }
    if let Some(fd) = o.status_fd {
        a.val("--status-fd", reopen_status_fd(&fd_path(fd))?.to_string());
    }
    if let Some(m) = o.pre_dump_mode {
        match m {
            1 => a.val("--pre-dump-mode", "splice"),
            2 => a.val("--pre-dump-mode", "read"),
            m => return Err(format!("pre_dump_mode: unknown mode {m}")),
        }
    }
    if let Some(m) = o.network_lock {
        match m {
            1 => a.val("--network-lock", "iptables"),
            2 => a.val("--network-lock", "nftables"),
            3 => a.val("--network-lock", "skip"),
            m => return Err(format!("network_lock: unknown method {m}")),
        }
    }
    if let Some(m) = o.file_validation_method {
        match m {
            1 => a.val("--file-validation", "filesize"),
            2 => a.val("--file-validation", "buildid"),
            m => return Err(format!("file_validation_method: unknown method {m}")),
        }
    }
    if o.pidfd_store_sk.is_some() {
        // Only used to tell PID reuse between pre-dumps; FEATURE_CHECK reports it absent.
        tracing::warn!("pidfd_store_sk is ignored: the pidfd store is not built");
    }
    if !o.exec_cmd.is_empty() {
        a.push("--exec-cmd");
        a.push("--");
        for c in &o.exec_cmd {
            a.push(c);
        }
    }
    Ok(a.0)
}

/// Appends the options of the request's `config_file` after the RPC's own (before `--`):
/// CRIU evaluates it last, so that it overrides the request (runc's `runc.conf`).
pub fn append_config(args: &mut Vec<OsString>, config: &[OsString]) {
    let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
    args.splice(at..at, config.iter().cloned());
}

/// The `--cpu-cap` value of CRIU's `CPU_CAP_*` bits.
fn cpu_cap_names(caps: u32) -> String {
    use crate::cpuinfo::{CAP_ALL, CAP_CPU, CAP_FPU, CAP_INS};
    if caps & CAP_ALL == CAP_ALL {
        return "all".into();
    }
    let names: Vec<&str> = [(CAP_FPU, "fpu"), (CAP_CPU, "cpu"), (CAP_INS, "ins")]
        .iter()
        .filter(|(bit, _)| caps & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// Opens the client's status descriptor for writing and leaves it open for `--status-fd`.
fn reopen_status_fd(path: &str) -> Result<i32, String> {
    use std::os::fd::IntoRawFd;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("status_fd: reopen {path}: {e}"))?;
    Ok(f.into_raw_fd())
}

/// The command line being built.
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, a: impl Into<OsString>) {
        self.0.push(a.into());
    }

    fn val(&mut self, long: &str, v: impl AsRef<std::ffi::OsStr>) {
        self.0.push(long.into());
        self.0.push(v.as_ref().to_os_string());
    }

    /// `Some(true)`: `--NAME`; `Some(false)`: `--no-NAME` for CRIU's negatable options (so
    /// that it overrides a config file), nothing for the others (nor for options refused as
    /// not built: asking for them off is honoured).
    fn flag(&mut self, v: Option<bool>, long: &str) {
        match v {
            Some(true) => self.push(format!("--{long}")),
            Some(false)
                if criu_options::by_long(long).is_some_and(|o| {
                    o.negatable && !matches!(o.status, criu_options::Status::NotBuilt(_))
                }) =>
            {
                self.push(format!("--no-{long}"))
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Peer {
        Peer {
            pid: 77,
            swrk: true,
        }
    }

    #[test]
    fn dump_request_becomes_criu_options() {
        let o = CriuOpts {
            images_dir_fd: 5,
            pid: Some(42),
            leave_running: Some(true),
            shell_job: Some(false),
            log_file: Some("dump.log".into()),
            log_level: Some(9),
            manage_cgroups_mode: Some(0),
            external: vec!["mnt[/x]:y".into()],
            exec_cmd: vec![],
            ..Default::default()
        };
        let a = to_args("dump", &o, peer()).unwrap();
        let s: Vec<String> = a.iter().map(|x| x.to_string_lossy().into_owned()).collect();
        assert_eq!(
            s,
            [
                "criu",
                "dump",
                "--images-dir",
                "/proc/77/fd/5",
                "--log-file",
                "dump.log",
                "--verbosity=4",
                "--tree",
                "42",
                "--leave-running",
                "--no-shell-job",
                "--external",
                "mnt[/x]:y",
                "--manage-cgroups=ignore"
            ]
        );
    }

    #[test]
    fn refusals() {
        let o = CriuOpts {
            images_dir_fd: -1,
            ..Default::default()
        };
        assert!(to_args("dump", &o, peer())
            .unwrap_err()
            .contains("images_dir"));
        assert!(to_args("check", &o, peer()).is_ok());
        let o = CriuOpts {
            images_dir_fd: 3,
            log_file: Some("a/b.log".into()),
            ..Default::default()
        };
        assert!(to_args("dump", &o, peer()).unwrap_err().contains("subdirs"));
        let o = CriuOpts {
            images_dir_fd: 3,
            rst_sibling: Some(true),
            ..Default::default()
        };
        let service = Peer {
            pid: 1,
            swrk: false,
        };
        assert!(to_args("restore", &o, service).is_err());
        assert_eq!(cpu_cap_names(u32::MAX), "all");
        assert_eq!(cpu_cap_names(1 | 4), "fpu,ins");
        assert_eq!(cpu_cap_names(0), "none");
    }

    #[test]
    fn config_goes_before_the_command() {
        let mut a: Vec<OsString> = ["criu", "restore", "--exec-cmd", "--", "sh"]
            .iter()
            .map(OsString::from)
            .collect();
        append_config(&mut a, &["--tcp-close".into()]);
        assert_eq!(a[3], "--tcp-close");
        assert_eq!(a[4], "--");
    }
}
