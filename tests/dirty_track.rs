//! Dirty-page tracking in one process, without ptrace: a userfaultfd of this test's own mm
//! stands for the one the parasite makes in a target. What the tracker must answer: exact
//! written pages of an armed VMA; "all dirty" for a VMA armed nowhere (new), for one another
//! userfaultfd holds (EBUSY), and no answer at all for a changed identity; and the tracker
//! process serves the same through its socket.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use stasis::dump::dirty::client::TrackerClient;
use stasis::dump::dirty::track::{Handle, Identity, Tracked};
use stasis::dump::dirty::{Dirt, Method};
use stasis::sys::dirty as kd;

const PAGE: u64 = 4096;

/// A private anonymous mapping of `pages` pages, every page written once.
struct Region {
    start: u64,
    len: u64,
}

impl Region {
    fn new(pages: u64) -> Self {
        let len = pages * PAGE;
        // SAFETY: a new private anonymous mapping wherever the kernel puts it; only this
        // Region touches it, through raw pointers, and unmaps it on drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let r = Region {
            start: p as u64,
            len,
        };
        for i in 0..pages {
            r.write(i);
        }
        r
    }

    fn end(&self) -> u64 {
        self.start + self.len
    }

    fn range(&self) -> (u64, u64) {
        (self.start, self.end())
    }

    fn write(&self, page: u64) {
        assert!(page * PAGE < self.len);
        // SAFETY: inside this Region's own mapping, which no Rust object refers to.
        unsafe { std::ptr::write_volatile((self.start + page * PAGE + 8) as *mut u64, page + 1) };
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps this Region's own mapping.
        unsafe { libc::munmap(self.start as *mut libc::c_void, self.len as usize) };
    }
}

fn uffd() -> OwnedFd {
    // SAFETY: userfaultfd(2) takes flags only and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, kd::UFFD_OPEN_FLAGS) } as i32;
    assert!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
    // SAFETY: a descriptor just created, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn me() -> i32 {
    std::process::id() as i32
}

fn tracked() -> Tracked {
    Tracked::new(me(), Identity::read(me()).unwrap(), Handle::Uffd(uffd())).unwrap()
}

#[test]
fn written_pages_are_exact_once_armed() {
    let a = Region::new(32);
    let mut t = tracked();
    // First collect: registers and arms; there is no parent.
    assert_eq!(t.collect(&[a.range()], None).unwrap(), vec![Dirt::All]);
    t.commit(1);
    a.write(3);
    a.write(4);
    a.write(20);
    let got = t.collect(&[a.range()], Some(1)).unwrap();
    assert_eq!(
        got,
        vec![Dirt::Written(vec![
            (a.start + 3 * PAGE, a.start + 5 * PAGE),
            (a.start + 20 * PAGE, a.start + 21 * PAGE)
        ])]
    );
    t.commit(2);
    // Re-armed by that collect: nothing written since.
    assert_eq!(
        t.collect(&[a.range()], Some(2)).unwrap(),
        vec![Dirt::Written(vec![])]
    );
}

#[test]
fn an_uncommitted_collect_is_answered_again_and_a_wrong_parent_is_all_dirty() {
    let a = Region::new(16);
    let mut t = tracked();
    t.collect(&[a.range()], None).unwrap();
    t.commit(1);
    a.write(3);
    // This dump fails: no commit. The retry against the same parent sees page 3 again.
    t.collect(&[a.range()], Some(1)).unwrap();
    a.write(9);
    assert_eq!(
        t.collect(&[a.range()], Some(1)).unwrap(),
        vec![Dirt::Written(vec![
            (a.start + 3 * PAGE, a.start + 4 * PAGE),
            (a.start + 9 * PAGE, a.start + 10 * PAGE)
        ])]
    );
    // A parent that is not the last commit (older, skipped, or another chain's).
    assert_eq!(t.collect(&[a.range()], Some(77)).unwrap(), vec![Dirt::All]);
    assert_eq!(t.collect(&[a.range()], None).unwrap(), vec![Dirt::All]);
}

