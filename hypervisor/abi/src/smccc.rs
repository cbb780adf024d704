//! arm64 SMCCC function IDs Bulwark answers (HVC64 fast calls; result in x0).
//!
//! * Standard: SMCCC_VERSION, SMCCC_ARCH_FEATURES, PSCI.
//! * Vendor-specific hypervisor service (owner 6): the KVM-compatible discovery calls
//!   ([`VENDOR_HYP_CALL_UID`], [`VENDOR_HYP_FEATURES`]), MMIO guard as the 2021 series numbered it
//!   (function numbers 2..=5), and Bulwark's own calls from function number 0x40 up:
//!   [`BULWARK_ROE`] and [`BULWARK_GUEST_EXIT`]. 0x40 is far above every number KVM assigns
//!   (0..~11 upstream at the time of writing), so a guest that probes KVM's services never reaches
//!   Bulwark's by accident, and KVM's future numbers are unlikely to collide.
//!
//! The call UID is KVM's, because guest kernels only use the vendor-hyp services (MMIO guard)
//! after checking for KVM's UID; [`VENDOR_HYP_FEATURES`] then tells exactly what is supported.

/// SMCCC_VERSION (returns 0x10001 = 1.1).
pub const SMCCC_VERSION: u32 = 0x8000_0000;
pub const SMCCC_VERSION_1_1: u64 = 0x1_0001;
pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;

/// Vendor-hyp call UID (SMC32 fast, function 0xff01).
pub const VENDOR_HYP_CALL_UID: u32 = 0x8600_ff01;
/// Vendor-hyp features bitmap: x0 = bit n set when function number n (0..64) is supported,
/// x1 = bits for 64..128.
pub const VENDOR_HYP_FEATURES: u32 = 0x8600_0000;

/// KVM's UID 28b46fb6-2ec5-11e9-a9ca-4b564d003a74, as returned in x0..x3.
pub const KVM_UID: [u32; 4] = [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d];

pub const MMIO_GUARD_INFO: u32 = 0xC600_0002;
pub const MMIO_GUARD_ENROLL: u32 = 0xC600_0003;
pub const MMIO_GUARD_MAP: u32 = 0xC600_0004;
pub const MMIO_GUARD_UNMAP: u32 = 0xC600_0005;

/// ROE on arm64: x1 = sub-op ([`crate::roe`]), x2 = a1, x3 = a2; x0 = result.
pub const BULWARK_ROE: u32 = 0xC600_0040;
/// End the run: x1 = status (u32). Never returns.
pub const BULWARK_GUEST_EXIT: u32 = 0xC600_0041;

pub const PSCI_VERSION: u32 = 0x8400_0000;
pub const PSCI_CPU_SUSPEND_32: u32 = 0x8400_0001;
pub const PSCI_CPU_SUSPEND_64: u32 = 0xC400_0001;
pub const PSCI_CPU_OFF: u32 = 0x8400_0002;
pub const PSCI_CPU_ON_32: u32 = 0x8400_0003;
pub const PSCI_CPU_ON_64: u32 = 0xC400_0003;
pub const PSCI_AFFINITY_INFO_32: u32 = 0x8400_0004;
pub const PSCI_AFFINITY_INFO_64: u32 = 0xC400_0004;
pub const PSCI_MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
pub const PSCI_SYSTEM_OFF: u32 = 0x8400_0008;
pub const PSCI_SYSTEM_RESET: u32 = 0x8400_0009;
pub const PSCI_FEATURES: u32 = 0x8400_000A;
/// PSCI 1.0 as returned by PSCI_VERSION.
pub const PSCI_VERSION_1_0: u64 = 0x1_0000;

/// Function number (bits 15:0) of a vendor-hyp call.
pub const fn function_number(fid: u32) -> u32 {
    fid & 0xffff
}

/// Every function Bulwark knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Function {
    SmcccVersion,
    SmcccArchFeatures,
    VendorHypCallUid,
    VendorHypFeatures,
    MmioGuardInfo,
    MmioGuardEnroll,
    MmioGuardMap,
    MmioGuardUnmap,
    Roe,
    GuestExit,
    PsciVersion,
    PsciCpuSuspend { smc64: bool },
    PsciCpuOff,
    PsciCpuOn { smc64: bool },
    PsciAffinityInfo { smc64: bool },
    PsciMigrateInfoType,
    PsciSystemOff,
    PsciSystemReset,
    PsciFeatures,
}

/// A function ID Bulwark does not implement (answer: NOT_SUPPORTED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownFunction(pub u32);

