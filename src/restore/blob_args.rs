//! Lays out the restorer area (blob + arguments + thread stacks) for a load address; the
//! contract with the restorer blob. The `#[repr(C)]` structs live in [`abi`] (the same file is
//! compiled into the blob) whose module doc draws the area and lists the blob's steps.
//!
//! Engine use, in the forked task to restore (single threaded), after premapping and filling
//! private memory and opening the fds named in the VMAs:
//!
//! ```text
//! let mut spec = TaskSpec::new();          // fill spec.task scalars, spec.threads, spec.vmas...
//! // (blob_core converts core/mm entries, vdso::plan gives spec.special / vdso_patches)
//! blob_args::enter(&spec)?;                // picks a base, maps, jumps; returns only on error
//!
//! // or step by step:
//! let len  = spec.area_len();              // size does not depend on the base
//! let base = spec.pick_base(&blob_args::self_ranges()?).unwrap();
//! let area = spec.build(base)?;            // bytes + entry/args/stack addresses
//! let mut m = sys::restorer::RestorerArea::map(base, len)?;
//! m.write(&area.bytes)?;
//! m.enter(area.entry_offset, area.args, area.leader_stack_top)   // never returns
//! ```
//!
//! The engine learns the outcome from `status_fd` (one [`abi::StatusRecord`] per task).

pub(crate) use crate::sys::restorer::abi;

use crate::parasite::blob::{restorer, RESTORER};
use crate::sys::pod::{bytes_of, slice_bytes, Pod};
use abi::*;

/// Errors found while laying out the restorer area.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlobArgsError {
    #[error("restorer area base {0:#x} is not page aligned")]
    UnalignedBase(u64),
    #[error("restore of a task needs at least one thread")]
    NoThreads,
    #[error("vma {index} ({start:#x}-{end:#x}) is empty, unaligned or overlaps the previous one")]
    BadVma { index: usize, start: u64, end: u64 },
    #[error("restorer area {base:#x}+{len:#x} overlaps target range {start:#x}-{end:#x}")]
    AreaOverlap {
        base: u64,
        len: u64,
        start: u64,
        end: u64,
    },
    #[error("thread {index}: xsave image of {size} bytes is larger than the stack allows")]
    FpuTooBig { index: usize, size: usize },
}

/// One thread to restore: scalar state in `args` (pointer fields are filled by the builder),
/// plus its variable-sized parts.
#[derive(Debug, Clone, Default)]
pub struct ThreadSpec {
    /// `tid`, `regs`, `blocked`, `sas_*`, `rseq`, `clear_tid_addr`, `robust_list*`,
    /// `pdeath_sig`, `comm`, `*sched*`; `fpu`, `fpu_size`, `creds`, `signals`, `nr_signals`,
    /// `seccomp`, `nr_seccomp`, `stack_top` are overwritten by [`TaskSpec::build`].
    pub args: ThreadArgs,
    /// xsave image (see `restore::xsave::xsave_image`); empty: FPU in init state.
    pub fpu: Vec<u8>,
    /// Creds and supplementary groups; `None` keeps the restorer's creds.
    pub creds: Option<(CredsArgs, Vec<u32>)>,
    /// Private pending signals.
    pub signals: Vec<SigInfo>,
    /// Seccomp filters, oldest first: raw `struct sock_filter` bytes and filter flags.
    pub seccomp: Vec<(Vec<u8>, u32)>,
}

/// Everything the blob needs for one task.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Scalars: `mm` (its `auxv`/`auxv_size` are filled from [`TaskSpec::auxv`]), `set_mm`,
    /// `dumpable`, `sigactions`, `itimers`, `rlimits`/`nr_rlimits`, `personality`, `umask`,
    /// `child_subreaper`, `status_fd`, `go_fd`, `cur_rseq`. Pointer and count fields are
    /// overwritten by [`TaskSpec::build`].
    pub task: TaskArgs,
    /// `[0]` is the leader.
    pub threads: Vec<ThreadSpec>,
    /// The target layout, sorted by start.
    pub vmas: Vec<VmaArgs>,
    /// Premapped areas (usually each `VMA_PREMAPPED` VMA's `premap` range; any order, the
    /// layout sorts them).
    pub keep: Vec<KeepRange>,
    /// vvar/vdso moves (see `restore::vdso`).
    pub special: Vec<SpecialRemap>,
    pub vdso_patches: Vec<VdsoPatch>,
    pub posix_timers: Vec<PosixTimerArgs>,
    pub shared_signals: Vec<SigInfo>,
    /// Saved auxv words.
    pub auxv: Vec<u64>,
    /// fds the blob closes before the final jump.
    pub close_fds: Vec<u32>,
}

