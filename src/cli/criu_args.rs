//! The CRIU options every verb parses (flattened into [`super::common::CommonArgs`]), and the
//! checks that refuse, by name, a value that cannot be honoured (see [`super::criu_options`]).
//!
//! Options not built yet are refused before clap sees them and so are not fields here.

use std::path::PathBuf;

use clap::Args;

use super::criu_options::parse_size;

/// CRIU's default `--ghost-limit` (1 MiB).
pub const DEFAULT_GHOST_LIMIT: u64 = 1 << 20;

/// The verb a check runs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Dump,
    Restore,
    Check,
    PageServer,
    LazyPages,
}

/// CRIU options shared by every verb (CRIU accepts each of them on every command).
#[derive(Debug, Clone, Args, Default)]
pub struct CriuArgs {
    /// Dump: root of the process tree (restore: obsolete, ignored with a warning)
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pub tree: Option<i32>,
    /// Dump: keep the tree running after the dump
    #[arg(short = 'R', long = "leave-running")]
    pub leave_running: bool,
    /// Dump: leave the tree stopped (SIGSTOP) after the dump instead of killing it; restore:
    /// leave the restored tree stopped
    #[arg(short = 's', long = "leave-stopped")]
    pub leave_stopped: bool,
    /// Dump: record only this cgroup hierarchy (its controller field as in /proc/PID/cgroup;
    /// repeatable; default: all)
    #[arg(long = "cgroup-dump-controller", value_name = "NAME")]
    pub cgroup_dump_controller: Vec<String>,
    /// Dump: controller properties to record, in CRIU's format (`"cpu":\n - "strategy":
    /// "replace"\n - "properties": ["cpu.shares"]`)
    #[arg(long = "cgroup-props", value_name = "TEXT")]
    pub cgroup_props: Option<String>,
    /// Dump: the same, read from FILE (applied after --cgroup-props)
    #[arg(long = "cgroup-props-file", value_name = "FILE")]
    pub cgroup_props_file: Option<PathBuf>,
    /// Restore: return once the tree runs instead of waiting for the root task
    #[arg(short = 'd', long = "restore-detached", visible_alias = "daemon")]
    pub restore_detached: bool,
    /// Restore (with -d): make the root task a sibling of stasis, a child of its caller
    #[arg(short = 'S', long = "restore-sibling")]
    pub restore_sibling: bool,
    /// Restore: join an existing namespace, NS:PID|PATH (net, uts, ipc, time, mnt, cgroup);
    /// repeatable
    #[arg(short = 'J', long = "join-ns", value_name = "NS:PID|PATH")]
    pub join_ns: Vec<String>,
    /// Root of the tree's file system: only `/` (the default) is accepted yet
    #[arg(short = 'r', long = "root", value_name = "PATH")]
    pub root: Option<PathBuf>,
    /// Allow unix sockets whose peer is outside the tree (`=INODE`, one socket, is refused)
    #[arg(short = 'x', long = "ext-unix-sk", value_name = "INODE", num_args = 0..=1,
          require_equals = true, default_missing_value = "")]
    pub ext_unix_sk: Option<String>,
    /// Dump/restore established TCP connections (TCP repair)
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Dump established TCP connections without their state; restore them closed
    #[arg(long = "tcp-close")]
    pub tcp_close: bool,
    /// Dump: skip connections still in a listening socket's accept queue instead of failing
    #[arg(long = "skip-in-flight")]
    pub skip_in_flight: bool,
    /// Close file descriptor FD of stasis before anything else (as CRIU, at parse time)
    #[arg(long = "close", value_name = "FD")]
    pub close: Vec<i32>,
    /// Accepted and ignored: device files are dumped by their path
    #[arg(long = "evasive-devices")]
    pub evasive_devices: bool,
    /// Restore: IN=OUT veth pair (accepted, ignored: no network namespace is restored)
    #[arg(long = "veth-pair", value_name = "IN=OUT")]
    pub veth_pair: Vec<String>,
    /// Run SCRIPT at each stage (CRTOOLS_SCRIPT_ACTION=pre-dump, post-dump, pre-restore,
    /// post-restore, pre-resume, post-resume); repeatable
    #[arg(long = "action-script", value_name = "SCRIPT")]
    pub action_script: Vec<PathBuf>,
    /// Allow link remaps of open files whose name was unlinked (refused by name: not built)
    #[arg(long = "link-remap")]
    pub link_remap: bool,
    /// The tree is a shell job: its session or terminal may be outside
    #[arg(short = 'j', long = "shell-job")]
    pub shell_job: bool,
    /// Handle file locks (a task holding a lock is refused by name: locks are not dumped yet)
    #[arg(short = 'l', long = "file-locks")]
    pub file_locks: bool,
    /// Plugins directory (accepted, ignored: stasis has no plugins)
    #[arg(short = 'L', long = "libdir", value_name = "PATH")]
    pub libdir: Option<PathBuf>,
    /// CPU capabilities: dump records cpuinfo.img, restore checks this host against it
    /// (CRIU's syntax: fpu, cpu, ins, all, none, ^, ","; alone: all)
    #[arg(long = "cpu-cap", value_name = "CAP", num_args = 0..=1, require_equals = true,
          default_missing_value = "all")]
    pub cpu_cap: Option<String>,
    /// Dump, pre-dump: send pagemaps and pages to a page server (`--address` and `--port`, or
    /// `--ps-socket`)
    #[arg(long = "page-server")]
    pub page_server: bool,
    /// Post-copy: dump keeps lazy pages out of the images and serves them (`--address`,
    /// `--port`); restore hands lazy memory to the `lazy-pages` daemon
    #[arg(long = "lazy-pages")]
    pub lazy_pages: bool,
    /// Page server address (dump: to connect to; page-server: to listen on)
    #[arg(long = "address", value_name = "ADDR")]
    pub address: Option<String>,
    /// Page server port (dump: to connect to; page-server: to listen on)
    #[arg(long = "port", value_name = "N")]
    pub port: Option<u16>,
    /// An inherited socket to the page server (dump: connected; page-server: accepted)
    #[arg(long = "ps-socket", value_name = "FD")]
    pub ps_socket: Option<i32>,
    /// Page-server TLS: `--tls`, `--tls-cacert`, `--tls-cacrl`, `--tls-cert`, `--tls-key`,
    /// `--tls-no-cn-verify`
    #[command(flatten)]
    pub tls: super::tls_args::TlsArgs,
    /// Incremental dumps (dump, pre-dump): `--track-mem`, `--prev-images-dir`,
    /// `--pre-dump-mode`
    #[command(flatten)]
    pub incremental: super::dump::IncrementalArgs,
    /// Accepted, ignored: inotify watches are resolved without a scan
    #[arg(long = "force-irmap")]
    pub force_irmap: bool,
    /// KEY:VALUE external mount map, or `auto` (a mount namespace's external mounts)
    #[arg(short = 'M', long = "ext-mount-map", value_name = "KEY:VALUE")]
    pub ext_mount_map: Vec<String>,
    /// Restore: run the command after `--` once the tree is restored, as its parent
    #[arg(long = "exec-cmd")]
    pub exec_cmd: bool,
    /// cgroups mode: none, props, soft (default), full, strict, ignore
    #[arg(long = "manage-cgroups", value_name = "MODE", num_args = 0..=1,
          require_equals = true, default_missing_value = "soft")]
    pub manage_cgroups: Option<String>,
    /// [CONTROLLER:]PATH new cgroup root (refused when cgroups are dumped/restored)
    #[arg(long = "cgroup-root", value_name = "[CTL:]PATH")]
    pub cgroup_root: Vec<String>,
    /// Restore: fd[N]:RESOURCE, descriptor N stands for RESOURCE of the images (a file's
    /// path, `pipe:[ID]`)
    #[arg(long = "inherit-fd", value_name = "fd[N]:RES")]
    pub inherit_fd: Vec<String>,
    /// Check: only this kernel feature (`list` lists them)
    #[arg(long = "feature", value_name = "NAME")]
    pub feature: Option<String>,
    /// Accepted, ignored: mount namespaces are not handled
    #[arg(long = "skip-mnt", value_name = "PATH")]
    pub skip_mnt: Vec<String>,
    /// Accepted, ignored: mount namespaces are not handled
    #[arg(long = "enable-fs", value_name = "FS[,FS...]")]
    pub enable_fs: Vec<String>,
    /// Accepted, ignored: mount namespaces are not handled
    #[arg(long = "enable-external-sharing")]
    pub enable_external_sharing: bool,
    /// Accepted, ignored: mount namespaces are not handled
    #[arg(long = "enable-external-masters")]
    pub enable_external_masters: bool,
    /// Freeze the tree with this cgroup's freezer instead of ptrace alone
    #[arg(long = "freeze-cgroup", value_name = "PATH")]
    pub freeze_cgroup: Option<PathBuf>,
    /// Largest unlinked open file whose content is copied into the images (default 1M;
    /// K, M, G suffixes)
    #[arg(long = "ghost-limit", value_name = "SIZE")]
    pub ghost_limit: Option<String>,
    /// Accepted, ignored: inotify watches are resolved without a scan
    #[arg(long = "irmap-scan-path", value_name = "PATH")]
    pub irmap_scan_path: Vec<PathBuf>,
    /// Restore: TYPE:NAME LSM profile (refused at restore: not built yet)
    #[arg(long = "lsm-profile", value_name = "TYPE:NAME")]
    pub lsm_profile: Option<String>,
    /// External resource: mnt[..], veth[..], macvlan[..], netdev[..] accepted; tty, file,
    /// dev, unix refused (not built yet)
    #[arg(long = "external", value_name = "RES")]
    pub external: Vec<String>,
    /// Only `net` (accepted, ignored: network namespaces are not handled)
    #[arg(long = "empty-ns", value_name = "net")]
    pub empty_ns: Option<String>,
    /// Check: also optional features
    #[arg(long = "extra")]
    pub extra: bool,
    /// Check: also experimental features
    #[arg(long = "experimental")]
    pub experimental: bool,
    /// Check: every feature (--extra and --experimental)
    #[arg(long = "all")]
    pub all: bool,
    /// Accepted, ignored: stasis has no deprecated features
    #[arg(long = "deprecated")]
    pub deprecated: bool,
    /// Accepted, ignored: namespace sysctls are written back strictly
    #[arg(long = "weak-sysctls")]
    pub weak_sysctls: bool,
    /// Descriptor to write a zero byte to once ready (page-server and lazy-pages, as CRIU;
    /// dump, restore and check ignore it like CRIU)
    #[arg(long = "status-fd", value_name = "FD")]
    pub status_fd: Option<i32>,
    /// Accepted, ignored: stasis mounts no cgroup yard
    #[arg(long = "cgroup-yard", value_name = "PATH")]
    pub cgroup_yard: Option<PathBuf>,
    /// Restore: how files are checked against the images: filesize or buildid
    #[arg(long = "file-validation", value_name = "METHOD")]
    pub file_validation: Option<String>,
    /// Accepted, ignored: the restore reports the kernel's refusal to open a file by name
    #[arg(long = "skip-file-rwx-check")]
    pub skip_file_rwx_check: bool,
    /// Accepted, ignored: mount namespaces are not handled
    #[arg(long = "lsm-mount-context", value_name = "CTX")]
    pub lsm_mount_context: Option<String>,
    /// iptables, nftables, skip or none (connections are held in TCP repair mode)
    #[arg(long = "network-lock", value_name = "METHOD")]
    pub network_lock: Option<String>,
    /// Accepted, ignored: mount namespaces are not handled
    #[arg(long = "mntns-compat-mode")]
    pub mntns_compat_mode: bool,
    /// Accepted, ignored: stasis checks privileges where it needs them
    #[arg(long = "unprivileged")]
    pub unprivileged: bool,
    /// Ghost files are copied without their holes (always, with SEEK_DATA)
    #[arg(long = "ghost-fiemap")]
    pub ghost_fiemap: bool,
    /// Accepted, ignored: stasis dumps no uprobes area
    #[arg(long = "allow-uprobes")]
    pub allow_uprobes: bool,
    /// Restore with --exec-cmd: the command and its arguments (after `--`)
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