impl Function {
    pub const fn decode(fid: u32) -> Result<Function, UnknownFunction> {
        Ok(match fid {
            SMCCC_VERSION => Function::SmcccVersion,
            SMCCC_ARCH_FEATURES => Function::SmcccArchFeatures,
            VENDOR_HYP_CALL_UID => Function::VendorHypCallUid,
            VENDOR_HYP_FEATURES => Function::VendorHypFeatures,
            MMIO_GUARD_INFO => Function::MmioGuardInfo,
            MMIO_GUARD_ENROLL => Function::MmioGuardEnroll,
            MMIO_GUARD_MAP => Function::MmioGuardMap,
            MMIO_GUARD_UNMAP => Function::MmioGuardUnmap,
            BULWARK_ROE => Function::Roe,
            BULWARK_GUEST_EXIT => Function::GuestExit,
            PSCI_VERSION => Function::PsciVersion,
            PSCI_CPU_SUSPEND_32 => Function::PsciCpuSuspend { smc64: false },
            PSCI_CPU_SUSPEND_64 => Function::PsciCpuSuspend { smc64: true },
            PSCI_CPU_OFF => Function::PsciCpuOff,
            PSCI_CPU_ON_32 => Function::PsciCpuOn { smc64: false },
            PSCI_CPU_ON_64 => Function::PsciCpuOn { smc64: true },
            PSCI_AFFINITY_INFO_32 => Function::PsciAffinityInfo { smc64: false },
            PSCI_AFFINITY_INFO_64 => Function::PsciAffinityInfo { smc64: true },
            PSCI_MIGRATE_INFO_TYPE => Function::PsciMigrateInfoType,
            PSCI_SYSTEM_OFF => Function::PsciSystemOff,
            PSCI_SYSTEM_RESET => Function::PsciSystemReset,
            PSCI_FEATURES => Function::PsciFeatures,
            other => return Err(UnknownFunction(other)),
        })
    }

    pub const fn encode(self) -> u32 {
        match self {
            Function::SmcccVersion => SMCCC_VERSION,
            Function::SmcccArchFeatures => SMCCC_ARCH_FEATURES,
            Function::VendorHypCallUid => VENDOR_HYP_CALL_UID,
            Function::VendorHypFeatures => VENDOR_HYP_FEATURES,
            Function::MmioGuardInfo => MMIO_GUARD_INFO,
            Function::MmioGuardEnroll => MMIO_GUARD_ENROLL,
            Function::MmioGuardMap => MMIO_GUARD_MAP,
            Function::MmioGuardUnmap => MMIO_GUARD_UNMAP,
            Function::Roe => BULWARK_ROE,
            Function::GuestExit => BULWARK_GUEST_EXIT,
            Function::PsciVersion => PSCI_VERSION,
            Function::PsciCpuSuspend { smc64: false } => PSCI_CPU_SUSPEND_32,
            Function::PsciCpuSuspend { smc64: true } => PSCI_CPU_SUSPEND_64,
            Function::PsciCpuOff => PSCI_CPU_OFF,
            Function::PsciCpuOn { smc64: false } => PSCI_CPU_ON_32,
            Function::PsciCpuOn { smc64: true } => PSCI_CPU_ON_64,
            Function::PsciAffinityInfo { smc64: false } => PSCI_AFFINITY_INFO_32,
            Function::PsciAffinityInfo { smc64: true } => PSCI_AFFINITY_INFO_64,
            Function::PsciMigrateInfoType => PSCI_MIGRATE_INFO_TYPE,
            Function::PsciSystemOff => PSCI_SYSTEM_OFF,
            Function::PsciSystemReset => PSCI_SYSTEM_RESET,
            Function::PsciFeatures => PSCI_FEATURES,
        }
    }

    /// Every known function (for tests and FEATURES answers).
    pub const ALL: [Function; 22] = [
        Function::SmcccVersion,
        Function::SmcccArchFeatures,
        Function::VendorHypCallUid,
        Function::VendorHypFeatures,
        Function::MmioGuardInfo,
        Function::MmioGuardEnroll,
        Function::MmioGuardMap,
        Function::MmioGuardUnmap,
        Function::Roe,
        Function::GuestExit,
        Function::PsciVersion,
        Function::PsciCpuSuspend { smc64: false },
        Function::PsciCpuSuspend { smc64: true },
        Function::PsciCpuOff,
        Function::PsciCpuOn { smc64: false },
        Function::PsciCpuOn { smc64: true },
        Function::PsciAffinityInfo { smc64: false },
        Function::PsciAffinityInfo { smc64: true },
        Function::PsciMigrateInfoType,
        Function::PsciSystemOff,
        Function::PsciSystemReset,
        Function::PsciFeatures,
    ];
}

/// The vendor-hyp FEATURES answer: (x0, x1) bitmaps of supported function numbers 0..128.
pub const fn vendor_hyp_features(mmio_guard: bool) -> (u64, u64) {
    let mut x0 = 1u64 << function_number(VENDOR_HYP_FEATURES);
    if mmio_guard {
        x0 |= 1 << function_number(MMIO_GUARD_INFO);
        x0 |= 1 << function_number(MMIO_GUARD_ENROLL);
        x0 |= 1 << function_number(MMIO_GUARD_MAP);
        x0 |= 1 << function_number(MMIO_GUARD_UNMAP);
    }
    let x1 = (1u64 << (function_number(BULWARK_ROE) - 64))
        | (1u64 << (function_number(BULWARK_GUEST_EXIT) - 64));
    (x0, x1)
}