impl Default for TaskSpec {
    fn default() -> Self {
        Self::new()
    }
}

/// The built area.
#[derive(Debug, Clone)]
pub struct Area {
    /// Bytes to copy to `base` (the area length is [`TaskSpec::area_len`]; the tail beyond
    /// `bytes` is the stacks, zero in a fresh mapping).
    pub bytes: Vec<u8>,
    pub base: u64,
    /// Offset of the entry point from `base`.
    pub entry_offset: u64,
    /// Address of the `TaskArgs` (goes in `rdi`).
    pub args: u64,
    /// Initial `rsp` of the leader.
    pub leader_stack_top: u64,
}

use crate::images::pagemap::PAGE_SIZE as PAGE;

fn align(v: u64, a: u64) -> u64 {
    (v + a - 1) & !(a - 1)
}

/// Byte writer that tracks offsets from the area base.
struct Layout {
    bytes: Vec<u8>,
    base: u64,
}

impl Layout {
    /// Appends `v` at an `a`-aligned offset and returns its absolute address (0 if empty).
    fn push<T: Pod>(&mut self, v: &[T], a: u64) -> u64 {
        if v.is_empty() {
            return 0;
        }
        let off = align(self.bytes.len() as u64, a);
        self.bytes.resize(off as usize, 0);
        self.bytes.extend_from_slice(slice_bytes(v));
        self.base + off
    }

    fn put<T: Pod>(&mut self, addr: u64, v: &T) {
        let off = (addr - self.base) as usize;
        let b = bytes_of(v);
        self.bytes[off..off + b.len()].copy_from_slice(b);
    }
}

impl TaskSpec {
    /// An empty spec with "leave as is" defaults (`personality`, `umask`, `dumpable`,
    /// `exe_fd` = `u32::MAX`, `status_fd`/`go_fd` = -1).
    pub fn new() -> Self {
        let task = TaskArgs {
            magic: ARGS_MAGIC,
            version: ABI_VERSION,
            personality: u32::MAX,
            umask: u32::MAX,
            dumpable: u32::MAX,
            status_fd: -1,
            go_fd: -1,
            mm: MmArgs {
                exe_fd: u32::MAX,
                ..Default::default()
            },
            ..Default::default()
        };
        TaskSpec {
            task,
            threads: Vec::new(),
            vmas: Vec::new(),
            keep: Vec::new(),
            special: Vec::new(),
            vdso_patches: Vec::new(),
            posix_timers: Vec::new(),
            shared_signals: Vec::new(),
            auxv: Vec::new(),
            close_fds: Vec::new(),
        }
    }

    /// Size of the arguments part (everything between the blob and the stacks).
    fn args_len(&self) -> u64 {
        // Build at a dummy base: the layout does not depend on the base.
        self.layout(0).0.bytes.len() as u64 - restorer::SIZE as u64
    }

    /// Total area length (page aligned): blob, arguments, one stack per thread.
    pub fn area_len(&self) -> u64 {
        let head = align(restorer::SIZE as u64 + self.args_len(), PAGE);
        head + THREAD_STACK_SIZE * self.threads.len() as u64
    }

