//! The restore plan's types: what [`super::plan`] reads from the images and every later
//! step (checks, premap, tree, blob) works from. Plain data, no reading here, so the checks
//! and the plan both depend on this module and not on each other.
//!
//! ```text
//!  Plan ─┬─ tasks: [TaskPlan] ─┬─ threads: [ThreadPlan { core, spec }]
//!       │                     ├─ mm, fds, fs, ids
//!       │                     └─ pages: Pages { file, runs: [PageRun], layers: [Layer] }
//!       └─ files, memfd_inodes, pipe/fifo data, ghosts, seccomp, file_locks, root
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::img::msg;

/// `task_state` of a live task in `core.tc`.
pub const TASK_ALIVE: u32 = 1;
/// `task_state` of a zombie.
pub const TASK_DEAD: u32 = 2;
/// `task_state` of a stopped task.
pub const TASK_STOPPED: u32 = 3;

/// VMA status bits (CRIU's `VMA_*`).
pub(crate) mod vma_status {
    #[cfg(test)]
    /// Usable area.
    pub const REGULAR: u32 = 1 << 0;
    /// `[vsyscall]`.
    pub const VSYSCALL: u32 = 1 << 2;
    /// `[vdso]`.
    pub const VDSO: u32 = 1 << 3;
    #[cfg(test)]
    /// The heap.
    pub const HEAP: u32 = 1 << 5;
    /// Private file mapping.
    pub const FILE_PRIVATE: u32 = 1 << 6;
    /// Shared file mapping.
    pub const FILE_SHARED: u32 = 1 << 7;
    /// Shared anonymous mapping.
    pub const ANON_SHARED: u32 = 1 << 8;
    /// Private anonymous mapping.
    pub const ANON_PRIVATE: u32 = 1 << 9;
    /// SysV shm.
    pub const SYSVIPC: u32 = 1 << 10;
    /// A socket mapping.
    pub const SOCKET: u32 = 1 << 11;
    /// `[vvar]`.
    pub const VVAR: u32 = 1 << 12;
    /// AIO ring.
    pub const AIORING: u32 = 1 << 13;
    /// Unsupported area marker.
    pub const UNSUPP: u32 = 1 << 31;
}

/// Pagemap entry flags.
pub(crate) mod pe {
    /// Data lives in the parent image.
    pub const PARENT: u32 = 1;
    /// Lazy (still present in the pages image).
    pub const LAZY: u32 = 2;
    /// Data is in this pages image.
    pub const PRESENT: u32 = 4;
}

/// Page size of the images (x86-64).
pub use crate::images::pagemap::PAGE_SIZE as PAGE;

/// One run of pages to write: `nr` pages at `vaddr`, from byte `offset` of `pages-<id>.img`.
#[derive(Debug, Clone, Copy)]
pub struct PageRun {
    /// Index of its entry in the pagemap image (for messages).
    pub entry: usize,
    /// First address (for shmem: byte offset in the object).
    pub vaddr: u64,
    /// Number of pages.
    pub nr: u64,
    /// Offset in the pages file.
    pub offset: u64,
    /// The entry has `PE_LAZY`: a post-copy restore leaves these pages to the lazy-pages
    /// daemon.
    pub lazy: bool,
}

/// A pagemap with its pages file.
///
/// In a chain of incremental dumps (`PE_PARENT` entries), the page data lies in several
/// `pages-N.img` files, one per image directory: they are seen as one virtual file, their
/// concatenation in [`Pages::layers`] order, and [`PageRun::offset`] is an offset in it (a
/// run never spans two layers).
#[derive(Debug, Clone, Default)]
pub struct Pages {
    /// `pages-<id>.img` of the image directory itself.
    pub file: PathBuf,
    /// Runs with data.
    pub runs: Vec<PageRun>,
    /// The files of the chain with the virtual offset of their first byte; empty: only
    /// `file`, at 0.
    pub layers: Vec<Layer>,
    /// Pages of `PE_LAZY` entries without data (`dump --lazy-pages`): only a post-copy
    /// restore can get them.
    pub lazy_only: u64,
}

/// One pages file of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The file.
    pub file: PathBuf,
    /// Virtual offset of its first byte.
    pub base: u64,
}

impl Pages {
    /// Every file the runs read, with its virtual base.
    pub fn layers(&self) -> Vec<Layer> {
        if self.layers.is_empty() {
            vec![Layer {
                file: self.file.clone(),
                base: 0,
            }]
        } else {
            self.layers.clone()
        }
    }
}

/// One thread's image.
#[derive(Debug, Clone)]
pub struct ThreadPlan {
    /// TID.
    pub tid: i32,
    /// Its core image.
    pub core: msg::CoreEntry,
    /// The blob's arguments converted from it (at load: a bad core fails before any task
    /// exists, and the forked task does not convert again).
    pub spec: super::blob_args::ThreadSpec,
}

