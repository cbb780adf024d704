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

/// The VMX instruction that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxOp {
    Vmxon,
    Vmclear,
    Vmptrld,
    Vmread,
    Vmwrite,
    Vmlaunch,
    Vmresume,
    Invept,
    Invvpid,
}

impl VmxOp {
    /// The mnemonic, as the `op=` word of the failure line.
    pub fn name(self) -> &'static str {
        match self {
            VmxOp::Vmxon => "vmxon",
            VmxOp::Vmclear => "vmclear",
            VmxOp::Vmptrld => "vmptrld",
            VmxOp::Vmread => "vmread",
            VmxOp::Vmwrite => "vmwrite",
            VmxOp::Vmlaunch => "vmlaunch",
            VmxOp::Vmresume => "vmresume",
            VmxOp::Invept => "invept",
            VmxOp::Invvpid => "invvpid",
        }
    }
}

/// How a VMX instruction failed (SDM Vol. 3C, 31.2 "Conventions").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxFail {
    /// VMfailInvalid (RFLAGS.CF = 1): no current VMCS, so no error number.
    Invalid,
    /// VMfailValid (RFLAGS.ZF = 1) with the VM-instruction error number (VMCS field 0x4400);
    /// `None` when that field could not be read either.
    Valid(Option<u32>),
}

impl VmxFail {
    /// Decode RFLAGS after a VMX instruction: `None` is VMsucceed. `error` reads the
    /// VM-instruction error field; it is called only for VMfailValid (a current VMCS exists).
    pub fn from_rflags(rflags: u64, error: impl FnOnce() -> Option<u32>) -> Option<VmxFail> {
        if rflags & RFLAGS_CF != 0 {
            Some(VmxFail::Invalid)
        } else if rflags & RFLAGS_ZF != 0 {
            Some(VmxFail::Valid(error()))
        } else {
            None
        }
    }
}

impl fmt::Display for VmxFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmxFail::Invalid => write!(f, "VMfailInvalid"),
            VmxFail::Valid(Some(n)) => {
                write!(f, "VMfailValid error={n} ({})", instruction_error_name(*n))
            }
            VmxFail::Valid(None) => {
                write!(
                    f,
                    "VMfailValid error=? (the VM-instruction error field is unreadable)"
                )
            }
        }
    }
}

/// A VMX instruction failed: which one, on which VMCS field (VMREAD/VMWRITE), and how.
/// Every VMX instruction Bulwark executes reports this; nothing continues on it (the run
/// stops with `reason=vmx-error`, docs/console.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxError {
    pub op: VmxOp,
    pub field: Option<u32>,
    pub fail: VmxFail,
}

impl VmxError {
    /// The VM-instruction error number, for VMfailValid with a readable error field.
    pub fn number(&self) -> Option<u32> {
        match self.fail {
            VmxFail::Valid(n) => n,
            VmxFail::Invalid => None,
        }
    }
}

impl fmt::Display for VmxError {
    /// `op=vmwrite field=0x681e err=VMfailValid error=13 (VMWRITE to read-only VMCS component)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op={}", self.op.name())?;
        if let Some(field) = self.field {
            write!(f, " field={field:#x}")?;
        }
        write!(f, " err={}", self.fail)
    }
}

/// RFLAGS.CF: VMfailInvalid.
const RFLAGS_CF: u64 = 1;
/// RFLAGS.ZF: VMfailValid.
const RFLAGS_ZF: u64 = 1 << 6;

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

/// RFLAGS after a VMX instruction as a result; VMfailValid reads the error number.
fn check(op: VmxOp, field: Option<u32>, rflags: u64) -> Result<(), VmxError> {
    match VmxFail::from_rflags(rflags, instruction_error) {
        None => Ok(()),
        Some(fail) => Err(VmxError { op, field, fail }),
    }
}

/// One raw VMREAD: (value, RFLAGS).
fn raw_vmread(field: u32) -> (u64, u64) {
    let value: u64;
    let flags: u64;
    // SAFETY: VMREAD only reads the current VMCS; failures are reported in RFLAGS (returned to
    // the caller, which checks them). Only called in VMX root operation.
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
    (value, flags)
}

