//! Bulwark x86_64 back end: VMX, VMCS, EPT/SPPT hardware glue, exit decoding.
//!
//! Only builds for `x86_64-unknown-none` (port I/O, MSRs, VMX instructions).
#![no_std]

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
