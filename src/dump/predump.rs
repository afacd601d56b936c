//! `stasis pre-dump`: copy a running tree's memory ahead of the final dump, CRIU's way.
//!
//! ```text
//!  link DIR/parent -> REL (--prev-images-dir), find or spawn the dirty tracker
//!  freeze ─► per process (parasite in it): smaps ─► VMAs ─► present pages (plan)
//!        │     ─► tracker: collect what changed since the parent and re-arm (or adopt)
//!        │     ─► since_parent: clean pages the parent has become PE_PARENT
//!        │     splice mode: the parasite vmsplices the pages into pipes we keep (page
//!        │     references, no copy; PROT_NONE pieces are left for after)
//!  release (the tree runs again)
//!        splice mode: the pipes are spliced into pages-N.img
//!        read mode: process_vm_readv of the page list into pages-N.img
//!  images: pagemap-PID.img + pages-N.img per process, inventory.img {img_version,
//!          dump_uptime, pre_dump_mode}, stats-dump; DIR/dirty-tracker.json
//! ```
//! Only memory is written (as CRIU's pre-dump); the final `stasis dump --prev-images-dir`
//! writes the rest. A page the tree writes after it was armed is dirty for the next dump, so
//! copying after the release never leaves a stale page in the chain.

use std::fs::File;
use std::os::unix::fs::FileExt;

use stasis_images::pb;

use super::error::{DumpError, Result};
use super::freeze::Backend;
use super::images_out::{self as out, ImageDir};
use super::misc_images::{self, DumpStats};
use super::options::{DumpOptions, PreDumpMode};
use super::pages::{self, Run};
use super::probe::{ProcessAccess, ProcessProbe, ThreadProbe};
use super::profile::Profile;
use super::{dirty, mm, tree};
use crate::proc;
use crate::proc::pagemap::PAGE_SIZE;

/// What a pre-dump did.
#[derive(Debug)]
pub struct PreDumpReport {
    pub stats: DumpStats,
    /// Processes dumped in full because they were not tracked yet.
    pub untracked: u64,
}

/// One process's page list, copied after the release.
struct Pending {
    pid: i32,
    runs: Vec<Run>,
    /// Splice mode: the pages pinned in pipes while frozen.
    pinned: Option<Pinned>,
}

/// Pages held in pipes: the present runs cut into (address, length, in a pipe); pieces not
/// in a pipe (PROT_NONE) are read after the release.
struct Pinned {
    pieces: Vec<(u64, u64, bool)>,
    pipes: Vec<(std::os::fd::OwnedFd, u64)>,
}

/// Runs a pre-dump of `opts.pid` with `backend`.
pub fn run(opts: &DumpOptions, backend: &mut dyn Backend) -> Result<PreDumpReport> {
    let prof = Profile::new();
    super::engine::check_target(opts)?;
    dirty::link_parent(opts)?;
    // Splice mode holds one pipe per MiB of pages until the tree runs again.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    // A pre-dump always tracks (CRIU enforces --track-mem too).
    let mut tracking = dirty::session::Session::open(opts, true)?;
    let mut stats = DumpStats::default();
    let mut dir = ImageDir::new(&opts.images_dir);
    // Pages go through the page pipeline: local files, or a page server.
    let mut sink = super::page_out::open_sink(opts)?;
    let t0 = prof.now_us();
    let mut frozen = backend.freeze(opts)?;
    stats.freezing_time = prof.now_us() - t0;
    let t_frozen = prof.now_us();
    let collected = collect(
        opts,
        frozen.as_mut(),
        sink.as_mut(),
        &mut tracking,
        &mut stats,
    );
    let released = frozen.release();
    stats.frozen_time = prof.now_us() - t_frozen;
    let pending = collected?;
    released?;
    let t = prof.now_us();
    for p in pending {
        let mut src = Released::new(p.pid);
        match p.pinned {
            Some(pinned) => {
                let mut pinned = PinnedSource::new(p.pid, pinned, &mut src);
                pages::send(
                    sink.as_mut(),
                    crate::pages::Target::Process(p.pid as u64),
                    &p.runs,
                    &mut pinned,
                    p.pid,
                )?;
                for r in p.runs.iter().filter(|r| r.flags & pages::PE_PRESENT != 0) {
                    stats.pages.pages_written += r.nr_pages;
                }
            }
            None => pages::write_private(
                sink.as_mut(),
                &mut src,
                p.pid,
                &p.runs,
                &[],
                &mut stats.pages,
            )?,
        }
    }
    let sent = sink
        .finish()
        .map_err(|e| DumpError::new("pages", opts.pid, e.errno(), e.to_string()))?;
    dir.adopt(&sent.files, sent.bytes);
    stats.memwrite_time = prof.now_us() - t;
    stats.parent_pages = tracking.stats.parent_pages;
    let img = |e| DumpError::image("images", opts.pid, e);
    dir.write_all(
        "inventory.img",
        out::INVENTORY,
        &[pb::InventoryEntry {
            img_version: misc_images::IMG_VERSION,
            dump_uptime: Some(dirty::uptime_us()),
            pre_dump_mode: Some(opts.pre_dump_mode.image_value()),
            ..Default::default()
        }],
    )
    .map_err(img)?;
    dir.write_all("stats-dump", out::STATS, &[misc_images::stats(&stats)])
        .map_err(img)?;
    dir.finish().map_err(img)?;
    let report = PreDumpReport {
        stats,
        untracked: tracking.stats.untracked,
    };
    tracking.finish(&opts.images_dir);
    Ok(report)
}