    /// Lays the arguments out after the blob for `base`.
    fn layout(&self, base: u64) -> (Layout, u64, u64) {
        // Returns (layout, TaskArgs address, leader stack top).
        let mut l = Layout {
            bytes: RESTORER.relocated(base),
            base,
        };
        debug_assert_eq!(l.bytes.len(), restorer::SIZE);
        let args = l.push(std::slice::from_ref(&self.task), 64);
        let mut threads: Vec<ThreadArgs> = self.threads.iter().map(|t| t.args).collect();
        let threads_addr = l.push(&threads, 64);
        let mut task = self.task;
        task.magic = ARGS_MAGIC;
        task.version = ABI_VERSION;
        task.nr_threads = self.threads.len() as u32;
        task.threads = threads_addr;
        task.vmas = l.push(&self.vmas, 8);
        task.nr_vmas = self.vmas.len() as u64;
        task.special = l.push(&self.special, 8);
        task.nr_special = self.special.len() as u64;
        task.vdso_patches = l.push(&self.vdso_patches, 8);
        task.nr_vdso_patches = self.vdso_patches.len() as u64;
        task.posix_timers = l.push(&self.posix_timers, 8);
        task.nr_posix_timers = self.posix_timers.len() as u64;
        task.shared_signals = l.push(&self.shared_signals, 8);
        task.nr_shared_signals = self.shared_signals.len() as u64;
        let mut keep = self.keep.clone();
        keep.sort_unstable_by_key(|k| k.start);
        task.keep = l.push(&keep, 8);
        task.nr_keep = self.keep.len() as u64;
        task.close_fds = l.push(&self.close_fds, 8);
        task.nr_close_fds = self.close_fds.len() as u64;
        task.mm.auxv = l.push(&self.auxv, 8);
        task.mm.auxv_size = (self.auxv.len() * 8) as u32;
        task.sync = SyncArgs::default();
        for (t, spec) in threads.iter_mut().zip(&self.threads) {
            t.signals = l.push(&spec.signals, 8);
            t.nr_signals = spec.signals.len() as u64;
            t.creds = match &spec.creds {
                Some((c, groups)) => {
                    let mut c = *c;
                    c.groups = l.push(groups, 8);
                    c.nr_groups = groups.len() as u32;
                    l.push(std::slice::from_ref(&c), 8)
                }
                None => 0,
            };
            let filters: Vec<SeccompFilterArgs> = spec
                .seccomp
                .iter()
                .map(|(prog, flags)| SeccompFilterArgs {
                    prog: l.push(prog, 8),
                    len: (prog.len() / 8) as u32,
                    flags: *flags,
                })
                .collect();
            t.seccomp = l.push(&filters, 8);
            t.nr_seccomp = filters.len() as u32;
            t.fpu = l.push(&spec.fpu, 64);
            t.fpu_size = spec.fpu.len() as u32;
        }
        let stacks = align(l.bytes.len() as u64, PAGE);
        for (i, t) in threads.iter_mut().enumerate() {
            t.stack_top = base + stacks + THREAD_STACK_SIZE * (i as u64 + 1);
        }
        task.area_start = base;
        task.area_len = stacks + THREAD_STACK_SIZE * self.threads.len() as u64;
        l.put(args, &task);
        for (i, t) in threads.iter().enumerate() {
            l.put(
                threads_addr + (i * std::mem::size_of::<ThreadArgs>()) as u64,
                t,
            );
        }
        let leader_top = threads.first().map_or(0, |t| t.stack_top);
        (l, args, leader_top)
    }

    /// Checks the spec and lays the area out for `base`.
    pub fn build(&self, base: u64) -> Result<Area, BlobArgsError> {
        if base % PAGE != 0 {
            return Err(BlobArgsError::UnalignedBase(base));
        }
        if self.threads.is_empty() {
            return Err(BlobArgsError::NoThreads);
        }
        for (index, t) in self.threads.iter().enumerate() {
            if t.fpu.len() as u64 > THREAD_STACK_SIZE / 4 {
                return Err(BlobArgsError::FpuTooBig {
                    index,
                    size: t.fpu.len(),
                });
            }
        }
        let mut prev_end = 0;
        for (index, v) in self.vmas.iter().enumerate() {
            if v.start >= v.end || v.start % PAGE != 0 || v.end % PAGE != 0 || v.start < prev_end {
                return Err(BlobArgsError::BadVma {
                    index,
                    start: v.start,
                    end: v.end,
                });
            }
            prev_end = v.end;
        }
        let len = self.area_len();
        let overlaps = |s: u64, e: u64| s < base + len && base < e;
        let ranges = self
            .vmas
            .iter()
            .filter(|v| v.start < 0x8000_0000_0000)
            .map(|v| (v.start, v.end))
            .chain(self.keep.iter().map(|k| (k.start, k.end)))
            .chain(
                self.special
                    .iter()
                    .flat_map(|s| [(s.from, s.from + s.len), (s.to, s.to + s.len)]),
            );
        for (start, end) in ranges {
            if overlaps(start, end) {
                return Err(BlobArgsError::AreaOverlap {
                    base,
                    len,
                    start,
                    end,
                });
            }
        }
        let (l, args, leader_stack_top) = self.layout(base);
        Ok(Area {
            bytes: l.bytes,
            base,
            entry_offset: restorer::EXPORT_ENTRY as u64,
            args,
            leader_stack_top,
        })
    }
}

