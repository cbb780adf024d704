//! Entry code and boot-information parsing.
#![cfg_attr(not(test), no_std)]

// arm64: device-tree input/output (host-tested) and the EL2 entry code (target only).
pub mod fdt;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod aarch64;
