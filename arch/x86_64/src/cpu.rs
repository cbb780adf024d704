//! What the CPU offers: identification through CPUID (`raw-cpuid`) and the VMX capability MSRs.

use alloc::string::{String, ToString};
use raw_cpuid::CpuId;
use x86_64::registers::model_specific::Msr;

pub mod msr {
    pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
    pub const IA32_VMX_BASIC: u32 = 0x480;
    pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
    pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
    pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
    pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
    pub const IA32_VMX_MISC: u32 = 0x485;
    pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
    pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
    pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
    pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
    pub const IA32_VMX_VMCS_ENUM: u32 = 0x48a;
    pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
    pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
    pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
    pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
    pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
    pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
    pub const IA32_VMX_VMFUNC: u32 = 0x491;
    pub const IA32_VMX_PROCBASED_CTLS3: u32 = 0x492;
    pub const IA32_EFER: u32 = 0xc000_0080;
    pub const IA32_PAT: u32 = 0x277;
    pub const IA32_FS_BASE: u32 = 0xc000_0100;
    pub const IA32_GS_BASE: u32 = 0xc000_0101;
    pub const IA32_MTRRCAP: u32 = 0xfe;
    pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
}

/// Read an MSR.
///
/// # Safety
/// The MSR must exist on this CPU (reading an absent MSR raises #GP).
pub unsafe fn rdmsr(index: u32) -> u64 {
    // SAFETY: forwarded to the caller.
    unsafe { Msr::new(index).read() }
}

/// IA32_FEATURE_CONTROL bits.
pub const FC_LOCKED: u64 = 1 << 0;
pub const FC_VMX_OUTSIDE_SMX: u64 = 1 << 2;

/// Secondary processor-based controls (allowed-1 bits of IA32_VMX_PROCBASED_CTLS2).
pub const SEC_EPT: u32 = 1 << 1;
pub const SEC_VPID: u32 = 1 << 5;
pub const SEC_UNRESTRICTED: u32 = 1 << 7;
pub const SEC_SPP: u32 = 1 << 23;

/// The VMX capability MSRs as read on this CPU.
#[derive(Clone, Copy, Debug, Default)]
pub struct VmxCaps {
    pub feature_control: u64,
    pub basic: u64,
    pub pinbased: u64,
    pub procbased: u64,
    pub exit: u64,
    pub entry: u64,
    pub misc: u64,
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
    /// 0 when the CPU has no secondary controls.
    pub procbased2: u64,
    /// 0 when the CPU offers neither EPT nor VPID.
    pub ept_vpid: u64,
}

impl VmxCaps {
    /// Read every capability MSR. Only call when CPUID reports VMX.
    fn read() -> Self {
        // SAFETY: CPUID.1:ECX.VMX = 1 (checked by the caller) guarantees IA32_FEATURE_CONTROL and
        // IA32_VMX_BASIC..IA32_VMX_VMCS_ENUM; the TRUE_* MSRs exist when VMX_BASIC bit 55 is set,
        // PROCBASED_CTLS2 when primary allowed-1 bit 31 is set, EPT_VPID_CAP when secondary
        // allowed-1 has EPT or VPID (SDM Vol. 3 Appendix A).
        unsafe {
            let basic = rdmsr(msr::IA32_VMX_BASIC);
            let true_ctls = basic & (1 << 55) != 0;
            let pick = |normal: u32, tru: u32| if true_ctls { rdmsr(tru) } else { rdmsr(normal) };
            let procbased = pick(
                msr::IA32_VMX_PROCBASED_CTLS,
                msr::IA32_VMX_TRUE_PROCBASED_CTLS,
            );
            let procbased2 = if (procbased >> 32) & (1 << 31) != 0 {
                rdmsr(msr::IA32_VMX_PROCBASED_CTLS2)
            } else {
                0
            };
            let sec1 = (procbased2 >> 32) as u32;
            let ept_vpid = if sec1 & (SEC_EPT | SEC_VPID) != 0 {
                rdmsr(msr::IA32_VMX_EPT_VPID_CAP)
            } else {
                0
            };
            VmxCaps {
                feature_control: rdmsr(msr::IA32_FEATURE_CONTROL),
                basic,
                pinbased: pick(
                    msr::IA32_VMX_PINBASED_CTLS,
                    msr::IA32_VMX_TRUE_PINBASED_CTLS,
                ),
                procbased,
                exit: pick(msr::IA32_VMX_EXIT_CTLS, msr::IA32_VMX_TRUE_EXIT_CTLS),
                entry: pick(msr::IA32_VMX_ENTRY_CTLS, msr::IA32_VMX_TRUE_ENTRY_CTLS),
                misc: rdmsr(msr::IA32_VMX_MISC),
                cr0_fixed0: rdmsr(msr::IA32_VMX_CR0_FIXED0),
                cr0_fixed1: rdmsr(msr::IA32_VMX_CR0_FIXED1),
                cr4_fixed0: rdmsr(msr::IA32_VMX_CR4_FIXED0),
                cr4_fixed1: rdmsr(msr::IA32_VMX_CR4_FIXED1),
                procbased2,
                ept_vpid,
            }
        }
    }