/// The frozen part: page lists (and, in splice mode, the pages themselves).
fn collect(
    opts: &DumpOptions,
    frozen: &mut dyn super::freeze::FrozenTree,
    sink: &mut dyn crate::pages::PageSink,
    tracking: &mut dirty::session::Session,
    stats: &mut DumpStats,
) -> Result<Vec<Pending>> {
    let procs = tree::collect(opts.pid)?;
    let mut files = super::collect_files::Files::new();
    let mut pending = Vec::new();
    for p in procs.iter().filter(|p| !p.zombie) {
        let pid = p.pid;
        frozen.with_process(pid, &p.threads, &mut |acc| {
            let hidden = acc.hidden_areas();
            let maps: Vec<proc::maps::Vma> = proc::maps::read_smaps(pid)
                .map_err(|e| DumpError::proc("mm", pid, e))?
                .into_iter()
                .filter(|v| !hidden.iter().any(|&(s, e)| v.start < e && s < v.end))
                .collect();
            let vmas = mm::vmas(pid, &maps, &mut files)?;
            let runs = pages::plan(pid, &vmas, &mut stats.pages, false)?;
            let runs = tracking.source(acc, pid, &vmas, runs)?;
            let pinned = match opts.pre_dump_mode {
                PreDumpMode::Read => None,
                PreDumpMode::Splice => {
                    let readable = mm::readable_ranges(&maps);
                    let pieces: Vec<(u64, u64, bool)> = runs
                        .iter()
                        .filter(|r| r.flags & pages::PE_PRESENT != 0)
                        .flat_map(|r| {
                            super::parasite_pages::split(
                                r.vaddr,
                                r.vaddr + r.nr_pages * PAGE_SIZE,
                                &readable,
                            )
                        })
                        .collect();
                    let iovs: Vec<(u64, u64)> =
                        pieces.iter().filter(|p| p.2).map(|p| (p.0, p.1)).collect();
                    let pipes = if iovs.is_empty() {
                        Some(Vec::new())
                    } else {
                        acc.pin_pages(&iovs)?
                    };
                    match pipes {
                        Some(pipes) => Some(Pinned { pieces, pipes }),
                        // This probe cannot pin: copy now, while frozen.
                        None => {
                            return pages::write_private(
                                sink,
                                acc,
                                pid,
                                &runs,
                                &readable,
                                &mut stats.pages,
                            )
                        }
                    }
                }
            };
            pending.push(Pending { pid, runs, pinned });
            Ok(())
        })?;
    }
    Ok(pending)
}

/// The pages a pre-dump pinned while the tree was frozen (vmspliced into pipes the dumper
/// holds), read out after the release; pieces the process could not read itself come from
/// [`Released`]. A source of the page pipeline: the sink's file gets the pipes spliced in,
/// all at once (local files) or a batch at a time (staged for a page server): each call
/// takes the next bytes of the pieces, in order.
struct PinnedSource<'a> {
    pid: i32,
    /// Present pieces in run order: address, length, whether it is in the pipes.
    pieces: Vec<(u64, u64, bool)>,
    pipes: std::vec::IntoIter<(std::os::fd::OwnedFd, u64)>,
    released: &'a mut Released,
    /// Where the next call starts: piece index and bytes of it already given.
    at: (usize, u64),
    /// The pipe being read and the bytes left in it.
    cur: Option<(std::os::fd::OwnedFd, u64)>,
}

