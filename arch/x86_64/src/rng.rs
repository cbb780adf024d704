//! Hardware random numbers (RDSEED, RDRAND) and the TSC, for the console-line key
//! (docs/console.md).

use raw_cpuid::CpuId;

/// `(rdseed, rdrand)`: which of the two instructions the CPU has.
pub fn features() -> (bool, bool) {
    let c = CpuId::new();
    let rdrand = c.get_feature_info().is_some_and(|f| f.has_rdrand());
    let rdseed = c
        .get_extended_feature_info()
        .is_some_and(|f| f.has_rdseed());
    (rdseed, rdrand)
}

/// The time-stamp counter.
pub fn tsc() -> u64 {
    // SAFETY: RDTSC reads a counter; CR4.TSD is clear at CPL 0 in any case.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Up to 10 tries of RDSEED (it may run dry); None when it never delivered.
/// Only call where [`features`] says the CPU has RDSEED.
pub fn rdseed() -> Option<u64> {
    (0..10).find_map(|_| {
        let v: u64;
        let ok: u8;
        // SAFETY: RDSEED only writes its register and CF; the caller checked CPUID.
        unsafe {
            core::arch::asm!("rdseed {v}", "setc {ok}", v = out(reg) v, ok = out(reg_byte) ok,
                options(nomem, nostack));
        }
        (ok == 1).then_some(v)
    })
}

/// Up to 10 tries of RDRAND; None when it never delivered.
/// Only call where [`features`] says the CPU has RDRAND.
pub fn rdrand() -> Option<u64> {
    (0..10).find_map(|_| {
        let v: u64;
        let ok: u8;
        // SAFETY: RDRAND only writes its register and CF; the caller checked CPUID.
        unsafe {
            core::arch::asm!("rdrand {v}", "setc {ok}", v = out(reg) v, ok = out(reg_byte) ok,
                options(nomem, nostack));
        }
        (ok == 1).then_some(v)
    })
}
