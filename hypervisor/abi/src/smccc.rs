//! arm64 SMCCC function IDs Bulwark answers (HVC64 fast calls; result in x0), and the one table
//! of which of them a guest is served: [`Function::decode`] (which function an ID is, under the
//! guest's [`HypAbi`]) and [`vendor_hyp_features`] (the FEATURES bitmap derived from the same
//! table). Every dispatcher, discovery answer and the C header (`bulwark.h`) use these; nothing
//! else lists functions. docs/smccc.md explains the choices.
//!
//! * Standard: SMCCC_VERSION (1.1), SMCCC_ARCH_FEATURES, the Spectre workaround IDs (answered
//!   per the firmware), PSCI 1.0.
//! * Vendor-specific hypervisor service (owner 6), under KVM's UID: the discovery calls
//!   ([`VENDOR_HYP_CALL_UID`], [`VENDOR_HYP_FEATURES`]); **one** of two numberings of function
//!   numbers 2..=7, chosen per guest by Bulwark's `hyp-abi=` ([`HypAbi`]): the seed's 2021
//!   MMIO-guard series (INFO, ENROLL, MAP, UNMAP = 2..=5) or upstream Linux's pKVM guest ABI
//!   (HYP_MEMINFO, MEM_SHARE, MEM_UNSHARE = 2..=4, MMIO_GUARD = 7). The two collide on 2..=4, so
//!   a guest is only ever served one of them; and Bulwark's own calls from function number 0x40
//!   up ([`BULWARK_ROE`], [`BULWARK_GUEST_EXIT`]), far above every number KVM assigns (0..=11
//!   and 127 upstream at the time of writing).
//!
//! The call UID is KVM's, because guest kernels only use the vendor-hyp services after checking
//! for KVM's UID; [`VENDOR_HYP_FEATURES`] then tells exactly what is supported.

/// SMCCC_VERSION (returns 0x10001 = 1.1).
pub const SMCCC_VERSION: u32 = 0x8000_0000;
pub const SMCCC_VERSION_1_1: u64 = 0x1_0001;
pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
/// Spectre v2 (branch predictor invalidation) firmware workaround.
pub const SMCCC_ARCH_WORKAROUND_1: u32 = 0x8000_8000;
/// Spectre v4 (speculative store bypass) firmware mitigation switch; x1 = 1 enable, 0 disable.
pub const SMCCC_ARCH_WORKAROUND_2: u32 = 0x8000_7FFF;
/// Spectre-BHB firmware workaround.
pub const SMCCC_ARCH_WORKAROUND_3: u32 = 0x8000_3FFF;
/// SMCCC_ARCH_FEATURES answer for a workaround: this CPU is not affected.
pub const SMCCC_ARCH_WORKAROUND_RET_UNAFFECTED: i64 = 1;

/// Vendor-hyp call UID (SMC32 fast, function 0xff01).
pub const VENDOR_HYP_CALL_UID: u32 = 0x8600_ff01;
/// Vendor-hyp features bitmap (SMC32 fast, function 0), KVM's layout: 32 function bits per
/// register, x0 = functions 0..=31, x1 = 32..=63, x2 = 64..=95, x3 = 96..=127 (Linux's
/// `kvm_init_hyp_services()` reads bits 0..=31 of each register and nothing else).
pub const VENDOR_HYP_FEATURES: u32 = 0x8600_0000;

/// KVM's UID 28b46fb6-2ec5-11e9-a9ca-4b564d003a74, as returned in x0..x3.
pub const KVM_UID: [u32; 4] = [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d];

/// Seed ABI (`hyp-abi=seed`): MMIO guard as the 2021 series numbered it.
pub const MMIO_GUARD_INFO: u32 = 0xC600_0002;
pub const MMIO_GUARD_ENROLL: u32 = 0xC600_0003;
pub const MMIO_GUARD_MAP: u32 = 0xC600_0004;
pub const MMIO_GUARD_UNMAP: u32 = 0xC600_0005;

/// Upstream ABI (`hyp-abi=upstream`, Linux 6.12+ `arm-pkvm-guest.c`): returns the granule.
pub const PKVM_HYP_MEMINFO: u32 = 0xC600_0002;
/// x1 = granule-aligned IPA of guest RAM to share with the host (Bulwark: validated, no effect).
pub const PKVM_MEM_SHARE: u32 = 0xC600_0003;
/// x1 = granule-aligned IPA of guest RAM to stop sharing (Bulwark: validated, no effect).
pub const PKVM_MEM_UNSHARE: u32 = 0xC600_0004;
/// x1 = granule-aligned IPA of one device granule the guest will access (MMIO guard).
pub const PKVM_MMIO_GUARD: u32 = 0xC600_0007;

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

