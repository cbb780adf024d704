//! VMX instructions, VMX bring-up (VMXON) and the one EPT/VPID invalidation function.

use core::arch::asm;
use core::fmt;

use alloc::boxed::Box;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};

use crate::cpu::{CpuInfo, VmxCaps};
use crate::vmcs;

/// A 4 KiB page owned by Bulwark (VMXON region, VMCS, bitmaps).
#[repr(C, align(4096))]
pub struct Page(pub [u8; 4096]);

impl Page {
    pub fn zeroed() -> Box<Page> {
        Box::new(Page([0; 4096]))
    }
    pub fn filled(v: u8) -> Box<Page> {
        Box::new(Page([v; 4096]))
    }
    /// Host-physical address (Bulwark is identity mapped).
    pub fn phys(&self) -> u64 {
        self as *const Page as u64
    }
}

/// A VMX instruction failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxError {
    /// VMfailInvalid: no current VMCS (CF = 1).
    FailInvalid,
    /// VMfailValid with the VM-instruction error number (VMCS field 0x4400).
    FailValid(u32),
}

impl fmt::Display for VmxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmxError::FailInvalid => write!(f, "VMfailInvalid"),
            VmxError::FailValid(n) => write!(
                f,
                "VMfailValid, VM-instruction error {n} ({})",
                instruction_error_name(*n)
            ),
        }
    }
}

/// SDM Vol. 3C, 31.4 "VM Instruction Error Numbers".
pub fn instruction_error_name(n: u32) -> &'static str {
    match n {
        1 => "VMCALL executed in VMX root operation",
        2 => "VMCLEAR with invalid physical address",
        3 => "VMCLEAR with VMXON pointer",
        4 => "VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME with non-launched VMCS",
        6 => "VMRESUME after VMXOFF",
        7 => "VM entry with invalid control field(s)",
        8 => "VM entry with invalid host-state field(s)",
        9 => "VMPTRLD with invalid physical address",
        10 => "VMPTRLD with VMXON pointer",
        11 => "VMPTRLD with incorrect VMCS revision identifier",
        12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
        13 => "VMWRITE to read-only VMCS component",
        15 => "VMXON executed in VMX root operation",
        16 => "VM entry with invalid executive-VMCS pointer",
        17 => "VM entry with non-launched executive VMCS",
        18 => "VM entry with executive-VMCS pointer not VMXON pointer",
        19 => "VMCALL with non-clear VMCS",
        20 => "VMCALL with invalid VM-exit control fields",
        22 => "VMCALL with incorrect MSEG revision identifier",
        23 => "VMXOFF under dual-monitor treatment",
        24 => "VMCALL with invalid SMM-monitor features",
        25 => "VM entry with invalid VM-execution control fields in executive VMCS",
        26 => "VM entry with events blocked by MOV SS",
        28 => "invalid operand to INVEPT/INVVPID",
        _ => "unknown",
    }
}

/// Turn RFLAGS after a VMX instruction into a result.
fn check(rflags: u64) -> Result<(), VmxError> {
    if rflags & 1 != 0 {
        Err(VmxError::FailInvalid)
    } else if rflags & (1 << 6) != 0 {
        Err(VmxError::FailValid(
            vmread(vmcs::VM_INSTRUCTION_ERROR).unwrap_or(0) as u32,
        ))
    } else {
        Ok(())
    }
}

/// VMREAD of a field of the current VMCS.
pub fn vmread(field: u32) -> Result<u64, VmxError> {
    let value: u64;
    let flags: u64;
    // SAFETY: VMREAD only reads the current VMCS; failures are reported in RFLAGS (checked).
    // Only called in VMX root operation.
    unsafe {
        asm!(
            "vmread {v}, {f}",
            "pushfq",
            "pop {fl}",
            f = in(reg) u64::from(field),
            v = out(reg) value,
            fl = out(reg) flags,
        );
    }
    if flags & 0x41 != 0 {
        // Do not recurse into `check` (it reads a field itself).
        return Err(if flags & 1 != 0 {
            VmxError::FailInvalid
        } else {
            VmxError::FailValid(0)
        });
    }
    Ok(value)
}

/// VMREAD that yields 0 on failure (for state dumps and fields known to exist).
pub fn vmr(field: u32) -> u64 {
    vmread(field).unwrap_or(0)
}