#[test]
fn a_vma_armed_nowhere_is_all_dirty() {
    let a = Region::new(8);
    let mut t = tracked();
    t.collect(&[a.range()], None).unwrap();
    t.commit(1);
    let b = Region::new(8);
    let got = t.collect(&[a.range(), b.range()], Some(1)).unwrap();
    assert_eq!(got, vec![Dirt::Written(vec![]), Dirt::All]);
    t.commit(2);
    // Armed now.
    b.write(1);
    let got = t.collect(&[a.range(), b.range()], Some(2)).unwrap();
    assert_eq!(
        got[1],
        Dirt::Written(vec![(b.start + PAGE, b.start + 2 * PAGE)])
    );
}

#[test]
fn a_vma_of_another_userfaultfd_is_all_dirty() {
    let a = Region::new(8);
    let theirs = Region::new(8);
    // The application's own userfaultfd holds `theirs` (every page present: no fault waits).
    let app = stasis::sys::mem::Userfault::new().expect("userfaultfd of the application");
    let _held = app.register(theirs.start, theirs.len).unwrap();
    let mut t = tracked();
    t.collect(&[a.range(), theirs.range()], None).unwrap();
    t.commit(1);
    a.write(2);
    theirs.write(5);
    let got = t.collect(&[a.range(), theirs.range()], Some(1)).unwrap();
    assert_eq!(
        got,
        vec![
            Dirt::Written(vec![(a.start + 2 * PAGE, a.start + 3 * PAGE)]),
            Dirt::All
        ]
    );
    // What the tracker met: the kernel refuses a second userfaultfd on that VMA.
    let other = uffd();
    kd::api(std::os::fd::AsFd::as_fd(&other)).unwrap();
    assert_eq!(
        kd::register_wp(std::os::fd::AsFd::as_fd(&other), theirs.start, theirs.len),
        Err(nix::errno::Errno::EBUSY)
    );
}

#[test]
fn a_changed_identity_is_not_answered() {
    let a = Region::new(4);
    let mut id = Identity::read(me()).unwrap();
    id.start_ticks += 1;
    let mut t = Tracked::new(me(), id, Handle::Uffd(uffd())).unwrap();
    assert_eq!(t.collect(&[a.range()], None), None);
}

#[test]
fn the_tracker_process_serves_a_chain() {
    common::deadline::with_timeout(60, || {
        let a = Region::new(16);
        let mut c = TrackerClient::spawn(env!("CARGO_BIN_EXE_stasis").as_ref()).unwrap();
        let id = Identity::read(me()).unwrap();
        assert_eq!(
            c.collect(me(), id, &[a.range()]).unwrap(),
            None,
            "not adopted yet"
        );
        c.adopt(me(), id, Method::UffdWp, Some(uffd())).unwrap();
        assert_eq!(
            c.collect(me(), id, &[a.range()]).unwrap(),
            Some(vec![Dirt::All])
        );
        c.commit(7, &[me()]).unwrap();
        c.parent_gen = Some(7);
        a.write(7);
        assert_eq!(
            c.collect(me(), id, &[a.range()]).unwrap(),
            Some(vec![Dirt::Written(vec![(
                a.start + 7 * PAGE,
                a.start + 8 * PAGE
            )])])
        );
        c.commit(8, &[me()]).unwrap();
        // Found again through an image directory's record, by a new connection.
        let dir = tempfile::tempdir().unwrap();
        c.record(dir.path(), 8).unwrap();
        // One client at a time: this one hangs up first.
        drop(c);
        let mut again = TrackerClient::find(dir.path()).expect("the tracker answers");
        assert_eq!(again.parent_gen, Some(8));
        a.write(9);
        assert_eq!(
            again.collect(me(), id, &[a.range()]).unwrap(),
            Some(vec![Dirt::Written(vec![(
                a.start + 9 * PAGE,
                a.start + 10 * PAGE
            )])])
        );
        assert_eq!(again.status().unwrap(), vec![me()]);
        again.forget(me()).unwrap();
        assert_eq!(again.status().unwrap(), Vec::<i32>::new());
        let pid = again.pid;
        again.stop().unwrap();
        let t0 = std::time::Instant::now();
        while std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z"))
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the tracker did not stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(TrackerClient::find(dir.path()).is_none());
    })
}
