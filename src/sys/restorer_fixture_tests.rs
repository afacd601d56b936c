//! Restores single-process CRIU 4.2 fixtures (`fx-loop`, `fx-mem`, `fx-threads`,
//! `fx-signals`) with the restorer blob and a minimal engine written here (premap + fill every
//! VMA from the page images, the engine's vdso plan: a move, or a proxy when the running
//! kernel's vdso differs from the fixture's; core/mm conversion, fds 0-2 on /dev/null), then
//! runs the workload's own verification (SIGUSR2 → PASS). Needs root; when a PID of the
//! fixture is held by a foreign task, the test runs in a fresh PID namespace instead (noted on
//! stderr). Installs the fixtures (/tmp/criu-fixtures) when missing. The fixtures share PIDs
//! with other tests of the team, so the tests here run one at a time.

use crate::images::framing::{read_entries, read_single, Image};
use crate::images::pb;
use crate::restore::blob_args::abi::*;
use crate::restore::blob_args::TaskSpec;
use crate::restore::blob_core::{mm_from_pb, task_from_core, thread_from_core};
use crate::restore::vdso::{self, ImageVdso, RuntimeVdso, VdsoPlan};
use crate::sys::pod::read_pod;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const VMA_FILE_PRIVATE: u32 = 1 << 6;
const VMA_FILE_SHARED: u32 = 1 << 7;
const VMA_AREA_MEMFD: u32 = 1 << 14;
/// Where private VMAs are premapped and where a vdso proxy goes (the engine's places).
const PREMAP_BASE: u64 = 0x5000_0000_0000;
const PROXY_AT: u64 = 0x5800_0000_0000;

use crate::test_fixtures as fixtures;
/// The restore lock shared with the integration tests (fixed PIDs and result files).
#[allow(dead_code)]
#[path = "../../tests/common/lock.rs"]
pub(super) mod lock;
/// Who holds a fixture's PIDs (shared with the integration tests).
#[allow(dead_code)]
#[path = "../../tests/common/pids.rs"]
mod pids;

/// Page data of the image: (vaddr, bytes) per present page.
fn pages(dir: &Path, pagemap: &str) -> Vec<(u64, Vec<u8>)> {
    let img = Image::read_file(dir.join(pagemap)).expect("pagemap");
    let head: pb::PagemapHead = img.decode_entry(0).expect("pagemap head");
    let data = std::fs::read(dir.join(format!("pages-{}.img", head.pages_id))).expect("pages");
    let mut out = Vec::new();
    let mut off = 0usize;
    let mut i = 1;
    while let Ok(e) = img.decode_entry::<pb::PagemapEntry>(i) {
        let n = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages));
        for p in 0..n {
            out.push((e.vaddr + p * 4096, data[off..off + 4096].to_vec()));
            off += 4096;
        }
        i += 1;
    }
    out
}

/// Recreates the memfd behind file `id` (memfd.img inode + its shmem pages).
fn memfd_for(dir: &Path, files: &[pb::FileEntry], id: u64) -> i32 {
    let memfd = files
        .iter()
        .find(|f| u64::from(f.id) == id)
        .and_then(|f| f.memfd.as_ref())
        .expect("memfd file");
    let inodes: Vec<pb::MemfdInodeEntry> = read_entries(dir.join("memfd.img")).expect("memfd.img");
    let inode = inodes
        .iter()
        .find(|i| i.inode_id == u64::from(memfd.inode_id))
        .expect("memfd inode");
    let name = std::ffi::CString::new(inode.name.clone()).expect("name");
    // SAFETY: name is a valid C string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create");
    let file = std::mem::ManuallyDrop::new(
        // SAFETY: fd is the memfd just created; ManuallyDrop keeps it open.
        unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) },
    );
    file.set_len(inode.size).expect("memfd size");
    for (off, b) in pages(dir, &format!("pagemap-shmem-{}.img", inode.shmid)) {
        std::os::unix::fs::FileExt::write_all_at(&*file, &b, off).expect("memfd pages");
    }
    // SAFETY: fcntl on our own memfd.
    unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, inode.seals as libc::c_int) };
    fd
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// The fixture's vdso VMAs and its dumped vdso pages.
fn image_vdso(mm: &pb::MmEntry, pages: &[(u64, Vec<u8>)]) -> ImageVdso {
    let mut image = ImageVdso::from_vmas(&mm.vmas).expect("the fixture has a vdso");
    let (start, end) = image.vdso;
    let bytes: Vec<u8> = pages
        .iter()
        .filter(|(a, _)| *a >= start && *a < end)
        .flat_map(|(_, b)| b.clone())
        .collect();
    image.bytes = (bytes.len() as u64 == end - start).then_some(bytes);
    image
}

