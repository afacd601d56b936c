//! What `stasis dump` was asked to do (filled by the command line or by the RPC server).

use std::path::PathBuf;
use std::time::Duration;

/// Options of one dump, with CRIU's meaning.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// Root of the process tree (`-t/--tree`).
    pub pid: i32,
    /// Where images are written (`-D/--images-dir`); must exist.
    pub images_dir: PathBuf,
    /// Keep the tree running after a successful dump (`-R/--leave-running`).
    pub leave_running: bool,
    /// Leave the tree stopped after a successful dump (`-s/--leave-stopped`, with
    /// `leave_running`): every process gets SIGSTOP before it is released, so it stops before
    /// it runs again.
    pub leave_stopped: bool,
    /// `--cgroup-dump-controller`: the cgroup hierarchies recorded (empty: all).
    pub cgroup_dump_controllers: Vec<String>,
    /// `--cgroup-props`, `--cgroup-props-file`: the controller properties recorded.
    pub cgroup_props: crate::cgroup::props::Props,
    /// The tree is a job of a shell: its tty/session may be outside (`-j/--shell-job`).
    pub shell_job: bool,
    /// Terminals outside the dump, as (rdev, dev) (`--external tty[RDEV:DEV]`, hex): recorded
    /// as external (EXT_TTY); the restore takes them from `--inherit-fd fd[N]:tty[RDEV:DEV]`.
    pub external_ttys: Vec<(u32, u32)>,
    /// Allow unix sockets whose peer is outside the tree (`--ext-unix-sk`).
    pub ext_unix_sk: bool,
    /// Dump file locks (`--file-locks`).
    pub file_locks: bool,
    /// Dump established TCP connections with TCP_REPAIR (`--tcp-established`).
    pub tcp_established: bool,
    /// Freeze the tree through this cgroup's freezer (`--freeze-cgroup`).
    pub freeze_cgroup: Option<PathBuf>,
    /// Write `stats-dump` and print per-phase times (`--stats`; CRIU writes stats-dump always).
    pub stats: bool,
    /// Write a Chrome trace of the dump's phases here (`--profile`).
    pub profile: Option<PathBuf>,
    /// Give up seizing/freezing after this long (`--timeout`, CRIU's default 10 s).
    pub timeout: Option<Duration>,
    /// Directory of a previous (pre-)dump to reference for unchanged pages (`--prev-images-dir`).
    pub prev_images_dir: Option<PathBuf>,
    /// Track memory changes for a later incremental dump (`--track-mem`).
    pub track_mem: bool,
    /// How a pre-dump copies pages once the tree runs again (`--pre-dump-mode`).
    pub pre_dump_mode: PreDumpMode,
    /// The executable started as the dirty tracker (`<exe> dirty-tracker`); `None`: this
    /// program (`std::env::current_exe`).
    pub tracker_exe: Option<PathBuf>,
    /// Send pagemaps and pages to a page server instead of the images directory
    /// (`--page-server --address A --port N [--ps-socket FD]`).
    pub page_server: Option<PageServerAddr>,
    /// Pack the pages files: zstd chunks, sealed chunks (`--compress`, `--encrypt-key`).
    pub pack: crate::pages::pack::PackParams,
    /// Fail at this step as if the kernel returned EIO (fault injection for tests; the command
    /// line fills it from the `STASIS_FAULT` environment variable). `signal:<step>` instead
    /// sends SIGTERM to the dumper at that step.
    pub fault: Option<String>,
    /// The caller exits right after the dump (the `stasis dump` command): a killed tree is
    /// left to the kernel, which releases the dead threads still traced by the dumper when it
    /// exits, instead of reaping them one by one. A library caller that goes on (and wants
    /// the pids free) leaves this false.
    pub exiting_after: bool,
    /// The mount namespace's external mounts (`--external mnt[..]`, `--ext-mount-map`).
    pub mounts: super::mounts::MountOptions,
    /// `--action-script`s: pre-dump before seizing, post-dump once the images are written.
    pub scripts: crate::action_scripts::ActionScripts,
    /// Largest unlinked file copied into the images (`--ghost-limit`; None: CRIU's 1 MiB).
    pub ghost_limit: Option<u64>,
    /// `--link-remap`: link remaps are allowed (they are not built: the dump says so).
    pub link_remap: bool,
    /// `--tcp-close`: established connections are recorded without their state, to be
    /// restored closed.
    pub tcp_close: bool,
    /// `--lazy-pages`: private anonymous pages stay out of the images and are served from the
    /// frozen tree to a lazy-pages daemon (post-copy), which ends the dump.
    pub lazy_pages: Option<super::lazy::LazyServe>,
    /// `--skip-in-flight`: connections waiting in a listener's accept queue are dropped.
    pub skip_in_flight: bool,
}

/// Where a page server is (`--page-server --address A --port N [--ps-socket FD]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageServerAddr {
    pub address: String,
    pub port: u16,
    /// A connected socket inherited from the caller, used instead of connecting.
    pub ps_socket: Option<i32>,
    /// `--tls`: the session runs over TLS (see [`crate::pages::tls`]).
    pub tls: Option<crate::pages::tls::TlsOptions>,
}

/// How a pre-dump copies the pages it found (CRIU's `--pre-dump-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PreDumpMode {
    /// vmsplice the pages into pipes while frozen, splice them to the images after the tree
    /// runs again (CRIU's default).
    #[default]
    Splice,
    /// `process_vm_readv` after the tree runs again (no pinned pages while frozen).
    Read,
}

impl PreDumpMode {
    /// The inventory's `pre_dump_mode` (CRIU: SPLICE 1, READ 2).
    pub fn image_value(self) -> u32 {
        match self {
            PreDumpMode::Splice => 1,
            PreDumpMode::Read => 2,
        }
    }
}
