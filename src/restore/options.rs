//! What `stasis restore` was asked to do (filled by the command line or by the RPC server).

use std::path::PathBuf;
use std::time::Duration;

/// Options of one restore, with CRIU's meaning.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Where images are read from (`-D/--images-dir`).
    pub images_dir: PathBuf,
    /// Return once the tree runs instead of waiting for the root (`-d/--restore-detached`).
    pub detached: bool,
    /// Write the root's PID here (`--pidfile`).
    pub pidfile: Option<PathBuf>,
    /// Restore a shell job: attach to the current terminal (`-j/--shell-job`).
    pub shell_job: bool,
    /// Restore established TCP connections (`--tcp-established`).
    pub tcp_established: bool,
    /// Allow external unix socket peers (`--ext-unix-sk`).
    pub ext_unix_sk: bool,
    /// Give up after this long (`--timeout`).
    pub timeout: Option<Duration>,
    /// `--action-script`s: pre-restore, post-restore, pre-resume, post-resume.
    pub scripts: crate::action_scripts::ActionScripts,
    /// `--restore-sibling`: the root task is a child of our parent (CLONE_PARENT).
    pub sibling: bool,
    /// `--tcp-close`: established connections are restored closed.
    pub tcp_close: bool,
    /// `--manage-cgroups=ignore`: tasks stay in stasis's cgroups.
    pub cgroups_ignore: bool,
    /// Where the images' absolute paths are resolved (`--root`; `/` when unset).
    pub root: Option<PathBuf>,
    /// Key file of encrypted pages (`--encrypt-key`; stasis extension).
    pub encrypt_key: Option<PathBuf>,
    /// `--lazy-pages`: post-copy restore; the lazy-pages daemon listens in this directory (the
    /// work directory).
    pub lazy_pages: Option<PathBuf>,
    /// `-s/--leave-stopped`: every restored process gets SIGSTOP before it is released, so
    /// it stops before running its own code (CRIU's final state TASK_STOPPED).
    pub leave_stopped: bool,
    /// `--inherit-fd fd[N]:RES`: the caller's descriptors standing for resources of the
    /// images (see [`super::inherit`]).
    pub inherit_fds: Vec<super::inherit::InheritFd>,
    /// `--external mnt[KEY]:PATH`, `--ext-mount-map`: the external mounts of a dumped mount
    /// namespace.
    pub mounts: super::mounts::MountMap,
    /// `--join-ns`: namespaces the tree joins (see [`super::join_ns`]).
    pub join_ns: Vec<super::join_ns::JoinNs>,
}
