//! The restorer blob (no_std, position independent). Entry: `__export_entry` at offset 0,
//! called with `rdi` = the `TaskArgs` and `rsp` in the leader's stack of the restorer area.
//! The argument layout and the steps are described in `restorer/abi.rs`.
#![no_std]
#![no_main]
#![allow(dead_code)]

#[path = "restorer/abi.rs"]
mod abi;
mod common;

/// Entry point; placed first in the image by the linker script.
#[no_mangle]
#[link_section = ".text.entry"]
pub extern "C" fn __export_entry(_args: *const abi::TaskArgs) -> ! {
    loop {
        // SAFETY: int3 only stops the task for its tracer.
        unsafe { core::arch::asm!("int3", options(nomem, nostack)) }
    }
}
