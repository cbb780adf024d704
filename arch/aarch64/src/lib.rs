//! Bulwark aarch64 back end: EL2, stage-2 glue, ESR decoding, SMCCC.
//!
//! Pure parts (ESR decoding, the SMCCC dispatcher, the Image loader plan) build and are tested on
//! the host; everything touching system registers builds only for the bare-metal target.
#![cfg_attr(not(test), no_std)]

pub mod esr;
pub mod gicr;
pub mod image;
pub mod inject;
pub mod insn;
pub mod smccc;
pub mod tagmask;

#[cfg(target_arch = "aarch64")]
pub mod el2;
#[cfg(target_arch = "aarch64")]
pub mod firmware;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod mem;
#[cfg(target_arch = "aarch64")]
pub mod mte;
#[cfg(target_arch = "aarch64")]
pub mod pl011;
#[cfg(target_arch = "aarch64")]
pub mod power;
#[cfg(target_arch = "aarch64")]
pub mod rng;
#[cfg(target_arch = "aarch64")]
pub mod sysreg;
#[cfg(target_arch = "aarch64")]
pub mod vcpu;