/// VMWRITE to a field of the current VMCS.
pub fn vmwrite(field: u32, value: u64) -> Result<(), VmxError> {
    let flags: u64;
    // SAFETY: VMWRITE only changes the current VMCS (Bulwark's own memory); failures are
    // reported in RFLAGS.
    unsafe {
        asm!(
            "vmwrite {f}, {v}",
            "pushfq",
            "pop {fl}",
            f = in(reg) u64::from(field),
            v = in(reg) value,
            fl = out(reg) flags,
        );
    }
    check(flags)
}

/// VMCLEAR then VMPTRLD: make `vmcs` (revision already written) the current, clear VMCS.
pub fn load_vmcs(vmcs_page: &Page) -> Result<(), VmxError> {
    let pa = vmcs_page.phys();
    let flags: u64;
    // SAFETY: `pa` is a 4 KiB-aligned page owned by Bulwark holding a VMCS revision id.
    unsafe {
        asm!("vmclear [{p}]", "pushfq", "pop {fl}", p = in(reg) &pa, fl = out(reg) flags);
    }
    check(flags)?;
    let flags: u64;
    // SAFETY: as above.
    unsafe {
        asm!("vmptrld [{p}]", "pushfq", "pop {fl}", p = in(reg) &pa, fl = out(reg) flags);
    }
    check(flags)
}

/// Why Bulwark refuses to use VMX on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoVmx,
    LockedOff,
    NoSecondaryControls,
    NoEpt,
    NoUnrestrictedGuest,
    NoEptWriteBack,
    NoEpt4Level,
    NoInvept,
    VmxonFailed(VmxError),
    Cr0Fixed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoVmx => write!(f, "the CPU has no VMX (CPUID.1:ECX.VMX = 0)"),
            Refusal::LockedOff => write!(
                f,
                "VMX is disabled and locked by the firmware (IA32_FEATURE_CONTROL locked without 'VMX outside SMX'); enable VT-x in the firmware setup"
            ),
            Refusal::NoSecondaryControls => {
                write!(f, "the CPU has no secondary processor-based VM-execution controls")
            }
            Refusal::NoEpt => write!(f, "the CPU has no EPT"),
            Refusal::NoUnrestrictedGuest => write!(f, "the CPU has no unrestricted guest"),
            Refusal::NoEptWriteBack => write!(f, "EPT cannot use write-back memory"),
            Refusal::NoEpt4Level => write!(f, "EPT has no 4-level page walk"),
            Refusal::NoInvept => write!(f, "the CPU has no INVEPT"),
            Refusal::VmxonFailed(e) => write!(f, "VMXON failed: {e}"),
            Refusal::Cr0Fixed => write!(
                f,
                "CR0 does not satisfy the VMX fixed bits (IA32_VMX_CR0_FIXED0/1)"
            ),
        }
    }
}

/// The CPU features Bulwark insists on, checked before touching VMX.
pub fn requirements(cpu: &CpuInfo) -> Result<VmxCaps, Refusal> {
    let caps = cpu.vmx.ok_or(Refusal::NoVmx)?;
    if caps.locked_off() {
        return Err(Refusal::LockedOff);
    }
    if caps.procbased2 == 0 {
        return Err(Refusal::NoSecondaryControls);
    }
    if !caps.ept() {
        return Err(Refusal::NoEpt);
    }
    if !caps.unrestricted_guest() {
        return Err(Refusal::NoUnrestrictedGuest);
    }
    if !caps.ept_wb() {
        return Err(Refusal::NoEptWriteBack);
    }
    if !caps.ept_4level() {
        return Err(Refusal::NoEpt4Level);
    }
    if caps.ept_vpid & (1 << 20) == 0 || !(caps.invept_single() || caps.invept_all()) {
        return Err(Refusal::NoInvept);
    }
    Ok(caps)
}

/// This CPU in VMX root operation. Leaked: VMX stays on until the machine stops.
pub struct VmxRoot {
    pub caps: VmxCaps,
    _vmxon: &'static Page,
}