impl CriuArgs {
    /// The terminals `--external tty[RDEV:DEV]` names, as (rdev, dev).
    pub fn external_ttys(&self) -> Vec<(u32, u32)> {
        self.external
            .iter()
            .filter_map(|e| parse_external_tty(e))
            .collect()
    }

    /// `--ghost-limit` in bytes (CRIU's default 1 MiB).
    pub fn ghost_limit(&self) -> Result<u64, String> {
        match &self.ghost_limit {
            None => Ok(DEFAULT_GHOST_LIMIT),
            Some(v) => parse_size(v).map_err(|e| format!("--ghost-limit: {e}")),
        }
    }

    /// `--manage-cgroups` mode, CRIU's default `soft`.
    pub fn cgroup_mode(&self) -> &str {
        self.manage_cgroups.as_deref().unwrap_or("soft")
    }

    /// Closes the `--close` descriptors (CRIU closes them while parsing); at this point of the
    /// start-up no Rust object owns a descriptor the caller could name.
    pub fn apply_close(&self) {
        for &fd in &self.close {
            crate::sys::fds::close_raw(fd);
        }
    }

    /// Takes the `--status-fd` descriptor (inherited from the caller, owned by nothing here)
    /// for [`crate::action_scripts::status_ready`]; an fd that is not open is an error naming
    /// it. Called once, by the page server and lazy-pages daemon.
    pub fn take_status_fd(&self) -> Result<Option<std::os::fd::OwnedFd>, String> {
        let Some(fd) = self.status_fd else {
            return Ok(None);
        };
        let open = fd >= 0 && std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists();
        if !open || self.close.contains(&fd) {
            return Err(format!("--status-fd {fd}: not an open descriptor"));
        }
        Ok(Some(crate::sys::fds::own(fd)))
    }

