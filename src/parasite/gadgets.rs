//! Two pieces of code outside the parasite's area that let the leader remove the area when
//! the dumper dies (the blob's `cure_self`): code cannot unmap itself and go on, so the
//! leader jumps out of the area to them.
//!
//! ```text
//! leader, dumper gone:  rsp = exit frame (on its own stack, below the red zone), rax = munmap,
//!                       rdi/rsi = the area; jmp SYSCALL_RET
//! SYSCALL_RET           syscall            the area is gone
//!                       ret                pops the frame's pretcode: SIGRETURN
//! SIGRETURN             mov $15, %rax/eax; syscall     rt_sigreturn through the exit frame
//! ```
//!
//! Found by reading the task's readable, executable, private, not writable mappings in
//! `/proc/PID/maps` order (the executable, then its libraries: glibc and ld.so hold both),
//! in chunks, until both are found or a byte budget is spent.

use crate::sys::mem;

/// `mov $15, %rax; syscall` and `mov $15, %eax; syscall`.
const SIGRETURN: [&[u8]; 2] = [
    &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],
    &[0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],
];
/// `syscall; ret`.
const SYSCALL_RET: &[u8] = &[0x0f, 0x05, 0xc3];
/// Bytes read per chunk, and at most in all (the budget passes a debug-built executable of
/// 17 MB of text, e.g. the engine's own test binary with its TLS stack, to reach glibc).
const CHUNK: u64 = 64 * 1024;
const BUDGET: u64 = 64 << 20;
/// End of the user address space (the `[vsyscall]` page lies above).
const TASK_SIZE: u64 = 0x7fff_ffff_f000;

/// Addresses of a `syscall; ret` and of an `rt_sigreturn` sequence in process `pid`, or None.
pub fn find(pid: i32) -> Option<(u64, u64)> {
    let path = format!("/proc/{pid}/maps");
    let text = std::fs::read_to_string(&path).ok()?;
    let vmas = crate::proc::maps::parse(std::path::Path::new(&path), &text).ok()?;
    let (mut syscall_ret, mut sigreturn) = (None, None);
    let mut spent = 0u64;
    let mut buf = vec![0u8; CHUNK as usize + 16];
    for v in vmas
        .iter()
        .filter(|v| v.read && v.exec && !v.write && !v.shared && v.end <= TASK_SIZE)
    {
        let mut at = v.start;
        while at < v.end && spent < BUDGET {
            // Chunks overlap by the longest pattern, so none is missed at a border.
            let len = (v.end - at).min(CHUNK + 16) as usize;
            if mem::read(pid, at, &mut buf[..len]).is_err() {
                break;
            }
            spent += len as u64;
            let chunk = &buf[..len];
            if syscall_ret.is_none() {
                syscall_ret = position(chunk, SYSCALL_RET).map(|i| at + i as u64);
            }
            if sigreturn.is_none() {
                sigreturn = SIGRETURN
                    .iter()
                    .find_map(|p| position(chunk, p))
                    .map(|i| at + i as u64);
            }
            if let (Some(s), Some(r)) = (syscall_ret, sigreturn) {
                return Some((s, r));
            }
            at += CHUNK;
        }
    }
    None
}

fn position(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_both() {
        let (s, r) = super::find(std::process::id() as i32).expect("gadgets in our own maps");
        // SAFETY: both addresses lie in our readable executable mappings.
        let (s, r) = unsafe {
            (
                std::slice::from_raw_parts(s as *const u8, 3),
                std::slice::from_raw_parts(r as *const u8, 7),
            )
        };
        assert_eq!(s, super::SYSCALL_RET);
        assert!(super::SIGRETURN.iter().any(|p| r.starts_with(&p[..7])));
    }
}
