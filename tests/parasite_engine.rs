//! The dump engine writes private pages through the dump parasite: the pages image holds
//! exactly the task's memory, no fallback to `/proc/PID/mem` was taken, and the workload left
//! running is unchanged (no parasite area, same signal mask, still counting).

mod common;

use common::dump::{decode, dump_leave_running};
use common::log::Log;
use common::workload::Workload;
use stasis::dump::ptrace_backend::PtraceBackend;
use std::time::Duration;

fn num(v: &serde_json::Value) -> u64 {
    v.as_u64()
        .or_else(|| {
            v.as_str()
                .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        })
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn engine_dumps_pages_through_the_parasite() {
    let w = Workload::stateful(3, 32, Duration::from_secs(90));
    let maps_before = w.maps();
    let mask_before = w.status_field(w.pid, "SigBlk");
    let log = Log::default();
    let (dir, rep) =
        tracing::subscriber::with_default(log.subscriber(tracing::Level::WARN), || {
            dump_leave_running(w.pid, &mut PtraceBackend)
        });
    rep.expect("dump");
    w.assert_in_time();
    let text = log.text();
    assert!(
        !text.contains("/proc/PID/mem"),
        "fell back to /proc/PID/mem: {text}"
    );

    // Find the workload's memory in pagemap + pages.
    let pm = decode(&dir.path().join(format!("pagemap-{}.img", w.pid)));
    let entries = pm["entries"].as_array().unwrap();
    let pages_id = num(&entries[0]["pages_id"]);
    let pages = std::fs::read(dir.path().join(format!("pages-{pages_id}.img"))).unwrap();
    let mut off = 0u64;
    let mut found = Vec::new();
    for e in &entries[1..] {
        let (vaddr, n) = (num(&e["vaddr"]), num(&e["nr_pages"]) * 4096);
        let (lo, hi) = (
            vaddr.max(w.mem_addr),
            (vaddr + n).min(w.mem_addr + w.mem_len as u64),
        );
        if lo < hi {
            let at = (off + lo - vaddr) as usize;
            found.push((lo, pages[at..at + (hi - lo) as usize].to_vec()));
        }
        off += n;
    }
    assert_eq!(off as usize, pages.len(), "pages image size");
    found.sort();
    let got: Vec<u8> = found.into_iter().flat_map(|(_, b)| b).collect();
    assert!(
        got == w.pattern(),
        "pages image differs from the workload's memory"
    );

    assert_eq!(w.maps(), maps_before, "parasite area left in the task");
    assert_eq!(w.status_field(w.pid, "SigBlk"), mask_before);
    let c = w.counter();
    w.wait_counting(c);
}