/// Enter VMX root operation on this CPU: set the feature-control lock if the firmware left it
/// open, satisfy the CR0/CR4 fixed bits, VMXON.
pub fn enable(caps: VmxCaps, xsave: bool) -> Result<VmxRoot, Refusal> {
    use crate::cpu::{msr, FC_LOCKED, FC_VMX_OUTSIDE_SMX};
    use x86_64::registers::model_specific::Msr;
    if caps.feature_control & FC_LOCKED == 0 {
        // Unlocked: enable VMX outside SMX and lock, as firmware normally does.
        // SAFETY: IA32_FEATURE_CONTROL exists (CPUID reports VMX) and is unlocked, so the write
        // cannot fault; it only enables VMX.
        unsafe {
            Msr::new(msr::IA32_FEATURE_CONTROL)
                .write(caps.feature_control | FC_LOCKED | FC_VMX_OUTSIDE_SMX);
        }
    }
    // CR0: must have every FIXED0 bit and no bit outside FIXED1 (NE is the usual one to add).
    let cr0 = Cr0::read_raw();
    let want0 = (cr0 | caps.cr0_fixed0) & caps.cr0_fixed1;
    if want0 != cr0 {
        if want0 & (Cr0Flags::PAGING | Cr0Flags::PROTECTED_MODE_ENABLE).bits()
            != cr0 & (Cr0Flags::PAGING | Cr0Flags::PROTECTED_MODE_ENABLE).bits()
        {
            return Err(Refusal::Cr0Fixed);
        }
        // SAFETY: only NE-style bits change; paging and protection stay as they are.
        unsafe { Cr0::write_raw(want0) };
    }
    // CR4: VMXE plus OSXSAVE (so XSETBV can be executed for the guest) where available.
    let mut cr4 = Cr4::read_raw() | Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS.bits();
    if xsave {
        cr4 |= Cr4Flags::OSXSAVE.bits();
    }
    let cr4 = (cr4 | caps.cr4_fixed0) & caps.cr4_fixed1;
    // SAFETY: setting VMXE/OSXSAVE (supported per CPUID/VMX MSRs) has no effect on memory.
    unsafe { Cr4::write_raw(cr4) };

    let mut region = Page::zeroed();
    region.0[..4].copy_from_slice(&caps.revision().to_le_bytes());
    let region: &'static Page = Box::leak(region);
    let pa = region.phys();
    let flags: u64;
    // SAFETY: the VMXON region is a leaked, 4 KiB-aligned page with the revision id; CR0/CR4
    // satisfy the fixed bits and IA32_FEATURE_CONTROL allows VMX (checked above).
    unsafe {
        asm!("vmxon [{p}]", "pushfq", "pop {fl}", p = in(reg) &pa, fl = out(reg) flags);
    }
    if flags & 1 != 0 {
        return Err(Refusal::VmxonFailed(VmxError::FailInvalid));
    }
    if flags & (1 << 6) != 0 {
        return Err(Refusal::VmxonFailed(VmxError::FailValid(0)));
    }
    Ok(VmxRoot {
        caps,
        _vmxon: region,
    })
}

/// Descriptor for INVEPT: EPTP and a reserved quadword.
#[repr(C, align(16))]
struct InveptDesc {
    eptp: u64,
    reserved: u64,
}

/// Descriptor for INVVPID: VPID and a linear address.
#[repr(C, align(16))]
struct InvvpidDesc {
    vpid: u64,
    addr: u64,
}

/// THE invalidation function: after any EPT edit that removes or changes a permission or
/// mapping, drop every cached translation derived from `eptp` (guest-physical and combined
/// mappings, all VPIDs) on this CPU. Single-context INVEPT where supported, else all-context.
/// Every code path that weakens a mapping goes through here (via `EptFlush`).
pub fn invalidate_ept(caps: &VmxCaps, eptp: u64) {
    let (kind, desc) = if caps.invept_single() {
        (1u64, InveptDesc { eptp, reserved: 0 })
    } else {
        (
            2u64,
            InveptDesc {
                eptp: 0,
                reserved: 0,
            },
        )
    };
    let flags: u64;
    // SAFETY: INVEPT only drops cached translations; type and descriptor are valid per the
    // capability MSR checked above.
    unsafe {
        asm!("invept {k}, [{d}]", "pushfq", "pop {fl}", k = in(reg) kind, d = in(reg) &desc, fl = out(reg) flags);
    }
    if flags & 0x41 != 0 {
        log::error!("INVEPT type {kind} failed (rflags {flags:#x})");
    }
}

/// Drop linear and combined translations tagged with `vpid` (used when a vCPU's VPID is
/// (re)assigned). All-context when single-context is not supported.
pub fn invalidate_vpid(caps: &VmxCaps, vpid: u16) {
    if !(caps.invvpid_single() || caps.invvpid_all()) {
        return;
    }
    let kind = if caps.invvpid_single() { 1u64 } else { 2u64 };
    let desc = InvvpidDesc {
        vpid: u64::from(vpid),
        addr: 0,
    };
    let flags: u64;
    // SAFETY: INVVPID only drops cached translations.
    unsafe {
        asm!("invvpid {k}, [{d}]", "pushfq", "pop {fl}", k = in(reg) kind, d = in(reg) &desc, fl = out(reg) flags);
    }
    if flags & 0x41 != 0 {
        log::error!("INVVPID type {kind} failed (rflags {flags:#x})");
    }
}
