//! Synthesized image sets for restore benchmarks and memory tests, derived from the fx-loop
//! fixture (CRIU 4.2) on tmpfs (/dev/shm):
//!
//! ```text
//! + N-1 threads      core-TID.img: registers at an added code page running a pause() loop
//! + code page        r-x anonymous VMA at CODE, one present page
//! + extra VMAs       private anonymous, any prot/flags/madv; present page runs hold
//!                    pattern_word(addr) in every 8-byte word, absent pages are zero
//! ```

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::fixtures::fixtures;
use stasis::images::framing::Image;
use stasis::images::pb;

/// The added code page (`mov eax, 34; syscall; jmp back`).
pub const CODE: u64 = 0x1000_0000;
/// The fx-loop root PID.
pub const ROOT: i32 = 30000;

/// An extra private anonymous VMA.
#[derive(Debug, Clone)]
pub struct ExtraVma {
    pub start: u64,
    pub len: u64,
    pub prot: i32,
    /// Besides MAP_PRIVATE | MAP_ANONYMOUS (e.g. MAP_NORESERVE).
    pub flags: i32,
    /// `madvise` advice bits as dumped (bit 14: MADV_HUGEPAGE).
    pub madv: u64,
    /// Present runs: (first page index in the VMA, number of pages).
    pub present: Vec<(u64, u64)>,
}

impl ExtraVma {
    /// A read-write VMA whose pages are all present.
    pub fn full(start: u64, len: u64) -> Self {
        Self {
            start,
            len,
            prot: libc::PROT_READ | libc::PROT_WRITE,
            flags: 0,
            madv: 0,
            present: vec![(0, len / 4096)],
        }
    }

    /// Whether the page at `addr` is present in the images.
    pub fn is_present(&self, addr: u64) -> bool {
        let p = (addr - self.start) / 4096;
        self.present.iter().any(|&(s, n)| p >= s && p < s + n)
    }
}

/// The 8 bytes at `addr` of a present page (splitmix64 of the address).
pub fn pattern_word(addr: u64) -> u64 {
    let mut z = addr.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the pattern of the memory at `addr`.
pub fn fill_pattern(addr: u64, buf: &mut [u8]) {
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&pattern_word(addr + 8 * i as u64).to_le_bytes());
    }
}

/// `threads` free PIDs below 32768, outside the fixtures' range.
pub fn free_tids(n: usize) -> Vec<u32> {
    (2000u32..32768)
        .filter(|p| !(30000..30700).contains(p))
        .filter(|p| !Path::new(&format!("/proc/{p}")).exists())
        .take(n)
        .collect()
}

fn read<M: prost::Message + Default>(p: &Path) -> (Image, Vec<M>) {
    let img = Image::read_file(p).expect("read image");
    let v = img.decode().expect("decode image");
    (img, v)
}