/// The VM-instruction error number of the current VMCS, `None` when it cannot be read.
fn instruction_error() -> Option<u32> {
    let (v, flags) = raw_vmread(vmcs::VM_INSTRUCTION_ERROR);
    (flags & (RFLAGS_CF | RFLAGS_ZF) == 0).then_some(v as u32)
}

/// VMREAD of a field of the current VMCS. There is no "0 on failure" variant: a failed read
/// must stop the run, never look like a value (a failed IDT-vectoring read would read as "no
/// event in delivery").
pub fn vmread(field: u32) -> Result<u64, VmxError> {
    let (value, flags) = raw_vmread(field);
    check(VmxOp::Vmread, Some(field), flags)?;
    Ok(value)
}

/// A field for a diagnostic dump only (`dump_state`, the lines just before a run stops):
/// formats as the value, or `<vmread failed: ...>`. Never a value to decide on.
pub fn show(field: u32) -> Shown {
    Shown(vmread(field))
}

/// See [`show`].
pub struct Shown(Result<u64, VmxError>);

impl fmt::LowerHex for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Ok(v) => fmt::LowerHex::fmt(v, f),
            Err(e) => write!(f, "<vmread failed: {}>", e.fail),
        }
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Ok(v) => fmt::Display::fmt(v, f),
            Err(e) => write!(f, "<vmread failed: {}>", e.fail),
        }
    }
}

/// VMWRITE to a field of the current VMCS.
#[must_use = "a failed VMWRITE leaves the VMCS in an unknown state: propagate it (the run stops)"]
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
    check(VmxOp::Vmwrite, Some(field), flags)
}

/// A VMCS field encoding no CPU supports (16-bit guest-state field, index 511): VMREAD and
/// VMWRITE of it fail with VMfailValid, error 12.
pub const UNSUPPORTED_FIELD: u32 = 0x0bfe;
/// IA32_VMX_MISC bit 29: VMWRITE may write the read-only VM-exit information fields.
const MISC_VMWRITE_READ_ONLY: u64 = 1 << 29;

/// What the startup self-check learned from one deliberately failing VMX instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeVerdict {
    /// Detected as VMfailValid with the expected error number.
    Detected,
    /// Detected as a failure, but not the expected one (logged; the checking itself works).
    DetectedOther(VmxError),
    /// The instruction reported success: Bulwark could not see VMX failures on this CPU.
    Missed,
}

/// Judge one self-check probe: `got` is what the wrapper returned for an instruction that must
/// fail with VMfailValid error `expected`.
pub fn probe_verdict<T>(expected: u32, got: Result<T, VmxError>) -> ProbeVerdict {
    match got {
        Ok(_) => ProbeVerdict::Missed,
        Err(e) if e.fail == VmxFail::Valid(Some(expected)) => ProbeVerdict::Detected,
        Err(e) => ProbeVerdict::DetectedOther(e),
    }
}

/// The startup self-check, run on the current (fresh) VMCS: proves on every boot that a failing
/// VMREAD/VMWRITE is seen as a failure with its error number, by executing ones that must fail
/// (an unsupported field encoding, error 12; a write to the read-only VM-exit reason field,
/// error 13, unless IA32_VMX_MISC bit 29 allows such writes). `Err` names the probe whose
/// failure went unseen: Bulwark then refuses to run a guest.
pub fn self_check(caps: &VmxCaps) -> Result<(), &'static str> {
    let mut probes = [
        (
            "VMWRITE of an unsupported field",
            12,
            probe_verdict(12, vmwrite(UNSUPPORTED_FIELD, 0)),
        ),
        (
            "VMREAD of an unsupported field",
            12,
            probe_verdict(12, vmread(UNSUPPORTED_FIELD)),
        ),
        (
            "VMWRITE of the read-only exit reason",
            13,
            ProbeVerdict::Detected,
        ),
    ];
    let ro_writable = caps.misc & MISC_VMWRITE_READ_ONLY != 0;
    if !ro_writable {
        probes[2].2 = probe_verdict(13, vmwrite(vmcs::EXIT_REASON, 0));
    }
    for (what, expected, verdict) in probes {
        match verdict {
            ProbeVerdict::Detected => {}
            ProbeVerdict::DetectedOther(e) => log::warn!(
                "VMX self-check: {what} failed as expected but not with error {expected}: vmx error {e}"
            ),
            ProbeVerdict::Missed => return Err(what),
        }
    }
    log::debug!(
        "VMX self-check: failing VMREAD/VMWRITE detected (unsupported field: error 12{})",
        if ro_writable {
            "; read-only field not probed: IA32_VMX_MISC bit 29 allows writing it"
        } else {
            "; read-only field: error 13"
        }
    );
    Ok(())
}

