//! Code shared by every blob: raw syscalls, the memory functions `core` expects, and the
//! panic handler (a blob never unwinds: it traps so the driving process sees SIGTRAP).

pub mod mem;
pub mod syscall;

/// A panic in a blob traps with `int3` forever: the tracer sees SIGTRAP at a known place.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {
        // SAFETY: int3 only raises SIGTRAP for the tracer; it touches no memory.
        unsafe { core::arch::asm!("int3", options(nomem, nostack)) }
    }
}

/// Referenced by `core`'s precompiled code even with panic=abort; never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