    /// Checks the values for `verb`: returns the first refusal, naming the option.
    pub fn check(&self, verb: Verb) -> Result<(), String> {
        // --root on dump: accepted without effect, as CRIU (the dump reads the tree's mounts
        // from the kernel; the restore rebuilds them on its own --root).
        if let Some(ino) = self.ext_unix_sk.as_deref().filter(|v| !v.is_empty()) {
            return Err(format!(
                "--ext-unix-sk={ino}: marking one socket external is not built yet \
                 (--ext-unix-sk without a value allows every external peer)"
            ));
        }
        if let Some(mode) = &self.manage_cgroups {
            if !["none", "props", "soft", "full", "strict", "ignore"].contains(&mode.as_str()) {
                return Err(format!("--manage-cgroups: unknown cgroups mode `{mode}'"));
            }
        }
        if let Some(caps) = &self.cpu_cap {
            for cap in caps.split(',').filter(|c| !c.is_empty()) {
                let name = cap.trim_start_matches('^');
                if !["all", "cpu", "fpu", "ins", "none"].contains(&name) {
                    return Err(format!("--cpu-cap: unknown capability `{cap}'"));
                }
            }
        }
        for v in &self.veth_pair {
            if !v.contains('=') {
                return Err(format!("--veth-pair: invalid argument {v} (IN=OUT)"));
            }
        }
        for m in &self.ext_mount_map {
            if m != "auto" && !m.contains(':') {
                return Err(format!("--ext-mount-map: invalid argument {m} (KEY:VALUE)"));
            }
        }
        if let Some(ns) = &self.empty_ns {
            if ns != "net" {
                return Err(format!("--empty-ns: unsupported empty namespace {ns}"));
            }
        }
        if let Some(m) = &self.network_lock {
            if !["iptables", "nftables", "skip", "none"].contains(&m.as_str()) {
                return Err(format!("--network-lock: invalid value {m}"));
            }
            if verb == Verb::Restore {
                tracing::warn!("--network-lock will be ignored in restore command");
            }
        }
        if let Some(m) = &self.file_validation {
            if !["filesize", "buildid"].contains(&m.as_str()) {
                return Err(format!(
                    "--file-validation: unknown method {m} (filesize, buildid)"
                ));
            }
        }
        self.ghost_limit()?;
        for e in &self.external {
            check_external(e, verb)?;
        }
        if !self.inherit_fd.is_empty() {
            let spec = &self.inherit_fd[0];
            let ok = spec
                .strip_prefix("fd[")
                .and_then(|r| r.split_once("]:"))
                .is_some_and(|(n, key)| n.parse::<u32>().is_ok() && !key.is_empty());
            if !ok {
                return Err(format!(
                    "--inherit-fd: invalid argument {spec} (fd[N]:RESOURCE)"
                ));
            }
            if verb != Verb::Restore {
                return Err("--inherit-fd is restore-only option".into());
            }
            for spec in &self.inherit_fd {
                crate::restore::inherit::InheritFd::parse(spec)?;
            }
        }
        if verb == Verb::Restore {
            if let Some(p) = &self.lsm_profile {
                return Err(format!(
                    "--lsm-profile {p}: applying an LSM profile at restore is not built yet"
                ));
            }
            if self.restore_sibling && !self.restore_detached {
                return Err("--restore-sibling only makes sense with --restore-detached".into());
            }
            if self.tree.is_some() {
                tracing::warn!("Using -t with criu restore is obsoleted");
            }
        }
        if self.exec_cmd {
            if self.command.is_empty() {
                return Err("--exec-cmd requires a command".into());
            }
            if verb != Verb::Restore {
                return Err("--exec-cmd is available for the restore command only".into());
            }
            if self.restore_detached {
                return Err("--restore-detached and --exec-cmd cannot be used together".into());
            }
        } else if !self.command.is_empty() {
            return Err(format!(
                "excessive parameters {:?} (a command after -- needs --exec-cmd)",
                self.command
            ));
        }
        if verb == Verb::Dump && !self.cgroup_root.is_empty() && self.cgroup_mode() != "ignore" {
            return Err(format!(
                "--cgroup-root {}: dumping cgroups under another root is not built yet",
                self.cgroup_root[0]
            ));
        }
        Ok(())
    }

