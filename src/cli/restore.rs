//! `stasis restore`: restore a process tree from an image directory (CRIU's `criu restore`).
//!
//! Without `-d` the command waits for the root task and exits with its status (exit code, or
//! 128 + signal number); with `-d` it returns once the tree runs; with `--exec-cmd` it
//! becomes the command after `--`, which is then the root task's parent. Every CRIU option is
//! accepted ([`super::criu_options`]); the ones not built yet are refused by name.

use std::ffi::OsString;

use clap::Parser;

use super::common::{self, CommonArgs, Verb};
use crate::restore::{self, RestoreOptions};

/// Options of `restore` (all of them shared: CRIU has one option table).
#[derive(Debug, Parser)]
#[command(name = "restore", about = "restore a process tree from images")]
pub struct RestoreArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Key file of encrypted pages (stasis extension)
    #[arg(long = "encrypt-key", value_name = "FILE")]
    pub encrypt_key: Option<std::path::PathBuf>,
}

impl common::VerbArgs for RestoreArgs {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

impl RestoreArgs {
    /// The engine's options, once the images are checked against the cgroup options and
    /// this CPU against `cpuinfo.img` (the command line and the RPC server).
    pub fn options(&self) -> Result<RestoreOptions, String> {
        let common = &self.common;
        let c = &common.criu;
        let images_dir = common.images_dir();
        crate::privileges::Privileges::current()
            .require(crate::privileges::Verb::Restore)
            .map_err(|e| e.to_string())?;
        c.check_images(&images_dir)?;
        let scripts =
            crate::action_scripts::ActionScripts::new(c.action_script.clone(), &images_dir)
                .map_err(|e| e.to_string())?;
        let opts = RestoreOptions {
            images_dir,
            detached: c.restore_detached,
            pidfile: common.pidfile.clone(),
            shell_job: c.shell_job,
            tcp_established: c.tcp_established,
            ext_unix_sk: c.ext_unix_sk.is_some(),
            timeout: common.timeout(),
            scripts,
            sibling: c.restore_sibling,
            tcp_close: c.tcp_close,
            cgroups_ignore: c.cgroup_mode() == "ignore",
            root: c.root.clone(),
            encrypt_key: self.encrypt_key.clone(),
            lazy_pages: c.lazy_pages.then(|| common.work_dir()),
            leave_stopped: c.leave_stopped,
            inherit_fds: c
                .inherit_fd
                .iter()
                .filter_map(|s| crate::restore::inherit::InheritFd::parse(s).ok())
                .collect(),
            mounts: crate::restore::mounts::MountMap::from_args(&c.external, &c.ext_mount_map),
            join_ns: c
                .join_ns
                .iter()
                .map(|s| crate::restore::join_ns::JoinNs::parse(s))
                .collect::<Result<_, _>>()?,
        };
        crate::restore::join_ns::check(&opts.join_ns)?;
        crate::cpuinfo::option_caps(&c.cpu_cap.clone().map(Some))
            .and_then(|caps| crate::cpuinfo::check_dir(&opts.images_dir, caps))
            .map_err(|e| e.to_string())?;
        Ok(opts)
    }
}

/// Runs `restore`; returns the exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    let parsed: RestoreArgs = match common::start(&args, Verb::Restore) {
        Ok(p) => p,
        Err(status) => return status,
    };
    let common = &parsed.common;
    let c = &common.criu;
    let opts = match parsed.options() {
        Ok(o) => o,
        Err(e) => {
            common::report(common, e);
            return 1;
        }
    };
    let restored = match restore::restore(&opts) {
        Ok(r) => r,
        Err(e) => {
            common::report(common, format!("restore failed: {e}"));
            tracing::error!("Restoring FAILED.");
            return 1;
        }
    };
    if common.display_stats {
        // CRIU's heading; the restore's page counters are not kept yet.
        println!("Displaying restore stats:");
        println!("Restored tree: root {}", restored.root);
    }
    if c.exec_cmd {
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(&c.command[0])
            .args(&c.command[1..])
            .exec();
        common::report(
            common,
            format!("Failed to exec command {:?}: {err}", c.command[0]),
        );
        return 1;
    }
    if opts.detached {
        return 0;
    }
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(restored.root), None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                common::report(common, format!("wait for root {}: {e}", restored.root));
                return 1;
            }
        }
    }
}