/// One task of the tree.
#[derive(Debug, Clone)]
pub struct TaskPlan {
    /// PID.
    pub pid: i32,
    /// Parent PID in the images (0: the root).
    pub ppid: i32,
    /// Process group.
    pub pgid: i32,
    /// Session.
    pub sid: i32,
    /// `task_state` of the main thread.
    pub state: u32,
    /// Exit code (zombies).
    pub exit_code: u32,
    /// `tc.comm` (a zombie's name; live threads have theirs in their cores).
    pub comm: String,
    /// `tc.oom_score_adj`, when recorded.
    pub oom_score_adj: Option<i32>,
    /// `tc.loginuid`, when recorded.
    pub loginuid: Option<u32>,
    /// Threads, main thread first (empty for zombies).
    pub threads: Vec<ThreadPlan>,
    /// Memory layout (live tasks).
    pub mm: Option<msg::MmEntry>,
    /// Private pages.
    pub pages: Pages,
    /// Descriptors.
    pub fds: Vec<msg::FdinfoEntry>,
    /// cwd, root, umask.
    pub fs: Option<msg::FsEntry>,
    /// Children PIDs in image order.
    pub children: Vec<i32>,
    /// `ids.vm_id` (tasks sharing an mm are refused).
    pub vm_id: Option<u32>,
    /// `ids.files_id`: a child with its parent's shares its descriptor table
    /// (`CLONE_FILES`, see `restore::shared_fdt`).
    pub files_id: Option<u32>,
}

/// A deleted file to recreate: its entry and data chunks (offset, bytes).
pub type Ghost = (msg::GhostFileEntry, Vec<(u64, Vec<u8>)>);

/// Everything read from the image directory.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The image directory.
    pub dir: PathBuf,
    /// Tasks in pstree order; `tasks[0]` is the root.
    pub tasks: Vec<TaskPlan>,
    /// files.img by id.
    pub files: BTreeMap<u32, msg::FileEntry>,
    /// memfd inodes by inode id.
    pub memfd_inodes: BTreeMap<u64, (msg::MemfdInodeEntry, Pages)>,
    /// Pipe data by pipe_id: (pipe size, bytes).
    pub pipe_data: HashMap<u32, (u32, Vec<u8>)>,
    /// FIFO data by pipe_id: (pipe size, bytes).
    pub fifo_data: HashMap<u32, (u32, Vec<u8>)>,
    /// seccomp.img (filters referenced by the threads' cores), if present.
    pub seccomp: Option<stasis_images::pb::SeccompEntry>,
    /// `--shell-job`: the root's session and group (if not its own) are the caller's.
    pub shell_job: bool,
    /// Ghost files by the orig file id: (entry, data chunks (offset, bytes)).
    pub ghosts: HashMap<u32, Ghost>,
    /// `filelocks.img`: locks each task takes again through its fds once they are in place.
    pub file_locks: Vec<stasis_images::pb::FileLockEntry>,
    /// Where the images' absolute paths are resolved (`--root`, `/` by default).
    pub root: PathBuf,
    /// Per task, per VMA: the parent's VMA it inherits copy-on-write (`restore::cow`).
    pub cow: Vec<Vec<Option<usize>>>,
    /// The namespaces the tree owns (read by `plan::prepare`).
    pub ns: super::namespaces::Namespaces,
}

impl Plan {
    /// Index of the task with `pid`.
    pub fn index(&self, pid: i32) -> Option<usize> {
        self.tasks.iter().position(|t| t.pid == pid)
    }

    /// Whether task `t` shares its parent's descriptor table (`CLONE_FILES`).
    pub fn shares_parent_fds(&self, t: &TaskPlan) -> bool {
        t.files_id.is_some()
            && t.ppid != 0
            && self
                .tasks
                .iter()
                .find(|p| p.pid == t.ppid)
                .is_some_and(|p| p.files_id == t.files_id)
    }

    /// Whether a child of task `idx` inherits one of its VMAs copy-on-write ([`Plan::cow`]).
    pub fn inherits_from(&self, idx: usize) -> bool {
        self.tasks[idx].children.iter().any(|&c| {
            self.index(c)
                .and_then(|ci| self.cow.get(ci))
                .is_some_and(|l| l.iter().any(Option::is_some))
        })
    }

    /// Every PID and TID the restore will create.
    pub fn all_ids(&self) -> Vec<i32> {
        let mut ids = Vec::new();
        for t in &self.tasks {
            ids.push(t.pid);
            ids.extend(t.threads.iter().skip(1).map(|th| th.tid));
        }
        ids
    }
}
