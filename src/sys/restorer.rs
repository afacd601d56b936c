//! Entering the restorer blob: map its area at the chosen address, copy the built bytes in,
//! switch to the leader's stack in the area and jump to the entry. See
//! `restore::blob_args` for how the bytes are laid out.

/// The restorer's argument ABI, defined once and compiled into the blob too (re-exported as
/// `restore::blob_args::abi`).
#[path = "../../parasite/src/restorer/abi.rs"]
#[allow(missing_docs)]
#[allow(dead_code)] // the blob's side uses what the engine's does not
pub(crate) mod abi;

use abi::RseqArgs;

/// Errors of the restorer's system layer.
#[derive(Debug, thiserror::Error)]
pub enum RestorerSysError {
    /// The area address or length is not page aligned or empty.
    #[error("restorer area {base:#x}+{len:#x} is not page aligned")]
    Unaligned { base: u64, len: u64 },
    /// `mmap(MAP_FIXED_NOREPLACE)` of the area failed (e.g. EEXIST: something is mapped there).
    #[error("mmap of the restorer area at {base:#x}+{len:#x}: {errno}")]
    Map {
        base: u64,
        len: u64,
        errno: nix::errno::Errno,
    },
    /// The bytes to copy do not fit in the area.
    #[error("restorer image of {size} bytes does not fit the {len:#x}-byte area")]
    TooBig { size: usize, len: u64 },
}

/// The restorer area mapped RWX at a fixed address in the calling process; unmapped on drop
/// unless [`RestorerArea::enter`] was called.
#[derive(Debug)]
pub struct RestorerArea {
    base: u64,
    len: u64,
}

impl RestorerArea {
    /// `mmap(base, len, RWX, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE)`.
    pub fn map(base: u64, len: u64) -> Result<Self, RestorerSysError> {
        if base % 4096 != 0 || len % 4096 != 0 || len == 0 {
            return Err(RestorerSysError::Unaligned { base, len });
        }
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no memory the
        // program uses can be affected; the result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(RestorerSysError::Map {
                base,
                len,
                errno: nix::errno::Errno::last(),
            });
        }
        if p as u64 != base {
            // Old kernels without MAP_FIXED_NOREPLACE treat it as a hint.
            // SAFETY: p/len is the mapping just created and not used by anything else.
            unsafe { libc::munmap(p, len as usize) };
            return Err(RestorerSysError::Map {
                base,
                len,
                errno: nix::errno::Errno::EEXIST,
            });
        }
        Ok(RestorerArea { base, len })
    }

    /// Copies `bytes` to the start of the area.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), RestorerSysError> {
        if bytes.len() as u64 > self.len {
            return Err(RestorerSysError::TooBig {
                size: bytes.len(),
                len: self.len,
            });
        }
        // SAFETY: the area [base, base+len) is our own writable mapping and bytes fits in it;
        // the source is a distinct heap/stack object, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base as *mut u8, bytes.len()) };
        Ok(())
    }

    /// Switches to `stack_top` and jumps to `base + entry_offset` with `rdi = args`. The blob
    /// replaces the whole address space of the calling process with the restored one: call it
    /// only in a single-threaded process made for this (the forked task to restore) after
    /// writing an area built by `blob_args::TaskSpec::build` for this base.
    pub fn enter(self, entry_offset: u64, args: u64, stack_top: u64) -> ! {
        let entry = self.base + entry_offset;
        let in_area = |a: u64| a >= self.base && a <= self.base + self.len;
        assert!(
            in_area(entry) && in_area(args) && in_area(stack_top),
            "restorer entry outside its area"
        );
        std::mem::forget(self);
        // SAFETY: entry, args and stack_top lie in the area holding the relocated restorer
        // blob and its arguments (checked above, contents written by the caller); the blob
        // never returns, so abandoning the Rust stack and all Rust state is fine in this
        // single-threaded process.
        unsafe {
            core::arch::asm!(
                "mov rsp, {stack}",
                "xor ebp, ebp",
                "jmp {entry}",
                stack = in(reg) stack_top,
                entry = in(reg) entry,
                in("rdi") args,
                options(noreturn),
            )
        }
    }
}

impl Drop for RestorerArea {
    fn drop(&mut self) {
        // SAFETY: [base, base+len) is the mapping this value created and still owns.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len as usize) };
    }
}

extern "C" {
    /// glibc >= 2.35: offset of the rseq area from the thread pointer.
    static __rseq_offset: isize;
    /// glibc >= 2.35: size of the registered rseq area (0: not registered).
    static __rseq_size: u32;
}

/// glibc's rseq signature on x86.
const GLIBC_RSEQ_SIG: u32 = 0x5305_3053;

/// The calling thread's rseq registration made by glibc (`ptr == 0` if none); the restorer
/// must drop it before unmapping the engine's memory.
pub fn current_rseq() -> RseqArgs {
    // SAFETY: both are plain data symbols exported by glibc and never written after startup.
    let (offset, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 {
        return RseqArgs::default();
    }
    let tp: u64;
    // SAFETY: on x86-64 glibc the word at fs:0 is the thread pointer (TCB self pointer).
    unsafe {
        core::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    RseqArgs {
        ptr: tp.wrapping_add(offset as u64),
        len: size.max(32),
        sig: GLIBC_RSEQ_SIG,
    }
}