    pub fn revision(&self) -> u32 {
        (self.basic & 0x7fff_ffff) as u32
    }
    pub fn secondary_allowed1(&self) -> u32 {
        (self.procbased2 >> 32) as u32
    }
    pub fn ept(&self) -> bool {
        self.secondary_allowed1() & SEC_EPT != 0
    }
    pub fn unrestricted_guest(&self) -> bool {
        self.secondary_allowed1() & SEC_UNRESTRICTED != 0
    }
    pub fn vpid(&self) -> bool {
        self.secondary_allowed1() & SEC_VPID != 0
    }
    pub fn spp(&self) -> bool {
        self.secondary_allowed1() & SEC_SPP != 0
    }
    /// IA32_FEATURE_CONTROL locked with VMX outside SMX enabled.
    pub fn enabled_by_firmware(&self) -> bool {
        self.feature_control & FC_LOCKED != 0 && self.feature_control & FC_VMX_OUTSIDE_SMX != 0
    }
    /// Locked with VMX off: VMXON would fault, and nothing short of a reset changes it.
    pub fn locked_off(&self) -> bool {
        self.feature_control & FC_LOCKED != 0 && self.feature_control & FC_VMX_OUTSIDE_SMX == 0
    }
    pub fn ept_2m(&self) -> bool {
        self.ept_vpid & (1 << 16) != 0
    }
    pub fn ept_1g(&self) -> bool {
        self.ept_vpid & (1 << 17) != 0
    }
    pub fn ept_wb(&self) -> bool {
        self.ept_vpid & (1 << 14) != 0
    }
    pub fn ept_4level(&self) -> bool {
        self.ept_vpid & (1 << 6) != 0
    }
    pub fn invept_single(&self) -> bool {
        self.ept_vpid & (1 << 25) != 0
    }
    pub fn invept_all(&self) -> bool {
        self.ept_vpid & (1 << 26) != 0
    }
    pub fn invvpid_single(&self) -> bool {
        self.ept_vpid & (1 << 41) != 0
    }
    pub fn invvpid_all(&self) -> bool {
        self.ept_vpid & (1 << 42) != 0
    }
    pub fn ept_exec_only(&self) -> bool {
        self.ept_vpid & 1 != 0
    }
    /// Accessed and dirty flags for EPT (EPTP bit 6 may be set): then every guest
    /// paging-structure access is checked as a write (issue 12, breach 4; docs/x86_64.md).
    pub fn ept_ad(&self) -> bool {
        self.ept_vpid & (1 << 21) != 0
    }
}

/// What Bulwark learned about the boot CPU.
#[derive(Clone, Debug, Default)]
pub struct CpuInfo {
    pub vendor: String,
    pub brand: String,
    pub family: u8,
    pub model: u8,
    pub stepping: u8,
    pub max_phys_bits: u8,
    /// CPUID.1:ECX.VMX.
    pub vmx_cpuid: bool,
    pub vmx: Option<VmxCaps>,
    pub xsave: bool,
    pub nx: bool,
    pub page1g: bool,
}

/// Identify the CPU and, when CPUID reports VMX, read the VMX capability MSRs.
pub fn probe() -> CpuInfo {
    let cpuid = CpuId::new();
    let mut info = CpuInfo {
        vendor: cpuid
            .get_vendor_info()
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(|| "unknown".to_string()),
        brand: cpuid
            .get_processor_brand_string()
            .map(|b| b.as_str().trim().to_string())
            .unwrap_or_default(),
        max_phys_bits: 36,
        ..CpuInfo::default()
    };
    if let Some(f) = cpuid.get_feature_info() {
        info.family = f.family_id();
        info.model = f.model_id();
        info.stepping = f.stepping_id();
        info.vmx_cpuid = f.has_vmx();
        info.xsave = f.has_xsave();
    }
    if let Some(e) = cpuid.get_extended_processor_and_feature_identifiers() {
        info.nx = e.has_execute_disable();
        info.page1g = e.has_1gib_pages();
    }
    if let Some(p) = cpuid.get_processor_capacity_feature_info() {
        info.max_phys_bits = p.physical_address_bits();
    }
    if info.vmx_cpuid {
        info.vmx = Some(VmxCaps::read());
    }
    info
}