/// The engine's vdso decision for the fixture on the running kernel: a move when the
/// fixture's vdso matches it, else a proxy at a block free of the image's ranges. Returns
/// the plan and that block.
fn plan_vdso(mm: &pb::MmEntry, pages: &[(u64, Vec<u8>)]) -> (VdsoPlan, (u64, u64)) {
    let image = image_vdso(mm, pages);
    let rt = RuntimeVdso::current().expect("runtime vdso");
    let rt_bytes = rt.read_bytes().expect("runtime vdso bytes");
    let ranges: Vec<(u64, u64)> = mm.vmas.iter().map(|v| (v.start, v.end)).collect();
    let proxy_at = vdso::free_block(&ranges, PROXY_AT, rt.span()).expect("room for the proxy");
    let plan = vdso::plan(&image, &rt, &rt_bytes, |_, _| false, proxy_at).expect("vdso plan");
    (plan, (proxy_at, proxy_at + rt.span()))
}

/// Maps private VMA `v` (anonymous, or file `fd` with `flags`) read-write at `hint` and fills
/// it with its dumped pages; the blob moves it in place.
fn premap_private(v: &pb::VmaEntry, hint: u64, fd: i32, flags: i32, pages: &[(u64, Vec<u8>)]) {
    let len = v.end - v.start;
    // SAFETY: a new mapping at a free hint address (MAP_FIXED_NOREPLACE), far from the
    // target layout.
    let p = unsafe {
        libc::mmap(
            hint as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            // MAP_GROWSDOWN survives the blob's mremap: a stack keeps growing for
            // signal frames.
            flags | libc::MAP_FIXED_NOREPLACE | (v.flags as i32 & libc::MAP_GROWSDOWN),
            fd,
            v.pgoff as libc::off_t,
        )
    };
    assert_eq!(p as u64, hint, "premap of {:#x}", v.start);
    for (a, b) in pages.iter().filter(|(a, _)| *a >= v.start && *a < v.end) {
        // SAFETY: the page lies inside the premapped, writable copy of this VMA.
        unsafe {
            std::ptr::copy_nonoverlapping(b.as_ptr(), (hint + (a - v.start)) as *mut u8, 4096)
        };
    }
}

