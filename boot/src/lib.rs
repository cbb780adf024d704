//! Entry code and boot-information parsing.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

// Bulwark's own command line (shared by both architectures).
pub mod cmdline;

// arm64: device-tree input/output (host-tested) and the EL2 entry code (target only).
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod aarch64;
pub mod fdt;
pub mod fdt_guest;

// x86_64: multiboot2 information -> boot description (host-tested); the entry assembly lives in
// boot/src/x86_64/entry.s and is included by the x86_64 binary glue.
pub mod linux_x86;
pub mod multiboot1;
pub mod multiboot2_info;
pub mod multiboot_plan;
