//! The hardware random number generator (FEAT_RNG: `RNDR`), for the console-line key
//! (docs/console.md).

use crate::read_sysreg;

/// Whether the CPU implements `RNDR` (ID_AA64ISAR0_EL1.RNDR, bits [63:60], is 1).
pub fn has_rndr() -> bool {
    (read_sysreg!("id_aa64isar0_el1") >> 60) & 0xf == 1
}

/// One 64-bit random number, or None when the generator could not deliver one in time.
/// Only call where [`has_rndr`] is true (elsewhere the encoding is UNDEFINED).
pub fn rndr() -> Option<u64> {
    let v: u64;
    let ok: u64;
    // SAFETY: RNDR (s3_3_c2_c4_0) only reads the RNG and sets NZCV (Z=1 on failure); callers
    // check FEAT_RNG first. No memory is touched.
    unsafe {
        core::arch::asm!(
            "mrs {v}, s3_3_c2_c4_0",
            "cset {ok}, ne",
            v = out(reg) v,
            ok = out(reg) ok,
            options(nomem, nostack)
        );
    }
    (ok == 1).then_some(v)
}
