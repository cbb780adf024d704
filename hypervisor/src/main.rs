//! The Bulwark binary: glue between boot, the arch back end and the core.
#![no_std]
#![no_main]

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
