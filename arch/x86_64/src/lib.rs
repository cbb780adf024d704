//! Bulwark x86_64 back end: VMX, VMCS, EPT/SPPT hardware glue, exit decoding.
//!
//! Only builds for `x86_64-unknown-none` (port I/O, MSRs, VMX instructions).
#![cfg_attr(not(test), no_std)]
// Fail closed in the VMX layer (docs/x86_64.md): a VMX result (and any other `#[must_use]`
// value) is never dropped, not even with `let _ =`.
#![deny(unused_must_use)]
#![deny(clippy::let_underscore_must_use)]

extern crate alloc;

pub mod acpi_info;
pub mod cpu;
pub mod heap;
pub mod host;
pub mod launch;
pub mod layout;
pub mod mem;
pub mod rng;
pub mod serial;
pub mod spp;
pub mod vcpu;
pub mod vm;
pub mod vmcs;
pub mod vmx;
pub use x86_64;