/// The child: builds the spec from the images and enters the blob (never returns).
fn child(dir: &Path, pid: i32, status_fd: i32) -> std::convert::Infallible {
    let mm: pb::MmEntry = read_single(dir.join(format!("mm-{pid}.img"))).expect("mm");
    let fs: pb::FsEntry = read_single(dir.join(format!("fs-{pid}.img"))).expect("fs");
    let pstree: Vec<pb::PstreeEntry> = read_entries(dir.join("pstree.img")).expect("pstree");
    let seccomp: Option<pb::SeccompEntry> = read_entries(dir.join("seccomp.img"))
        .ok()
        .and_then(|v| v.into_iter().next());
    let files: Vec<pb::FileEntry> = read_entries(dir.join("files.img")).expect("files");
    let path_of = |id: u64| {
        files
            .iter()
            .find(|f| u64::from(f.id) == id)
            .and_then(|f| f.reg.as_ref())
            .map(|r| r.name.clone())
            .expect("file")
    };
    let pages = pages(dir, &format!("pagemap-{pid}.img"));
    let mut spec = TaskSpec::new();
    let mut close = Vec::new();
    let mut hint: u64 = PREMAP_BASE;
    let (vdso_plan, proxy_block) = plan_vdso(&mm, &pages);
    // With a proxy, the image's vdso is premapped from its pages and its vvar as anonymous
    // memory, like any private mapping.
    let skipped = vdso_plan.skipped_status();
    for v in &mm.vmas {
        let len = v.end - v.start;
        if v.status & skipped != 0 {
            spec.vmas.push(VmaArgs {
                start: v.start,
                end: v.end,
                prot: v.prot,
                kind: VMA_SKIP,
                fd: -1,
                ..Default::default()
            });
            continue;
        }
        if v.status & (VMA_FILE_SHARED | VMA_AREA_MEMFD) == VMA_FILE_SHARED | VMA_AREA_MEMFD {
            let fd = memfd_for(dir, &files, v.shmid);
            close.push(fd as u32);
            spec.vmas.push(VmaArgs {
                start: v.start,
                end: v.end,
                pgoff: v.pgoff,
                prot: v.prot,
                flags: libc::MAP_SHARED as u32,
                madv: v.madv.unwrap_or(0),
                kind: VMA_MMAP,
                fd,
                ..Default::default()
            });
            continue;
        }
        let (fd, flags) = if v.status & VMA_FILE_PRIVATE != 0 {
            let f = std::fs::File::open(path_of(v.shmid))
                .expect("open mapped file")
                .into_raw_fd();
            close.push(f as u32);
            (f, libc::MAP_PRIVATE)
        } else {
            (
                -1,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            )
        };
        assert!(
            !overlaps((hint, hint + len), proxy_block),
            "premap of {:#x} would take the vdso proxy's place",
            v.start
        );
        premap_private(v, hint, fd, flags, &pages);
        spec.vmas.push(VmaArgs {
            start: v.start,
            end: v.end,
            premap: hint,
            prot: v.prot,
            flags: v.flags,
            madv: v.madv.unwrap_or(0),
            kind: VMA_PREMAPPED,
            fd: -1,
            ..Default::default()
        });
        spec.keep.push(KeepRange {
            start: hint,
            end: hint + len,
        });
        hint += len + 0x10_0000;
    }
    vdso_plan.apply(&mut spec);
    let exe = std::fs::File::open(path_of(u64::from(mm.exe_file_id)))
        .expect("exe")
        .into_raw_fd();
    close.push(exe as u32);
    mm_from_pb(&mut spec, &mm, exe as u32);
    let tids = &pstree
        .iter()
        .find(|p| p.pid == pid as u32)
        .expect("pstree entry")
        .threads;
    for &tid in tids {
        let core: pb::CoreEntry = read_single(dir.join(format!("core-{tid}.img"))).expect("core");
        spec.threads.push(
            thread_from_core(tid, &core, tid == pid as u32, seccomp.as_ref()).expect("thread"),
        );
        if tid == pid as u32 {
            task_from_core(&mut spec, tid, &core).expect("task");
        }
    }
    spec.task.umask = fs.umask.unwrap_or(0o022);
    spec.task.status_fd = status_fd;
    spec.task.cur_rseq = crate::sys::restorer::current_rseq();
    spec.close_fds = close;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("null")
        .into_raw_fd();
    for fd in 0..3 {
        // SAFETY: points fds 0-2 of this child at /dev/null.
        unsafe { libc::dup2(null, fd) };
    }
    spec.close_fds.push(null as u32);
    // SAFETY: setsid has no preconditions (the image's task is a session leader).
    unsafe { libc::setsid() };
    match crate::restore::blob_args::enter(&spec) {
        Err(e) => panic!("enter the restorer: {e}"),
    }
}

/// Forks a child that gets PID 30000 (through ns_last_pid), or None if it is taken.
fn fork_as_pid(
    want: i32,
    tids: &[u32],
    f: impl FnOnce() -> std::convert::Infallible,
) -> Option<i32> {
    if tids
        .iter()
        .any(|t| Path::new(&format!("/proc/{t}")).exists())
    {
        return None;
    }
    std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", want - 1)).expect("ns_last_pid");
    // SAFETY: the child runs f (which never returns) or exits at once.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid != 0 {
        // Move the PID allocator past the fixtures' range so that the thread TIDs the blob
        // asks for stay free while the child prepares its restore.
        let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", "31000");
    }
    if pid == 0 {
        if std::process::id() as i32 == want {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        }
        // SAFETY: leaves the forked child.
        unsafe { libc::_exit(99) };
    }
    if pid != want {
        // SAFETY: reaps the child that got another PID.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return None;
    }
    Some(pid)
}

struct Restored(i32);

