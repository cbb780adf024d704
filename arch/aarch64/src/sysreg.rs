//! System-register access. Each macro expands to one `mrs`/`msr`; callers document why the
//! register they touch may be touched at that point.

/// Read a system register by name: `read_sysreg!("midr_el1")`.
#[macro_export]
macro_rules! read_sysreg {
    ($name:literal) => {{
        let v: u64;
        // SAFETY: reading a system register has no memory side effects; the register named exists
        // at EL2 on every ARMv8.0 CPU (callers check feature registers for optional ones).
        unsafe {
            core::arch::asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags));
        }
        v
    }};
}

/// Write a system register by name: `write_sysreg!("hcr_el2", value)`.
#[macro_export]
macro_rules! write_sysreg {
    ($name:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: the caller is Bulwark's EL2 code configuring its own or the guest's context; the
        // value is computed from architectural fields documented at the call site.
        unsafe {
            core::arch::asm!(concat!("msr ", $name, ", {}"), in(reg) v, options(nostack, preserves_flags));
        }
    }};
}

/// Instruction synchronisation barrier.
#[inline(always)]
pub fn isb() {
    // SAFETY: a barrier has no operands and cannot fault.
    unsafe { core::arch::asm!("isb", options(nostack, preserves_flags)) }
}

/// Data synchronisation barrier, inner shareable.
#[inline(always)]
pub fn dsb_ish() {
    // SAFETY: a barrier has no operands and cannot fault.
    unsafe { core::arch::asm!("dsb ish", options(nostack, preserves_flags)) }
}

/// The exception level Bulwark runs at (CurrentEL[3:2]).
pub fn current_el() -> u64 {
    (read_sysreg!("CurrentEL") >> 2) & 3
}
