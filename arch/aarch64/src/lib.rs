//! Bulwark aarch64 back end: EL2, stage-2 glue, ESR decoding, SMCCC.
#![no_std]