/// Errors of [`enter`].
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("read /proc/self/maps: {0}")]
    Maps(std::io::Error),
    #[error("no free address range of {0:#x} bytes for the restorer area")]
    NoRoom(u64),
    #[error(transparent)]
    Layout(#[from] BlobArgsError),
    #[error(transparent)]
    Sys(#[from] crate::sys::restorer::RestorerSysError),
    #[error("{0}: {1}")]
    Last(&'static str, nix::errno::Errno),
}

/// The address ranges mapped in the calling process (`/proc/self/maps`).
pub fn self_ranges() -> std::io::Result<Vec<(u64, u64)>> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    Ok(maps
        .lines()
        .filter_map(|l| {
            let (s, e) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        })
        .collect())
}

/// Lowest and highest addresses the area may use.
const AREA_MIN: u64 = 0x1_0000_0000;
const AREA_MAX: u64 = 0x7fff_0000_0000;

impl TaskSpec {
    /// The highest page-aligned base (below 0x7fff00000000) where the area overlaps neither
    /// `current` (the calling process's mappings) nor any target VMA, keep or special range.
    pub fn pick_base(&self, current: &[(u64, u64)]) -> Option<u64> {
        let len = self.area_len();
        let mut busy: Vec<(u64, u64)> = current.to_vec();
        busy.extend(self.vmas.iter().map(|v| (v.start, v.end)));
        busy.extend(self.keep.iter().map(|k| (k.start, k.end)));
        busy.extend(
            self.special
                .iter()
                .flat_map(|s| [(s.from, s.from + s.len), (s.to, s.to + s.len)]),
        );
        busy.retain(|&(s, e)| s < AREA_MAX && e > AREA_MIN);
        busy.sort_unstable();
        // Walk the gaps from the top down; keep a guard page on both sides.
        let mut top = AREA_MAX;
        for &(s, e) in busy.iter().rev() {
            if e + PAGE <= top && top - (e + PAGE) >= len + PAGE {
                return Some((top - PAGE - len) & !(PAGE - 1));
            }
            top = top.min(s);
        }
        (top >= AREA_MIN + len + PAGE).then(|| (top - PAGE - len) & !(PAGE - 1))
    }
}

/// Everything after the engine's preparation in one call: picks a base, lays the area out,
/// maps it, runs `last` right before the jump (after the last use of /proc: a task enters its
/// root there) and jumps into the blob. Returns only on failure (nothing was changed then,
/// except for a mapped area that is unmapped again).
pub fn enter_after(
    spec: &TaskSpec,
    last: impl FnOnce() -> Result<(), (&'static str, nix::errno::Errno)>,
) -> Result<std::convert::Infallible, EnterError> {
    let ranges = self_ranges().map_err(EnterError::Maps)?;
    let len = spec.area_len();
    let base = spec.pick_base(&ranges).ok_or(EnterError::NoRoom(len))?;
    let area = spec.build(base)?;
    let mut m = crate::sys::restorer::RestorerArea::map(base, len)?;
    m.write(&area.bytes)?;
    last().map_err(|(step, e)| EnterError::Last(step, e))?;
    m.enter(area.entry_offset, area.args, area.leader_stack_top)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::pod::read_pod;

    fn spec() -> TaskSpec {
        let mut s = TaskSpec::new();
        for tid in [100, 101] {
            s.threads.push(ThreadSpec {
                args: ThreadArgs {
                    tid,
                    ..Default::default()
                },
                fpu: vec![1; 576],
                signals: vec![SigInfo::default()],
                creds: Some((CredsArgs::default(), vec![1, 2, 3])),
                seccomp: vec![(vec![0; 16], 0)],
            });
        }
        s.vmas.push(VmaArgs {
            start: 0x10000,
            end: 0x20000,
            kind: VMA_MMAP,
            fd: -1,
            ..Default::default()
        });
        s.auxv = vec![6, 4096, 0, 0];
        s
    }

    #[test]
    fn layout_points_inside_the_area() {
        let s = spec();
        let base = 0x7000_0000_0000;
        let a = s.build(base).unwrap();
        let len = s.area_len();
        assert_eq!(len % PAGE, 0);
        assert!(a.bytes.len() as u64 <= len - 2 * THREAD_STACK_SIZE);
        let t: TaskArgs = read_pod(&a.bytes[(a.args - base) as usize..]).unwrap();
        assert_eq!(t.magic, ARGS_MAGIC);
        assert_eq!(t.nr_threads, 2);
        assert_eq!(t.area_start, base);
        assert_eq!(t.area_len, len);
        assert_eq!(t.mm.auxv_size, 32);
        let th: ThreadArgs = read_pod(&a.bytes[(t.threads - base) as usize..]).unwrap();
        assert_eq!(th.tid, 100);
        assert_eq!(th.fpu % 64, 0);
        assert_eq!(th.fpu_size, 576);
        assert_eq!(th.stack_top, a.leader_stack_top);
        assert_eq!(a.leader_stack_top, base + len - THREAD_STACK_SIZE);
        assert_eq!(th.nr_seccomp, 1);
        let f: SeccompFilterArgs = read_pod(&a.bytes[(th.seccomp - base) as usize..]).unwrap();
        assert_eq!(f.len, 2);
        let c: CredsArgs = read_pod(&a.bytes[(th.creds - base) as usize..]).unwrap();
        assert_eq!(c.nr_groups, 3);
        let g: u32 = read_pod(&a.bytes[(c.groups - base + 8) as usize..]).unwrap();
        assert_eq!(g, 3);
    }

    #[test]
    fn picked_base_avoids_every_range() {
        let s = spec();
        let len = s.area_len();
        let current = [
            (0x7ffe_0000_0000, 0x7fff_0000_0000),
            (0x7ffd_0000_0000, 0x7ffd_ffff_f000),
        ];
        let base = s.pick_base(&current).unwrap();
        assert_eq!(base % PAGE, 0);
        for (a, b) in current.iter().copied().chain([(0x10000, 0x20000)]) {
            assert!(
                base + len <= a || base >= b,
                "{base:#x} overlaps {a:#x}-{b:#x}"
            );
        }
        assert!(s.build(base).is_ok());
        let full = [(AREA_MIN, AREA_MAX)];
        assert_eq!(s.pick_base(&full), None);
    }

    #[test]
    fn same_length_for_every_base() {
        let s = spec();
        let a = s.build(0x1000_0000).unwrap();
        let b = s.build(0x7f00_0000_0000).unwrap();
        assert_eq!(a.bytes.len(), b.bytes.len());
    }

    #[test]
    fn rejects_overlap_unaligned_and_empty() {
        let s = spec();
        assert!(matches!(
            s.build(0x10000),
            Err(BlobArgsError::AreaOverlap { .. })
        ));
        assert_eq!(
            s.build(0x1234).unwrap_err(),
            BlobArgsError::UnalignedBase(0x1234)
        );
        let mut e = spec();
        e.threads.clear();
        assert_eq!(e.build(0x1000_0000).unwrap_err(), BlobArgsError::NoThreads);
        let mut v = spec();
        v.vmas.push(VmaArgs {
            start: 0x18000,
            end: 0x30000,
            ..Default::default()
        });
        assert!(matches!(
            v.build(0x1000_0000),
            Err(BlobArgsError::BadVma { index: 1, .. })
        ));
    }
}