    /// Restore-time checks that need the images: modes that would change how the images'
    /// cgroups are restored.
    pub fn check_images(&self, images_dir: &std::path::Path) -> Result<(), String> {
        if !images_dir.join("cgroup.img").exists() || self.cgroup_mode() == "ignore" {
            return Ok(());
        }
        let mode = self.cgroup_mode();
        if ["props", "full", "strict"].contains(&mode) {
            return Err(format!(
                "--manage-cgroups={mode}: creating cgroups and restoring their properties is not \
                 built yet (none, soft and ignore are)"
            ));
        }
        if let Some(r) = self.cgroup_root.first() {
            return Err(format!(
                "--cgroup-root {r}: restoring cgroups under another root is not built yet"
            ));
        }
        Ok(())
    }
}

/// `tty[RDEV:DEV]` (hex, as CRIU prints a terminal) -> (rdev, dev).
pub fn parse_external_tty(res: &str) -> Option<(u32, u32)> {
    let (r, d) = res
        .strip_prefix("tty[")?
        .strip_suffix(']')?
        .split_once(':')?;
    Some((
        u32::from_str_radix(r, 16).ok()?,
        u32::from_str_radix(d, 16).ok()?,
    ))
}

/// `--external RES`: the kinds CRIU knows; the ones that would change a dump or restore here
/// are refused by name.
fn check_external(res: &str, verb: Verb) -> Result<(), String> {
    let kind = res.split('[').next().unwrap_or("");
    match kind {
        // Mount and network namespace resources: stasis dumps and restores none.
        "mnt" | "veth" | "macvlan" | "netdev" | "net" => Ok(()),
        // A terminal outside the tree (restored from `--inherit-fd fd[N]:tty[RDEV:DEV]`).
        "tty" if parse_external_tty(res).is_some() => Ok(()),
        "tty" => Err(format!(
            "--external {res}: a terminal is tty[RDEV:DEV] (hex)"
        )),
        "file" | "dev" | "unix" => Err(format!(
            "--external {res}: external {kind} resources are not built yet{}",
            if kind == "unix" && verb == Verb::Dump {
                " (--ext-unix-sk allows every external unix peer)"
            } else {
                ""
            }
        )),
        _ => Err(format!("--external: unknown resource {res}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_tty_as_criu_names_it() {
        assert_eq!(parse_external_tty("tty[8800:1a]"), Some((0x8800, 0x1a)));
        assert_eq!(parse_external_tty("tty[8800]"), None);
        assert_eq!(parse_external_tty("tty[zz:1]"), None);
        assert!(check_external("tty[8800:1a]", Verb::Dump).is_ok());
        assert!(check_external("tty[x]", Verb::Dump)
            .unwrap_err()
            .contains("tty[RDEV:DEV]"));
    }

    #[test]
    fn status_fd_is_taken_once_open() {
        use std::os::fd::IntoRawFd;
        let (r, w) = nix::unistd::pipe().unwrap();
        let a = CriuArgs {
            status_fd: Some(w.into_raw_fd()),
            ..Default::default()
        };
        let fd = a.take_status_fd().unwrap();
        crate::action_scripts::status_ready(&Default::default(), fd).unwrap();
        let mut b = [9u8; 2];
        assert_eq!(nix::unistd::read(&r, &mut b), Ok(1));
        assert_eq!(b[0], 0);
        let a = CriuArgs {
            status_fd: Some(100_000),
            ..Default::default()
        };
        assert!(a
            .take_status_fd()
            .unwrap_err()
            .contains("--status-fd 100000"));
    }

    #[test]
    fn restore_only_and_values() {
        let a = CriuArgs {
            inherit_fd: vec!["fd[3]:pipe:[42]".into()],
            ..Default::default()
        };
        assert_eq!(
            a.check(Verb::Dump).unwrap_err(),
            "--inherit-fd is restore-only option"
        );
        assert!(a.check(Verb::Restore).is_ok());
        let a = CriuArgs {
            restore_sibling: true,
            ..Default::default()
        };
        assert!(a
            .check(Verb::Restore)
            .unwrap_err()
            .contains("--restore-sibling"));
        assert!(a.check(Verb::Dump).is_ok());
        let a = CriuArgs {
            root: Some("/".into()),
            ghost_limit: Some("2M".into()),
            ..Default::default()
        };
        assert!(a.check(Verb::Dump).is_ok());
        assert_eq!(a.ghost_limit(), Ok(2 << 20));
        let a = CriuArgs {
            root: Some("/tmp".into()),
            ..Default::default()
        };
        // Restore resolves paths under --root; a dump takes it without effect, as CRIU.
        assert!(a.check(Verb::Restore).is_ok());
        assert!(a.check(Verb::Dump).is_ok());
        let a = CriuArgs {
            manage_cgroups: Some("bogus".into()),
            ..Default::default()
        };
        assert!(a
            .check(Verb::Dump)
            .unwrap_err()
            .contains("--manage-cgroups"));
    }
}