/// Which numbering of the KVM vendor-hyp functions 2..=7 a guest is served (Bulwark's
/// `hyp-abi=` command-line key; docs/smccc.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum HypAbi {
    /// The seed's 2021 MMIO-guard series: INFO, ENROLL, MAP, UNMAP = 2..=5. The default.
    #[default]
    Seed,
    /// Upstream Linux's pKVM guest ABI: HYP_MEMINFO, MEM_SHARE, MEM_UNSHARE = 2..=4,
    /// MMIO_GUARD = 7.
    Upstream,
}

/// A `hyp-abi=` value that is neither `seed` nor `upstream`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownHypAbi;

impl HypAbi {
    pub const ALL: [HypAbi; 2] = [HypAbi::Seed, HypAbi::Upstream];

    pub const fn as_str(self) -> &'static str {
        match self {
            HypAbi::Seed => "seed",
            HypAbi::Upstream => "upstream",
        }
    }

    pub fn parse(s: &str) -> Result<HypAbi, UnknownHypAbi> {
        match s {
            "seed" => Ok(HypAbi::Seed),
            "upstream" => Ok(HypAbi::Upstream),
            _ => Err(UnknownHypAbi),
        }
    }
}

/// The three Spectre workaround IDs of SMCCC 1.1+.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Workaround {
    W1,
    W2,
    W3,
}

impl Workaround {
    pub const ALL: [Workaround; 3] = [Workaround::W1, Workaround::W2, Workaround::W3];

    pub const fn fid(self) -> u32 {
        match self {
            Workaround::W1 => SMCCC_ARCH_WORKAROUND_1,
            Workaround::W2 => SMCCC_ARCH_WORKAROUND_2,
            Workaround::W3 => SMCCC_ARCH_WORKAROUND_3,
        }
    }

    pub const fn index(self) -> usize {
        match self {
            Workaround::W1 => 0,
            Workaround::W2 => 1,
            Workaround::W3 => 2,
        }
    }
}

/// Every function Bulwark serves (some only under one [`HypAbi`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Function {
    SmcccVersion,
    SmcccArchFeatures,
    /// Served only when the firmware serves it (the answer to SMCCC_ARCH_FEATURES says).
    ArchWorkaround(Workaround),
    VendorHypCallUid,
    VendorHypFeatures,
    /// Seed ABI only.
    MmioGuardInfo,
    MmioGuardEnroll,
    MmioGuardMap,
    MmioGuardUnmap,
    /// Upstream ABI only.
    PkvmHypMeminfo,
    PkvmMemShare,
    PkvmMemUnshare,
    PkvmMmioGuard,
    Roe,
    GuestExit,
    PsciVersion,
    PsciCpuOff,
    PsciCpuOn {
        smc64: bool,
    },
    PsciAffinityInfo {
        smc64: bool,
    },
    PsciMigrateInfoType,
    PsciSystemOff,
    PsciSystemReset,
    PsciFeatures,
}

/// A function ID Bulwark does not serve to this guest (answer: NOT_SUPPORTED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownFunction(pub u32);

impl Function {
    /// The function `fid` names for a guest served `abi`. An ID of the other ABI is unknown,
    /// never a function of this one.
    pub const fn decode(fid: u32, abi: HypAbi) -> Result<Function, UnknownFunction> {
        Ok(match (fid, abi) {
            (SMCCC_VERSION, _) => Function::SmcccVersion,
            (SMCCC_ARCH_FEATURES, _) => Function::SmcccArchFeatures,
            (SMCCC_ARCH_WORKAROUND_1, _) => Function::ArchWorkaround(Workaround::W1),
            (SMCCC_ARCH_WORKAROUND_2, _) => Function::ArchWorkaround(Workaround::W2),
            (SMCCC_ARCH_WORKAROUND_3, _) => Function::ArchWorkaround(Workaround::W3),
            (VENDOR_HYP_CALL_UID, _) => Function::VendorHypCallUid,
            (VENDOR_HYP_FEATURES, _) => Function::VendorHypFeatures,
            (MMIO_GUARD_INFO, HypAbi::Seed) => Function::MmioGuardInfo,
            (MMIO_GUARD_ENROLL, HypAbi::Seed) => Function::MmioGuardEnroll,
            (MMIO_GUARD_MAP, HypAbi::Seed) => Function::MmioGuardMap,
            (MMIO_GUARD_UNMAP, HypAbi::Seed) => Function::MmioGuardUnmap,
            (PKVM_HYP_MEMINFO, HypAbi::Upstream) => Function::PkvmHypMeminfo,
            (PKVM_MEM_SHARE, HypAbi::Upstream) => Function::PkvmMemShare,
            (PKVM_MEM_UNSHARE, HypAbi::Upstream) => Function::PkvmMemUnshare,
            (PKVM_MMIO_GUARD, HypAbi::Upstream) => Function::PkvmMmioGuard,
            (BULWARK_ROE, _) => Function::Roe,
            (BULWARK_GUEST_EXIT, _) => Function::GuestExit,
            (PSCI_VERSION, _) => Function::PsciVersion,
            (PSCI_CPU_OFF, _) => Function::PsciCpuOff,
            (PSCI_CPU_ON_32, _) => Function::PsciCpuOn { smc64: false },
            (PSCI_CPU_ON_64, _) => Function::PsciCpuOn { smc64: true },
            (PSCI_AFFINITY_INFO_32, _) => Function::PsciAffinityInfo { smc64: false },
            (PSCI_AFFINITY_INFO_64, _) => Function::PsciAffinityInfo { smc64: true },
            (PSCI_MIGRATE_INFO_TYPE, _) => Function::PsciMigrateInfoType,
            (PSCI_SYSTEM_OFF, _) => Function::PsciSystemOff,
            (PSCI_SYSTEM_RESET, _) => Function::PsciSystemReset,
            (PSCI_FEATURES, _) => Function::PsciFeatures,
            (other, _) => return Err(UnknownFunction(other)),
        })
    }