/// VMCLEAR then VMPTRLD: make `vmcs` (revision already written) the current, clear VMCS.
pub fn load_vmcs(vmcs_page: &Page) -> Result<(), VmxError> {
    let pa = vmcs_page.phys();
    let flags: u64;
    // SAFETY: `pa` is a 4 KiB-aligned page owned by Bulwark holding a VMCS revision id.
    unsafe {
        asm!("vmclear [{p}]", "pushfq", "pop {fl}", p = in(reg) &pa, fl = out(reg) flags);
    }
    check(VmxOp::Vmclear, None, flags)?;
    let flags: u64;
    // SAFETY: as above.
    unsafe {
        asm!("vmptrld [{p}]", "pushfq", "pop {fl}", p = in(reg) &pa, fl = out(reg) flags);
    }
    check(VmxOp::Vmptrld, None, flags)
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
            Refusal::VmxonFailed(e) => write!(f, "VMXON failed: vmx error {e}"),
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
    // VMfailValid (VMXON in VMX operation already) reads the error number of the current VMCS.
    check(VmxOp::Vmxon, None, flags).map_err(Refusal::VmxonFailed)?;
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
/// Every code path that weakens a mapping goes through here (via `EptFlush`, which records a
/// failure for its caller: stale translations could keep a revoked permission, so the run stops).
pub fn invalidate_ept(caps: &VmxCaps, eptp: u64) -> Result<(), VmxError> {
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
    check(VmxOp::Invept, None, flags)
}

/// Drop linear and combined translations tagged with `vpid` (used when a vCPU's VPID is
/// (re)assigned, and after the guest's CR0/CR3/CR4 writes Bulwark emulates). All-context when
/// single-context is not supported. VPID is only enabled where one of them is (`Vcpu::new`).
pub fn invalidate_vpid(caps: &VmxCaps, vpid: u16) -> Result<(), VmxError> {
    if !(caps.invvpid_single() || caps.invvpid_all()) {
        return Ok(());
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
    check(VmxOp::Invvpid, None, flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    const CF: u64 = 1;
    const ZF: u64 = 1 << 6;

    #[test]
    fn rflags_decode() {
        // VMsucceed: neither flag; the error field is never read.
        assert_eq!(
            VmxFail::from_rflags(0x2, || panic!("read on success")),
            None
        );
        // Other arithmetic flags (SF, OF, PF, AF) do not make a failure.
        assert_eq!(
            VmxFail::from_rflags(0x2 | 0x80 | 0x800 | 0x4 | 0x10, || None),
            None
        );
        // VMfailInvalid: no current VMCS, the error field is not read.
        assert_eq!(
            VmxFail::from_rflags(0x2 | CF, || panic!("read without a VMCS")),
            Some(VmxFail::Invalid)
        );
        assert_eq!(
            VmxFail::from_rflags(CF | ZF, || panic!("read without a VMCS")),
            Some(VmxFail::Invalid)
        );
        // VMfailValid: the error number comes from the field; unreadable is not 0.
        assert_eq!(
            VmxFail::from_rflags(0x2 | ZF, || Some(13)),
            Some(VmxFail::Valid(Some(13)))
        );
        assert_eq!(
            VmxFail::from_rflags(ZF, || None),
            Some(VmxFail::Valid(None))
        );
    }

    #[test]
    fn error_line_names_op_field_and_error() {
        let e = VmxError {
            op: VmxOp::Vmwrite,
            field: Some(vmcs::GUEST_RIP),
            fail: VmxFail::Valid(Some(13)),
        };
        assert_eq!(
            format!("{e}"),
            "op=vmwrite field=0x681e err=VMfailValid error=13 (VMWRITE to read-only VMCS component)"
        );
        assert_eq!(e.number(), Some(13));
        let e = VmxError {
            op: VmxOp::Invept,
            field: None,
            fail: VmxFail::Invalid,
        };
        assert_eq!(format!("{e}"), "op=invept err=VMfailInvalid");
        assert_eq!(e.number(), None);
        let e = VmxError {
            op: VmxOp::Vmread,
            field: Some(vmcs::IDT_VECTORING_INFO),
            fail: VmxFail::Valid(None),
        };
        assert!(format!("{e}").starts_with("op=vmread field=0x4408 err=VMfailValid error=?"));
    }

    #[test]
    fn every_op_has_its_mnemonic() {
        for (op, name) in [
            (VmxOp::Vmxon, "vmxon"),
            (VmxOp::Vmclear, "vmclear"),
            (VmxOp::Vmptrld, "vmptrld"),
            (VmxOp::Vmread, "vmread"),
            (VmxOp::Vmwrite, "vmwrite"),
            (VmxOp::Vmlaunch, "vmlaunch"),
            (VmxOp::Vmresume, "vmresume"),
            (VmxOp::Invept, "invept"),
            (VmxOp::Invvpid, "invvpid"),
        ] {
            assert_eq!(op.name(), name);
        }
    }

    #[test]
    fn instruction_error_numbers() {
        assert_eq!(
            instruction_error_name(7),
            "VM entry with invalid control field(s)"
        );
        assert_eq!(
            instruction_error_name(12),
            "VMREAD/VMWRITE from/to unsupported VMCS component"
        );
        assert_eq!(
            instruction_error_name(13),
            "VMWRITE to read-only VMCS component"
        );
        assert_eq!(
            instruction_error_name(28),
            "invalid operand to INVEPT/INVVPID"
        );
        // Unassigned numbers (14, 21, 27) and anything past the table.
        for n in [0, 14, 21, 27, 29, u32::MAX] {
            assert_eq!(instruction_error_name(n), "unknown", "{n}");
        }
    }

    #[test]
    fn probe_verdicts() {
        let valid = |n| VmxError {
            op: VmxOp::Vmwrite,
            field: Some(UNSUPPORTED_FIELD),
            fail: VmxFail::Valid(Some(n)),
        };
        // The self-check passes only when the failure is seen with the expected number.
        assert_eq!(
            probe_verdict::<()>(12, Err(valid(12))),
            ProbeVerdict::Detected
        );
        // A success where the CPU must fail: Bulwark cannot see failures, it refuses.
        assert_eq!(probe_verdict(12, Ok(())), ProbeVerdict::Missed);
        assert_eq!(probe_verdict(12, Ok(0u64)), ProbeVerdict::Missed);
        // Detected, but another number or kind: reported, not a pass in silence.
        assert_eq!(
            probe_verdict::<()>(13, Err(valid(12))),
            ProbeVerdict::DetectedOther(valid(12))
        );
        let invalid = VmxError {
            op: VmxOp::Vmread,
            field: Some(UNSUPPORTED_FIELD),
            fail: VmxFail::Invalid,
        };
        assert_eq!(
            probe_verdict::<u64>(12, Err(invalid)),
            ProbeVerdict::DetectedOther(invalid)
        );
        let unreadable = VmxError {
            fail: VmxFail::Valid(None),
            ..valid(12)
        };
        assert_eq!(
            probe_verdict::<()>(12, Err(unreadable)),
            ProbeVerdict::DetectedOther(unreadable)
        );
    }

    #[test]
    fn dump_formatting_never_shows_a_failed_read_as_a_value() {
        let failed = Shown(Err(VmxError {
            op: VmxOp::Vmread,
            field: Some(vmcs::GUEST_RIP),
            fail: VmxFail::Invalid,
        }));
        assert_eq!(format!("{failed:#x}"), "<vmread failed: VMfailInvalid>");
        assert_eq!(format!("{failed}"), "<vmread failed: VMfailInvalid>");
        assert_eq!(format!("{:#x}", Shown(Ok(0x1000))), "0x1000");
        assert_eq!(format!("{}", Shown(Ok(7))), "7");
    }
}