/// Builds `/dev/shm/stasis-synth-TAG`: fx-loop with `threads` extra threads and `vmas`.
/// Returns the directory and the extra TIDs.
pub fn synthesize(tag: &str, threads: usize, vmas: &[ExtraVma]) -> (PathBuf, Vec<u32>) {
    let dir = PathBuf::from(format!("/dev/shm/stasis-synth-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir images");
    let src = fixtures().join("criu-4.2/fx-loop");
    for e in std::fs::read_dir(&src).expect("fixture dir").flatten() {
        if !e.file_name().to_string_lossy().ends_with(".json") {
            std::fs::copy(e.path(), dir.join(e.file_name())).expect("copy image");
        }
    }
    let tids = free_tids(threads);
    assert_eq!(tids.len(), threads, "not enough free pids");
    // pstree
    let (img, mut ps) = read::<pb::PstreeEntry>(&dir.join("pstree.img"));
    ps[0].threads.extend(&tids);
    Image::from_messages(img.kind, &ps)
        .write_file(dir.join("pstree.img"))
        .expect("write pstree");
    // thread cores
    let (cimg, core) = read::<pb::CoreEntry>(&dir.join(format!("core-{ROOT}.img")));
    let mut tcore = core[0].clone();
    tcore.tc = None;
    {
        let ti = tcore.thread_info.as_mut().expect("thread_info");
        ti.clear_tid_addr = 0;
        ti.gpregs.ip = CODE;
        ti.gpregs.sp = CODE + 4096;
        ti.gpregs.orig_ax = u64::MAX;
        let th = tcore.thread_core.as_mut().expect("thread_core");
        th.rseq_entry = None;
        th.sas = None;
        th.signals_p = None;
        th.blk_sigset = Some(0);
        th.comm = Some("bench".into());
    }
    for &t in &tids {
        Image::from_messages(cimg.kind, std::slice::from_ref(&tcore))
            .write_file(dir.join(format!("core-{t}.img")))
            .expect("write core");
    }
    // mm: code page + extra VMAs
    let (mimg, mut mm) = read::<pb::MmEntry>(&dir.join(format!("mm-{ROOT}.img")));
    let anon = |start: u64, end: u64, prot: i32, flags: i32, madv: u64| pb::VmaEntry {
        start,
        end,
        pgoff: 0,
        shmid: 0,
        prot: prot as u32,
        flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags) as u32,
        status: 1 | (1 << 9),
        fd: -1,
        madv: (madv != 0).then_some(madv),
        fdflags: None,
    };
    mm[0].vmas.push(anon(
        CODE,
        CODE + 4096,
        libc::PROT_READ | libc::PROT_EXEC,
        0,
        0,
    ));
    for v in vmas {
        mm[0]
            .vmas
            .push(anon(v.start, v.start + v.len, v.prot, v.flags, v.madv));
    }
    mm[0].vmas.sort_by_key(|v| v.start);
    Image::from_messages(mimg.kind, &mm)
        .write_file(dir.join(format!("mm-{ROOT}.img")))
        .expect("write mm");
    // pagemap + pages: the fixture's entries and the new ones, in address order (the restore
    // refuses entries out of order), each with its data in the pages file.
    let pm_path = dir.join(format!("pagemap-{ROOT}.img"));
    let pimg = Image::read_file(&pm_path).expect("read pagemap");
    let head: pb::PagemapHead = pimg.decode_entry(0).expect("pagemap head");
    let pages_path = dir.join(format!("pages-{}.img", head.pages_id));
    let old_pages = std::fs::read(&pages_path).expect("read pages");
    let mut items: Vec<(pb::PagemapEntry, Vec<u8>)> = Vec::new();
    let mut off = 0usize;
    for i in 1..pimg.entries.len() {
        let e: pb::PagemapEntry = pimg.decode_entry(i).expect("pagemap entry");
        let len = if e.flags.unwrap_or(0) & 4 != 0 {
            e.nr_pages.unwrap_or(e.compat_nr_pages as u64) as usize * 4096
        } else {
            0
        };
        items.push((e, old_pages[off..off + len].to_vec()));
        off += len;
    }
    let entry = |vaddr: u64, nr: u64| pb::PagemapEntry {
        vaddr,
        compat_nr_pages: 0,
        in_parent: None,
        flags: Some(4),
        nr_pages: Some(nr),
    };
    let mut code = vec![0xb8, 34, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7];
    code.resize(4096, 0xcc);
    items.push((entry(CODE, 1), code));
    for v in vmas {
        for &(p, n) in &v.present {
            let at = v.start + p * 4096;
            let mut data = vec![0u8; (n * 4096) as usize];
            fill_pattern(at, &mut data);
            items.push((entry(at, n), data));
        }
    }
    items.sort_by_key(|(e, _)| e.vaddr);
    let mut out = Image::new(pimg.kind);
    out.push(&head);
    let mut pages = std::io::BufWriter::new(File::create(&pages_path).expect("create pages"));
    for (e, data) in &items {
        out.push(e);
        pages.write_all(data).expect("write pages");
    }
    out.write_file(&pm_path).expect("write pagemap");
    pages.flush().expect("flush pages");
    (dir, tids)
}