impl Drop for Restored {
    fn drop(&mut self) {
        // SAFETY: kills and reaps our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

/// Restores fixture `name` (root `pid`) and checks PASS, in the host PID namespace; when one
/// of its PIDs is held by a task that is not ours, says so on stderr and runs the whole
/// restore and verification in a fresh PID namespace instead (a forked PID 2 there, see
/// [`crate::sys::pidns::run_in_new_pid_ns`]), asserting the same things.
fn restore_and_verify(name: &'static str, pid: i32) {
    // One fixture restore at a time, in this and every other test binary.
    let _lock = lock::restore_lock();
    fixtures::install_if_missing();
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "needs root");
    let dir = fixtures::image_dir(name);
    let pstree: Vec<pb::PstreeEntry> = read_entries(dir.join("pstree.img")).expect("pstree");
    let ids: Vec<i32> = pstree
        .iter()
        .flat_map(|p| p.threads.iter().map(|&t| t as i32))
        .collect();
    let holders = pids::foreign_holders(&ids);
    if holders.is_empty() {
        restore_and_verify_here(name, pid);
    } else {
        eprintln!("{}", pids::fallback_note(name, &holders));
        let r = crate::sys::pidns::run_in_new_pid_ns(
            move || restore_and_verify_here(name, pid),
            Duration::from_secs(60),
        );
        if let Err(e) = r {
            panic!("{name} in a fresh pid namespace: {e}");
        }
    }
}

/// The body of [`restore_and_verify`] in the current PID namespace (lock held by the caller).
fn restore_and_verify_here(name: &str, pid: i32) {
    let dir = fixtures::image_dir(name);
    let pstree: Vec<pb::PstreeEntry> = read_entries(dir.join("pstree.img")).expect("pstree");
    let tids = pstree
        .iter()
        .find(|p| p.pid == pid as u32)
        .expect("pstree entry")
        .threads
        .clone();
    let result = PathBuf::from(format!("/tmp/criu-fixtures/results/{name}.result"));
    let _ = std::fs::remove_file(&result);
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let d = dir.clone();
        if let Some(p) = fork_as_pid(pid, &tids, move || child(&d, pid, fds[1])) {
            break p;
        }
        assert!(Instant::now() < deadline, "PIDs of {name} stay taken");
        std::thread::sleep(Duration::from_millis(200));
    };
    let restored = Restored(got);
    // SAFETY: closes the parent's copy of the write end.
    unsafe { libc::close(fds[1]) };
    let mut pfd = libc::pollfd {
        fd: fds[0],
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(ready, 1, "no status from the restorer");
    let mut buf = [0u8; 24];
    // SAFETY: buf has 24 writable bytes.
    let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), 24) };
    // SAFETY: closes our read end.
    unsafe { libc::close(fds[0]) };
    assert_eq!(n, 24, "restorer closed its status pipe");
    let rec: StatusRecord = read_pod(&buf).expect("record");
    assert_eq!((rec.stage, rec.code), (STAGE_READY, 0), "{rec:?}");
    std::thread::sleep(Duration::from_millis(300));
    let task_dir = format!("/proc/{pid}/task");
    let nr_tasks = std::fs::read_dir(&task_dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(nr_tasks, tids.len(), "threads of the restored {name}");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim_end(), name, "comm of the restored task");
    // SAFETY: signals our own restored child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !result.exists() {
        assert!(Instant::now() < deadline, "no verdict from {name}");
        let mut st = 0;
        // SAFETY: polls our own child without blocking.
        if unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } == pid {
            std::mem::forget(restored);
            panic!("{name} ended without a verdict: wait status {st:#x}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let verdict = std::fs::read_to_string(&result).expect("result");
    assert_eq!(verdict, "PASS", "{name}");
    drop(restored);
}

#[test]
fn restores_fx_loop_fixture_and_it_passes_its_own_check() {
    restore_and_verify("fx-loop", 30000);
}

#[test]
fn restores_fx_threads_fixture_with_17_threads_and_it_passes_its_own_check() {
    restore_and_verify("fx-threads", 30200);
}

#[test]
fn restores_fx_mem_fixture_and_it_passes_its_own_check() {
    restore_and_verify("fx-mem", 30100);
}

#[test]
fn restores_fx_signals_fixture_and_it_passes_its_own_check() {
    restore_and_verify("fx-signals", 30500);
}