impl<'a> PinnedSource<'a> {
    fn new(pid: i32, pinned: Pinned, released: &'a mut Released) -> Self {
        PinnedSource {
            pid,
            pieces: pinned.pieces,
            pipes: pinned.pipes.into_iter(),
            released,
            at: (0, 0),
            cur: None,
        }
    }
}

impl pages::PageSource for PinnedSource<'_> {
    fn copy_to(&mut self, regions: &[(u64, u64)], out: &mut File) -> Result<u64> {
        use std::io::Write;
        use std::os::fd::AsFd;
        let pid = self.pid;
        let want: u64 = regions.iter().map(|r| r.1).sum();
        let (i0, off0) = self.at;
        let have: u64 = self.pieces[i0.min(self.pieces.len())..]
            .iter()
            .map(|p| p.1)
            .sum::<u64>()
            - off0;
        if want > have {
            return Err(DumpError::new(
                "pages",
                pid,
                None,
                format!("{want} bytes asked of {have} pinned"),
            ));
        }
        let mut buf = Vec::new();
        let mut left = want;
        while left > 0 {
            let (i, off) = self.at;
            let (base, len, in_pipe) = self.pieces[i];
            let n = (len - off).min(left);
            let mut done = 0;
            while done < n {
                if in_pipe {
                    if self.cur.as_ref().is_none_or(|c| c.1 == 0) {
                        self.cur = self.pipes.next();
                    }
                    let Some((pipe, in_it)) = self.cur.as_mut() else {
                        return Err(DumpError::new("pages", pid, None, "the page pipes ran out"));
                    };
                    let k = (n - done).min(*in_it);
                    crate::sys::channel::splice_exact(pipe.as_fd(), out.as_fd(), k as usize)
                        .map_err(|e| DumpError::sys("pages", pid, e))?;
                    *in_it -= k;
                    done += k;
                } else {
                    if buf.is_empty() {
                        buf = vec![0u8; 256 * PAGE_SIZE as usize];
                    }
                    let k = (n - done).min(buf.len() as u64) as usize;
                    self.released
                        .read_memory(base + off + done, &mut buf[..k])?;
                    out.write_all(&buf[..k])
                        .map_err(|e| DumpError::io("pages", pid, "write pages", e))?;
                    done += k as u64;
                }
            }
            left -= n;
            self.at = if off + n == len {
                (i + 1, 0)
            } else {
                (i, off + n)
            };
        }
        Ok(want)
    }
}

/// Pages of a running process: `process_vm_readv`, `/proc/PID/mem` for what the process
/// cannot read itself (PROT_NONE), zeroes for what it unmapped meanwhile (such an address
/// is dirty for the next dump: a new mapping there is not the one armed).
struct Released {
    pid: i32,
    mem: Option<File>,
}

impl Released {
    fn new(pid: i32) -> Self {
        Released { pid, mem: None }
    }
}

impl ProcessAccess for Released {
    fn process(&mut self) -> Result<ProcessProbe> {
        Err(DumpError::new("pages", self.pid, None, "the process runs"))
    }

    fn threads(&mut self) -> Result<Vec<ThreadProbe>> {
        Err(DumpError::new("pages", self.pid, None, "the process runs"))
    }

    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<()> {
        use nix::sys::uio::{process_vm_readv, RemoteIoVec};
        let pid = nix::unistd::Pid::from_raw(self.pid);
        let len = buf.len();
        let got = process_vm_readv(
            pid,
            &mut [std::io::IoSliceMut::new(buf)],
            &[RemoteIoVec {
                base: addr as usize,
                len,
            }],
        )
        .unwrap_or(0);
        if got == len {
            return Ok(());
        }
        // Page by page for the rest: forced read, or zeroes.
        if self.mem.is_none() {
            self.mem = File::open(proc::path(self.pid, "mem")).ok();
        }
        let mut off = got - got % 4096;
        while off < len {
            let end = (off + 4096).min(len);
            let page = &mut buf[off..end];
            let ok = self
                .mem
                .as_ref()
                .is_some_and(|m| m.read_exact_at(page, addr + off as u64).is_ok());
            if !ok {
                page.fill(0);
            }
            off = end;
        }
        Ok(())
    }
}