    pub const fn encode(self) -> u32 {
        match self {
            Function::SmcccVersion => SMCCC_VERSION,
            Function::SmcccArchFeatures => SMCCC_ARCH_FEATURES,
            Function::ArchWorkaround(w) => w.fid(),
            Function::VendorHypCallUid => VENDOR_HYP_CALL_UID,
            Function::VendorHypFeatures => VENDOR_HYP_FEATURES,
            Function::MmioGuardInfo => MMIO_GUARD_INFO,
            Function::MmioGuardEnroll => MMIO_GUARD_ENROLL,
            Function::MmioGuardMap => MMIO_GUARD_MAP,
            Function::MmioGuardUnmap => MMIO_GUARD_UNMAP,
            Function::PkvmHypMeminfo => PKVM_HYP_MEMINFO,
            Function::PkvmMemShare => PKVM_MEM_SHARE,
            Function::PkvmMemUnshare => PKVM_MEM_UNSHARE,
            Function::PkvmMmioGuard => PKVM_MMIO_GUARD,
            Function::Roe => BULWARK_ROE,
            Function::GuestExit => BULWARK_GUEST_EXIT,
            Function::PsciVersion => PSCI_VERSION,
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

    /// A PSCI function (owner 4): the ones PSCI_FEATURES answers for.
    pub const fn is_psci(self) -> bool {
        self.encode() & 0x3f00_0000 == 0x0400_0000
    }

    /// A KVM vendor-hyp function whose bit [`vendor_hyp_features`] sets.
    pub const fn is_vendor_hyp(self) -> bool {
        self.encode() & 0x3f00_0000 == 0x0600_0000
    }

    /// Every function, under either ABI (for tests, the header and FEATURES answers).
    pub const ALL: [Function; 27] = [
        Function::SmcccVersion,
        Function::SmcccArchFeatures,
        Function::ArchWorkaround(Workaround::W1),
        Function::ArchWorkaround(Workaround::W2),
        Function::ArchWorkaround(Workaround::W3),
        Function::VendorHypCallUid,
        Function::VendorHypFeatures,
        Function::MmioGuardInfo,
        Function::MmioGuardEnroll,
        Function::MmioGuardMap,
        Function::MmioGuardUnmap,
        Function::PkvmHypMeminfo,
        Function::PkvmMemShare,
        Function::PkvmMemUnshare,
        Function::PkvmMmioGuard,
        Function::Roe,
        Function::GuestExit,
        Function::PsciVersion,
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

/// The vendor-hyp FEATURES answer for a guest served `abi`, in KVM's layout: `[x0, x1, x2, x3]`,
/// bit `n % 32` of register `n / 32` set for every vendor-hyp function number `n` that
/// [`Function::decode`] serves under `abi` as that very function (the call UID, 0xff01, is not a
/// numbered function). Bits 32..=63 of each register are zero.
pub fn vendor_hyp_features(abi: HypAbi) -> [u32; 4] {
    let mut regs = [0u32; 4];
    for f in Function::ALL {
        let fid = f.encode();
        let n = function_number(fid);
        if f.is_vendor_hyp() && Function::decode(fid, abi) == Ok(f) {
            if let Some(r) = regs.get_mut((n / 32) as usize) {
                *r |= 1 << (n % 32);
            }
        }
    }
    regs
}

/// Whether a guest reading `features` (a [`VENDOR_HYP_FEATURES`] answer) may use vendor-hyp
/// function number `n`: Linux's `kvm_arm_hyp_service_available(n)`.
pub fn hyp_service_available(features: [u32; 4], n: u32) -> bool {
    features
        .get((n / 32) as usize)
        .is_some_and(|r| r & (1 << (n % 32)) != 0)
}
