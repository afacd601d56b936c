//! CRIU's action scripts (`--action-script PATH`) and `--status-fd`.
//!
//! At each stage the scripts run one after the other, most recently given first (CRIU keeps
//! them in a list it prepends to), each as `PATH` with no arguments, stdin closed, stdout and
//! stderr into the log, no other descriptor, and this environment (CRIU's names):
//!
//! ```text
//!  CRTOOLS_SCRIPT_ACTION  pre-dump | post-dump | pre-restore | post-restore | pre-resume |
//!                         post-resume | status-ready | ...
//!  CRTOOLS_IMAGE_DIR      /proc/<stasis pid>/fd/<fd of the images directory>
//!  CRTOOLS_INIT_PID       the root task's PID, once there is one (not at pre-restore)
//! ```
//!
//! Stages and what a failing script does (CRIU's rules):
//!
//! ```text
//!  dump     pre-dump    before the tree is seized          the dump fails (exit 1)
//!           post-dump   images written, tree still frozen  tree resumed, exit 255
//!  restore  pre-restore before anything                    the restore fails
//!           post-restore tasks restored, not yet running   tree killed, restore fails
//!           pre-resume  just before they run               logged only
//!           post-resume once they run                      logged only
//! ```
//!
//! `network-lock`/`network-unlock` run only for trees with their own network namespace,
//! which stasis neither dumps nor restores, so they never run (as with CRIU for such trees).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

/// A stage at which scripts run (CRIU's `enum script_actions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    PreDump,
    PostDump,
    PreRestore,
    PostRestore,
    PreResume,
    PostResume,
    NetworkLock,
    NetworkUnlock,
    StatusReady,
}

impl Action {
    /// The `CRTOOLS_SCRIPT_ACTION` value.
    pub fn name(self) -> &'static str {
        match self {
            Action::PreDump => "pre-dump",
            Action::PostDump => "post-dump",
            Action::PreRestore => "pre-restore",
            Action::PostRestore => "post-restore",
            Action::PreResume => "pre-resume",
            Action::PostResume => "post-resume",
            Action::NetworkLock => "network-lock",
            Action::NetworkUnlock => "network-unlock",
            Action::StatusReady => "status-ready",
        }
    }
}

/// A script that could not run or did not exit 0.
#[derive(Debug, thiserror::Error)]
#[error("{action} script {script}: {status}")]
pub struct ScriptError {
    /// The stage's name.
    pub action: &'static str,
    /// The script.
    pub script: PathBuf,
    /// "exited with 3", "killed by signal 9", or the spawn error.
    pub status: String,
}

/// The scripts of one run, with the images directory they are shown.
#[derive(Debug, Clone, Default)]
pub struct ActionScripts {
    scripts: Vec<PathBuf>,
    /// The images directory, held open for `CRTOOLS_IMAGE_DIR` (None: no scripts).
    dir: Option<Arc<OwnedFd>>,
}

impl ActionScripts {
    /// Scripts in the order given on the command line, for the images in `images_dir`.
    pub fn new(scripts: Vec<PathBuf>, images_dir: &Path) -> std::io::Result<Self> {
        if scripts.is_empty() {
            return Ok(Self::default());
        }
        let dir = std::fs::File::open(images_dir).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("open images directory {}: {e}", images_dir.display()),
            )
        })?;
        Ok(ActionScripts {
            scripts,
            dir: Some(Arc::new(dir.into())),
        })
    }

    /// No script given.
    pub fn is_empty(&self) -> bool {
        self.scripts.is_empty()
    }

    /// Runs every script for `action`; the first failure is returned once all have run (CRIU
    /// runs them all and fails if any failed).
    pub fn run(&self, action: Action, init_pid: Option<i32>) -> Result<(), ScriptError> {
        let mut first_err = None;
        for script in self.scripts.iter().rev() {
            tracing::debug!("running {} script {}", action.name(), script.display());
            if let Err(e) = self.run_one(script, action, init_pid) {
                tracing::error!("{e}");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn run_one(&self, script: &Path, action: Action, pid: Option<i32>) -> Result<(), ScriptError> {
        let err = |status: String| ScriptError {
            action: action.name(),
            script: script.to_path_buf(),
            status,
        };
        let mut cmd = Command::new(script);
        cmd.env("CRTOOLS_SCRIPT_ACTION", action.name())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.dir {
            cmd.env(
                "CRTOOLS_IMAGE_DIR",
                format!("/proc/{}/fd/{}", std::process::id(), dir.as_raw_fd()),
            );
        }
        if let Some(pid) = pid {
            cmd.env("CRTOOLS_INIT_PID", pid.to_string());
        }
        crate::sys::spawn::only_stdio(&mut cmd);
        let out = cmd
            .output()
            .map_err(|e| err(format!("cannot run it: {e}")))?;
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            tracing::info!("{}: {line}", script.display());
        }
        use std::os::unix::process::ExitStatusExt;
        match (out.status.code(), out.status.signal()) {
            (Some(0), _) => Ok(()),
            (Some(c), _) => Err(err(format!("exited with {c}"))),
            (None, Some(s)) => Err(err(format!("killed by signal {s}"))),
            _ => Err(err(format!("ended with {}", out.status))),
        }
    }
}

#[cfg(test)]
/// CRIU's `status_ready`: runs the `status-ready` scripts, then writes one zero byte to
/// `status_fd` (if any) and closes it. The page server and lazy-pages daemon call it once
/// they accept requests; dump, restore and check do not (neither does CRIU).
pub fn status_ready(scripts: &ActionScripts, status_fd: Option<OwnedFd>) -> Result<(), String> {
    scripts
        .run(Action::StatusReady, None)
        .map_err(|e| e.to_string())?;
    if let Some(fd) = status_fd {
        let n = nix::unistd::write(&fd, &[0u8])
            .map_err(|e| format!("write to the status fd {}: {e}", fd.as_raw_fd()))?;
        if n != 1 {
            return Err(format!("short write to the status fd {}", fd.as_raw_fd()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn env_order_and_failure() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let body = format!(
            "echo \"$0 $CRTOOLS_SCRIPT_ACTION $CRTOOLS_INIT_PID $(ls $CRTOOLS_IMAGE_DIR | grep -c marker)\" >> {}",
            log.display()
        );
        std::fs::write(d.path().join("marker"), "").unwrap();
        let a = script(d.path(), "a", &body);
        let b = script(d.path(), "b", &body);
        let s = ActionScripts::new(vec![a.clone(), b.clone()], d.path()).unwrap();
        s.run(Action::PreDump, Some(42)).unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text,
            format!(
                "{} pre-dump 42 1\n{} pre-dump 42 1\n",
                b.display(),
                a.display()
            )
        );
        let bad = script(d.path(), "bad", "exit 3");
        let s = ActionScripts::new(vec![bad], d.path()).unwrap();
        let e = s.run(Action::PostDump, None).unwrap_err();
        assert_eq!(e.status, "exited with 3");
        assert_eq!(e.action, "post-dump");
    }

    #[test]
    fn status_fd_gets_one_zero_byte_then_eof() {
        let (r, w) = nix::unistd::pipe().unwrap();
        status_ready(&ActionScripts::default(), Some(w)).unwrap();
        let mut buf = [7u8; 4];
        assert_eq!(nix::unistd::read(&r, &mut buf), Ok(1));
        assert_eq!(buf[0], 0);
        assert_eq!(
            nix::unistd::read(&r, &mut buf),
            Ok(0),
            "closed after the byte"
        );
    }
}
