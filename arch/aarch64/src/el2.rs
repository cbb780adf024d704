//! EL2 configuration for running one guest at EL1 under stage 2, the one stage-2 TLB
//! maintenance function, and exception injection into the guest.

use crate::vcpu::VcpuRegs;
use crate::{read_sysreg, write_sysreg};
use bulwark_core::addr::GuestPhysAddr;

/// HCR_EL2 bits Bulwark sets. Everything else is 0 (no trap), see [`HCR_EL2`].
pub mod hcr {
    /// Stage-2 translation on.
    pub const VM: u64 = 1 << 0;
    /// Set/way cache maintenance by the guest upgraded to clean+invalidate (safe under stage 2).
    pub const SWIO: u64 = 1 << 1;
    /// Trap WFI: Bulwark waits itself (a trapped WFI is one exit per idle period).
    pub const TWI: u64 = 1 << 13;
    /// Trap SMC: PSCI calls must go through Bulwark (CPU_ON would otherwise start a CPU outside
    /// stage 2; SYSTEM_OFF must end the run through Bulwark's verdict line).
    pub const TSC: u64 = 1 << 19;
    /// EL1 is AArch64.
    pub const RW: u64 = 1 << 31;
    /// Pointer authentication keys and instructions usable at EL1/EL0 without trapping.
    pub const APK: u64 = 1 << 40;
    pub const API: u64 = 1 << 41;
}

/// The HCR_EL2 value for a guest. Choices (docs/aarch64.md):
/// * IMO/FMO/AMO = 0: physical interrupts and SErrors go straight to the guest (the GIC is
///   passed through, Bulwark takes no interrupts);
/// * TWE = 0: WFE is not trapped (spin-wait loops would exit for nothing on one vCPU);
/// * no TVM/TRVM/TID*/TACR/TSW: the guest owns its EL1 state; stage 2 is what protects Bulwark.
///
/// [`prepare`] adds HCR_EL2.ATA ([`crate::mte::HCR_ATA`]) on a CPU with FEAT_MTE2.
pub const HCR_EL2: u64 = hcr::VM | hcr::SWIO | hcr::TWI | hcr::TSC | hcr::RW | hcr::APK | hcr::API;

/// SCTLR_EL1 at guest entry: MMU and caches off, RES1 bits set (Linux boot protocol).
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;
/// SPSR for entering the guest: EL1h, D/A/I/F masked.
pub const SPSR_EL1H_MASKED: u64 = 0x3c5;

/// Configure EL2 for the guest on this CPU: stage 2 (`vtcr`, `vttbr`), traps, timers, the GIC
/// CPU interface, FP/SVE/SME access and how their state is switched
/// ([`crate::vcpu::init_fp_state`]), MTE ([`crate::mte`]), the identity registers the guest reads. Call once per CPU
/// before the first [`crate::vcpu::enter_guest`].
pub fn prepare(vtcr: u64, vttbr: u64) {
    // Identity registers: the guest reads these instead of MIDR_EL1/MPIDR_EL1 (UNKNOWN at reset).
    write_sysreg!("vpidr_el2", read_sysreg!("midr_el1"));
    write_sysreg!("vmpidr_el2", read_sysreg!("mpidr_el1"));

    // FP/SIMD, SVE, SME not trapped (CPTR_EL2 with E2H = 0: TFP bit 10, TZ bit 8, TSM bit 12;
    // RES1 bits 13, 9, 7:0 and TZ/TSM when the feature is absent).
    let pfr0 = read_sysreg!("id_aa64pfr0_el1");
    let pfr1 = read_sysreg!("id_aa64pfr1_el1");
    let has_sve = (pfr0 >> 32) & 0xf != 0;
    let has_sme = (pfr1 >> 24) & 0xf != 0;
    let mut cptr: u64 = 0x22ff;
    if !has_sve {
        cptr |= 1 << 8;
    }
    if !has_sme {
        cptr |= 1 << 12;
    }
    write_sysreg!("cptr_el2", cptr);
    crate::sysreg::isb();
    if has_sve {
        // Let the guest use the largest vector length the CPU has.
        write_sysreg!("S3_4_C1_C2_0", 0xf); // ZCR_EL2.LEN
    }
    // SMCR_EL2: the longest streaming length, and FA64 (the full A64 instruction set in
    // streaming mode) when the CPU has it, so the guest gets what ID_AA64SMFR0_EL1 tells it.
    let has_fa64 = has_sme && read_sysreg!("S3_0_C0_C4_5") >> 63 != 0; // ID_AA64SMFR0_EL1.FA64
    if has_sme {
        let fa64 = if has_fa64 { 1 << 31 } else { 0 };
        write_sysreg!("S3_4_C1_C2_6", fa64 | 0xf); // SMCR_EL2.FA64, LEN
    }
    crate::sysreg::isb();
    crate::vcpu::init_fp_state(has_sve, has_sme, has_fa64);

    // Timers: EL1 physical counter and timer accessible (EL1PCTEN, EL1PCEN); no virtual offset.
    write_sysreg!("cnthctl_el2", 0b11);
    write_sysreg!("cntvoff_el2", 0);

    // GICv3 system-register CPU interface usable at EL1 (ICC_SRE_EL2: SRE, DFB, DIB, Enable);
    // the virtual CPU interface stays off (ICH_HCR_EL2 = 0), so EL1 talks to the physical one.
    let pfr0_gic = (pfr0 >> 24) & 0xf;
    if pfr0_gic != 0 {
        write_sysreg!("S3_4_C12_C9_5", 0xf); // ICC_SRE_EL2
        crate::sysreg::isb();
        write_sysreg!("S3_4_C12_C11_0", 0); // ICH_HCR_EL2
    }

    // Debug/PMU: the guest gets every PMU counter (HPMN = PMCR_EL0.N), no debug traps.
    let pmu_n = if (read_sysreg!("id_aa64dfr0_el1") >> 8) & 0xf != 0 {
        (read_sysreg!("pmcr_el0") >> 11) & 0x1f
    } else {
        0
    };
    write_sysreg!("mdcr_el2", pmu_n);

    // Guest EL1 starts with its MMU off.
    write_sysreg!("sctlr_el1", SCTLR_EL1_RESET);

    write_sysreg!("vtcr_el2", vtcr);
    write_sysreg!("vttbr_el2", vttbr);
    // FEAT_MTE2: the guest gets memory tagging (its MTE registers and tag accesses untrapped;
    // stage 2 maps RAM Normal WB, so its stage 1 may choose Tagged), and Bulwark reads and
    // writes tags itself for the software store path (crate::mte, docs/aarch64.md).
    let mut hcr = HCR_EL2;
    if crate::mte::level() >= 2 {
        hcr |= crate::mte::HCR_ATA;
        crate::mte::enable_el2_tags();
    }
    write_sysreg!("hcr_el2", hcr);
    crate::sysreg::isb();
    flush_stage2_all();
}

