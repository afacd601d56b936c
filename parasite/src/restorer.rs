//! The restorer blob (no_std, position independent). Entry: `__export_entry` at offset 0.
#![no_std]
#![no_main]

mod common;

/// Entry point; placed first in the image by the linker script.
#[no_mangle]
#[link_section = ".text.entry"]
pub extern "C" fn __export_entry() -> ! {
    loop {
        // SAFETY: int3 only stops the task for its tracer.
        unsafe { core::arch::asm!("int3", options(nomem, nostack)) }
    }
}
