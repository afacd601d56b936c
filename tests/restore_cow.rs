//! Pages shared copy-on-write between a parent and its children are shared again after
//! `stasis dump` + `stasis restore` (`restore::cow`), and each process still sees exactly its
//! own content (the workload checks every byte: `common::cow`, `restore_cow/fx-cow.c`).
//!
//! ```text
//! parent   64 MiB private anonymous, pages 10..13 rewritten after the fork
//! worker 1 pages 100..103 rewritten           worker 2 pages 200..203, 16000..16003
//! worker 3 pages 3000..3063 MADV_DONTNEED'ed (zero for it only)
//! checked  every byte of each view (PASS), physical pages (pagemap): untouched ones are one
//!          page in all four, rewritten ones private, dropped ones absent; Pss of the tree
//!          about one area (without the sharing it would be four)
//! ```

mod common;

use common::cow::{self, CowTree, AREA_KB};
use common::dump::*;
use common::lock::restore_lock;

const BASE: i32 = 37700;

#[test]
fn forked_workers_share_their_parents_pages_again() {
    let _lock = restore_lock();
    with_round_trip_deadline(180, cgroup_path("fx-cow", BASE), |r| {
        let work = tempfile::tempdir().unwrap();
        let mut w = cow::launch("fx-cow", BASE, work.path());
        let tree = CowTree::of(&w);
        *r.lock().unwrap() = tree.pids.clone();
        tree.assert_shared("before the dump", true);
        let (pss0, rss0) = (tree.pss_kb(), tree.rss_kb());
        let images = tempfile::tempdir().unwrap();
        stasis_dump(
            w.pid,
            images.path(),
            &["--freeze-cgroup", w.cgroup.to_str().unwrap()],
        );
        reap_dumped(&mut w);
        wait_gone(&tree.pids, 10, "the dumped tree");
        stasis_restore_detached(images.path(), &[]);
        let (pss1, rss1) = (tree.pss_kb(), tree.rss_kb());
        eprintln!(
            "fx-cow tree: Pss {pss0} KiB, Rss {rss0} KiB before the dump; \
             Pss {pss1} KiB, Rss {rss1} KiB after the restore"
        );
        tree.assert_shared("after the restore", false);
        // Without the sharing the tree holds four copies of the area.
        assert!(
            pss1 < 2 * AREA_KB && pss1 < pss0 + AREA_KB / 4,
            "the restored tree uses Pss {pss1} KiB (before the dump {pss0} KiB, area {AREA_KB} KiB)"
        );
        verify_then_kill(
            &w,
            &tree.pids,
            "fx-cow: each process's view after the restore",
        );
    })
}