/// Put the guest's EL1 (and EL0) system registers back to the values a freshly booted guest
/// gets, for a guest reboot (PSCI SYSTEM_RESET): MMU and caches off ([`SCTLR_EL1_RESET`]),
/// translation, vector, thread and exception registers zero, FP/SIMD access trapped at EL1 as at
/// reset (CPACR_EL1 = 0; the kernel enables it), EL1 timers and counters stopped and not
/// accessible from EL0, debug (MDSCR_EL1) off, the GICv3 CPU interface's group-1 enable and
/// priority mask cleared. Devices and the GIC distributor/redistributors are not reset (see
/// docs/aarch64.md). Call only while the guest is not running (between exits).
pub fn reset_el1() {
    write_sysreg!("sctlr_el1", SCTLR_EL1_RESET);
    crate::sysreg::isb();
    write_sysreg!("tcr_el1", 0);
    write_sysreg!("ttbr0_el1", 0);
    write_sysreg!("ttbr1_el1", 0);
    write_sysreg!("mair_el1", 0);
    write_sysreg!("amair_el1", 0);
    write_sysreg!("vbar_el1", 0);
    write_sysreg!("contextidr_el1", 0);
    write_sysreg!("cpacr_el1", 0);
    write_sysreg!("esr_el1", 0);
    write_sysreg!("far_el1", 0);
    write_sysreg!("afsr0_el1", 0);
    write_sysreg!("afsr1_el1", 0);
    write_sysreg!("par_el1", 0);
    write_sysreg!("elr_el1", 0);
    write_sysreg!("spsr_el1", 0);
    write_sysreg!("sp_el0", 0);
    write_sysreg!("sp_el1", 0);
    write_sysreg!("tpidr_el0", 0);
    write_sysreg!("tpidrro_el0", 0);
    write_sysreg!("tpidr_el1", 0);
    write_sysreg!("mdscr_el1", 0);
    write_sysreg!("cntkctl_el1", 0);
    write_sysreg!("cntv_ctl_el0", 0);
    write_sysreg!("cntp_ctl_el0", 0);
    if (read_sysreg!("id_aa64pfr1_el1") >> 24) & 0xf != 0 {
        // SVCR = 0: out of streaming mode, ZA off (SMSTOP), as after reset.
        write_sysreg!("S3_3_C4_C2_2", 0);
    }
    if (read_sysreg!("id_aa64pfr0_el1") >> 24) & 0xf != 0 {
        write_sysreg!("S3_0_C12_C12_7", 0); // ICC_IGRPEN1_EL1
        write_sysreg!("S3_0_C4_C6_0", 0); // ICC_PMR_EL1
    }
    crate::sysreg::isb();
}

/// Point the CPU at another stage-2 table (`vttbr`: root and VMID). The caller invalidates the
/// VMID's TLB entries ([`flush_stage2`]) before the guest runs again and frees the old table only
/// after that.
pub fn switch_stage2(vttbr: u64) {
    crate::sysreg::dsb_ish();
    write_sysreg!("vttbr_el2", vttbr);
    crate::sysreg::isb();
}

