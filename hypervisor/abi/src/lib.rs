//! The one ABI crate shared by Bulwark, every guest image and the host driver: hypercall numbers,
//! SMCCC function IDs, ROE sub-operations, error codes, CPUID leaves, console line formats.
//! Depends only on `core` and `siphasher` (the console lines' MAC, [`logauth`]).
//!
//! Every decoder maps an unknown value to an error, never to a default.
#![no_std]
#![deny(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

pub mod console;
pub mod cpuid;
pub mod errno;
pub mod logauth;
pub mod policy;
pub mod roe;
pub mod smccc;

#[cfg(test)]
mod tests;
