//! The one ABI crate shared by Bulwark, every guest image and the host driver: hypercall numbers,
//! SMCCC function IDs, ROE sub-operations, error codes, CPUID leaves, console line formats.
//! Depends only on `core`.
#![no_std]

pub mod console;