/// THE stage-2 TLB maintenance function: invalidate the stage-2 entries for the IPA range
/// `[start, start+len)` (TLBI IPAS2E1IS per 4 KiB page, for the current VMID) and then the
/// stage-1 entries of the VMID (TLBI VMALLE1IS), which the architecture requires because
/// combined stage-1+2 entries may cache the old stage-2 result. Large ranges (> 512 pages)
/// invalidate the whole VMID instead.
pub fn flush_stage2(start: GuestPhysAddr, len: u64) {
    let first = start.as_u64() >> 12;
    let pages = len.div_ceil(4096);
    crate::sysreg::dsb_ish();
    if pages > 512 {
        flush_stage2_all();
        return;
    }
    for p in 0..pages {
        let operand = (first + p) & ((1 << 36) - 1);
        // SAFETY: TLB invalidation by IPA for the VMID in VTTBR_EL2; no memory is accessed.
        unsafe { core::arch::asm!("tlbi ipas2e1is, {}", in(reg) operand, options(nostack)) }
    }
    crate::sysreg::dsb_ish();
    // SAFETY: invalidates stage-1 entries of the current VMID (required after IPAS2E1IS).
    unsafe { core::arch::asm!("tlbi vmalle1is", options(nostack)) }
    crate::sysreg::dsb_ish();
    crate::sysreg::isb();
}

/// Invalidate what the TLBs hold from the one stage-2 leaf (page or block) that maps `ipa`,
/// which was just made invalid (break-before-make): a block is cached as one entry, and a TLBI
/// by IPA removes every entry that contains the address, so one TLBI covers a 2 MiB or 1 GiB
/// block (as Linux/KVM does for a block unmap). Combined stage-1+2 entries go with VMALLE1IS.
pub fn flush_stage2_leaf(ipa: GuestPhysAddr) {
    let operand = (ipa.as_u64() >> 12) & ((1 << 36) - 1);
    crate::sysreg::dsb_ish();
    // SAFETY: TLB invalidation by IPA for the VMID in VTTBR_EL2; no memory is accessed.
    unsafe { core::arch::asm!("tlbi ipas2e1is, {}", in(reg) operand, options(nostack)) }
    crate::sysreg::dsb_ish();
    // SAFETY: invalidates stage-1 entries of the current VMID (required after IPAS2E1IS).
    unsafe { core::arch::asm!("tlbi vmalle1is", options(nostack)) }
    crate::sysreg::dsb_ish();
    crate::sysreg::isb();
}

/// Invalidate every stage-1 and stage-2 entry of the current VMID.
pub fn flush_stage2_all() {
    crate::sysreg::dsb_ish();
    // SAFETY: TLB invalidation for the current VMID; no memory is accessed.
    unsafe { core::arch::asm!("tlbi vmalls12e1is", options(nostack)) }
    crate::sysreg::dsb_ish();
    crate::sysreg::isb();
}

/// Clean `[addr, addr+len)` from the data cache to the point of coherency and invalidate the
/// instruction cache, so a guest that starts with its MMU (and caches) off sees what Bulwark
/// wrote with caches on.
pub fn clean_to_poc(addr: usize, len: usize) {
    let line = 4usize << ((read_sysreg!("ctr_el0") >> 16) & 0xf);
    let mut a = addr & !(line - 1);
    let end = addr.saturating_add(len);
    while a < end {
        // SAFETY: `a` lies in memory Bulwark just wrote (identity-mapped); DC CVAC only cleans.
        unsafe { core::arch::asm!("dc cvac, {}", in(reg) a, options(nostack)) }
        a += line;
    }
    crate::sysreg::dsb_ish();
    // SAFETY: invalidates all instruction caches to PoU; no memory is accessed.
    unsafe { core::arch::asm!("ic iallu", options(nostack)) }
    crate::sysreg::dsb_ish();
    crate::sysreg::isb();
}

/// Make the guest take a synchronous external abort for the access that just trapped:
/// ESR_EL1 = data abort (EC 0x25 from EL1, 0x24 from EL0) or instruction abort (0x21/0x20),
/// IL = 1, FSC = 0x10, ISV = 0, WnR kept; FAR_EL1 = the faulting VA; ELR_EL1/SPSR_EL1 = the
/// guest's PC/PSTATE at the fault; PC = VBAR_EL1 + the synchronous slot for where it came from.
/// Returns the new PC (for loop detection).
pub fn inject_sync_external_abort(
    regs: &mut VcpuRegs,
    instruction: bool,
    wnr: bool,
    far: u64,
) -> u64 {
    let i =
        crate::inject::abort_injection(regs.pstate, instruction, wnr, read_sysreg!("sctlr_el1"));
    write_sysreg!("esr_el1", i.esr);
    write_sysreg!("far_el1", far);
    write_sysreg!("elr_el1", regs.pc);
    write_sysreg!("spsr_el1", regs.pstate);
    regs.pstate = i.pstate;
    regs.pc = read_sysreg!("vbar_el1").wrapping_add(i.vector_offset);
    regs.pc
}
