//! One virtual CPU: its VMCS (built from the capability MSRs), MSR and I/O bitmaps, the guest's
//! general-purpose registers, and the world switch.

use alloc::boxed::Box;
use core::arch::global_asm;

use x86_64::registers::control::{Cr0, Cr3, Cr4};

use crate::cpu::{msr, rdmsr, VmxCaps};
use crate::host::HostCpu;
use crate::vmcs::{self, entry, exit, pin, proc1, proc2};
use crate::vmx::{self, Page, VmxError};

/// Guest general-purpose registers not held in the VMCS (RSP and RIP are). Order is fixed: the
/// world-switch assembly uses these offsets.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct GuestRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

impl GuestRegs {
    /// Register by the VMX encoding (0 RAX, 1 RCX, 2 RDX, 3 RBX, 4 RSP, 5 RBP, 6 RSI, 7 RDI,
    /// 8-15 R8-R15). RSP lives in the VMCS.
    pub fn get(&self, n: u8) -> Result<u64, VmxError> {
        Ok(match n & 15 {
            0 => self.rax,
            1 => self.rcx,
            2 => self.rdx,
            3 => self.rbx,
            4 => vmx::vmread(vmcs::GUEST_RSP)?,
            5 => self.rbp,
            6 => self.rsi,
            7 => self.rdi,
            8 => self.r8,
            9 => self.r9,
            10 => self.r10,
            11 => self.r11,
            12 => self.r12,
            13 => self.r13,
            14 => self.r14,
            _ => self.r15,
        })
    }

    pub fn set(&mut self, n: u8, v: u64) -> Result<(), VmxError> {
        match n & 15 {
            0 => self.rax = v,
            1 => self.rcx = v,
            2 => self.rdx = v,
            3 => self.rbx = v,
            4 => vmx::vmwrite(vmcs::GUEST_RSP, v)?,
            5 => self.rbp = v,
            6 => self.rsi = v,
            7 => self.rdi = v,
            8 => self.r8 = v,
            9 => self.r9 = v,
            10 => self.r10 = v,
            11 => self.r11 = v,
            12 => self.r12 = v,
            13 => self.r13 = v,
            14 => self.r14 = v,
            _ => self.r15 = v,
        }
        Ok(())
    }
}

// The world switch. `bulwark_vmx_enter(regs, launched)` saves Bulwark's callee-saved registers
// and the `regs` pointer on its stack, writes HOST_RSP, loads the guest registers and executes
// VMLAUNCH (launched = 0) or VMRESUME. A VM exit lands at `bulwark_vmx_exit` (HOST_RIP) with
// RSP = HOST_RSP: the guest registers are stored back and the function returns 0. A failed
// VMLAUNCH/VMRESUME returns 1 (CF) or 2 (ZF; error number in VMCS field 0x4400); a failed
// VMWRITE of HOST_RSP returns 3 (CF) or 4 (ZF).
global_asm!(
    r#"
    .section .text
    .global bulwark_vmx_enter
    .global bulwark_vmx_exit
bulwark_vmx_enter:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    push rdi
    mov rax, 0x6c14
    vmwrite rax, rsp
    jc 5f
    jz 6f
    mov rax, rsi
    mov rbx, [rdi + 8]
    mov rcx, [rdi + 16]
    mov rdx, [rdi + 24]
    mov rsi, [rdi + 32]
    mov rbp, [rdi + 48]
    mov r8,  [rdi + 56]
    mov r9,  [rdi + 64]
    mov r10, [rdi + 72]
    mov r11, [rdi + 80]
    mov r12, [rdi + 88]
    mov r13, [rdi + 96]
    mov r14, [rdi + 104]
    mov r15, [rdi + 112]
    test rax, rax
    mov rax, [rdi + 0]
    mov rdi, [rdi + 40]
    jnz 2f
    vmlaunch
    jmp 3f
2:
    vmresume
3:
    /* VMfail: CF -> 1, ZF -> 2 */
    mov eax, 1
    jc 4f
    mov eax, 2
    jmp 4f
5:
    /* the HOST_RSP VMWRITE failed: CF -> 3, ZF -> 4 */
    mov eax, 3
    jmp 4f
6:
    mov eax, 4
4:
    pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

bulwark_vmx_exit:
    /* RSP = HOST_RSP: [rsp] holds the regs pointer */
    xchg rdi, [rsp]
    mov [rdi + 0], rax
    mov [rdi + 8], rbx
    mov [rdi + 16], rcx
    mov [rdi + 24], rdx
    mov [rdi + 32], rsi
    mov [rdi + 48], rbp
    mov [rdi + 56], r8
    mov [rdi + 64], r9
    mov [rdi + 72], r10
    mov [rdi + 80], r11
    mov [rdi + 88], r12
    mov [rdi + 96], r13
    mov [rdi + 104], r14
    mov [rdi + 112], r15
    pop rax
    mov [rdi + 40], rax
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    xor eax, eax
    ret
"#
);

extern "C" {
    fn bulwark_vmx_enter(regs: *mut GuestRegs, launched: u64) -> u64;
    fn bulwark_vmx_exit();
}

/// A control value from the desired bits and its capability MSR (allowed-0 in the low half must
/// be set, allowed-1 in the high half may be set). Err names the desired bits the CPU lacks.
fn adjust(desired: u32, cap: u64) -> Result<u32, u32> {
    let must = cap as u32;
    let may = (cap >> 32) as u32;
    let missing = desired & !may;
    if missing != 0 {
        return Err(missing);
    }
    Ok((desired | must) & may)
}

/// A VMCS could not be set up.
#[derive(Clone, Copy, Debug)]
pub enum SetupError {
    Vmx(VmxError),
    /// The startup self-check did not see a VMX instruction fail that must fail (`vmx::self_check`).
    SelfCheck(&'static str),
    /// A required control bit is not allowed by the CPU: (which field, missing bits).
    Control(&'static str, u32),
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SetupError::Vmx(e) => write!(f, "VMCS setup: vmx error {e}"),
            SetupError::SelfCheck(what) => write!(
                f,
                "VMX self-check: a {what} reported success where the CPU must fail it: Bulwark cannot detect VMX failures here"
            ),
            SetupError::Control(name, bits) => {
                write!(f, "{name}: the CPU does not allow control bits {bits:#x}")
            }
        }
    }
}

impl From<VmxError> for SetupError {
    fn from(e: VmxError) -> Self {
        SetupError::Vmx(e)
    }
}

/// Guest-visible initial state (Multiboot v1 and the Linux 32-bit entry: flat 32-bit protected
/// mode, paging and interrupts off).
#[derive(Clone, Copy, Debug)]
pub struct InitialState {
    pub rip: u64,
    pub rax: u64,
    pub rbx: u64,
    /// Linux: the zero page (boot_params).
    pub rsi: u64,
}

/// The only ports that exit: Bulwark's console UART (COM1, emulated for the guest), the
/// test-exit device 0xf4-0xf7 (QEMU's isa-debug-exit window: a write to 0xf4 ends the run,
/// 0xf5-0xf7 are a defined "no device": reads all ones, writes dropped, which the test guest's
/// string-I/O checks use), and the emulator control ports Bochs offers to any code on the
/// machine — 0x8900 (a "Shutdown" written there ends the emulator) and 0x8a00 (its I/O debugger
/// interface) — which are emulator backdoors, not devices (issue 12): a guest's accesses read
/// all ones and are dropped; Bulwark alone uses 0x8900 to end a run. No PC hardware decodes
/// these two ports. Every other port belongs to the guest.
pub const TRAPPED_PORTS: &[core::ops::Range<u16>] = &[
    crate::serial::COM1..crate::serial::COM1 + 8,
    crate::vm::DEBUG_EXIT_PORT..crate::vm::DEBUG_EXIT_PORT + 4,
    0x8900..0x8901,
    0x8a00..0x8a01,
];

/// MSRs the guest may read and write without an exit: their state is either switched by the
/// VMCS (EFER, PAT, SYSENTER, FS/GS base) or unused by Bulwark (SYSCALL MSRs, KERNEL_GS_BASE,
/// TSC_AUX).
pub const PASSTHROUGH_MSRS: &[u32] = &[
    0x174,         // IA32_SYSENTER_CS
    0x175,         // IA32_SYSENTER_ESP
    0x176,         // IA32_SYSENTER_EIP
    msr::IA32_PAT, // switched by the VMCS
    msr::IA32_EFER,
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    msr::IA32_FS_BASE,
    msr::IA32_GS_BASE,
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
    // IA32_XSS: the supervisor state components XSAVES/XRSTORS manage (XSAVES is enabled, the
    // XSS-exiting bitmap is zero). Bulwark never executes XSAVES, so the guest's value is
    // harmless in root operation; an unsupported bit raises #GP in the guest itself. Without
    // it Linux's compacted-format size check fails and its first XRSTORS faults.
    0xda0,
    // Speculation controls (SPEC_CTRL, PRED_CMD, FLUSH_CMD) and the microcode signature
    // (BIOS_SIGN_ID): a guest OS issues IBPB on its own context switches (Linux has no fixup
    // for a faulting one). The guest's SPEC_CTRL stays in force while Bulwark runs, which can
    // only restrict speculation; Bulwark relies on none of these.
    0x48,
    0x49,
    0x10b,
    0x8b,
];

/// Read-only passthrough: the guest may read these without an exit; writes exit.
pub const READ_ONLY_MSRS: &[u32] = &[
    0x10,  // TSC
    0xce,  // PLATFORM_INFO
    0x10a, // ARCH_CAPABILITIES
];

/// The platform's MSR ranges the guest owns (docs/x86_64.md, "Platform model"), read and write
/// without exits: machine-check architecture (MCG_CAP/STATUS/CTL 0x179-0x17b, MCi_CTL2
/// 0x280-0x29f, the banks 0x400-0x47f: Bulwark does not handle machine checks, the guest does, as
/// on bare metal; an MSR the CPU lacks raises #GP in the guest itself) and the local APIC's
/// TSC-deadline timer (0x6e0: the guest's own timer).
pub const PLATFORM_MSRS: &[core::ops::RangeInclusive<u32>] =
    &[0x179..=0x17b, 0x280..=0x29f, 0x400..=0x47f, 0x6e0..=0x6e0];

/// One vCPU.
pub struct Vcpu {
    pub id: u32,
    pub vpid: u16,
    pub regs: GuestRegs,
    pub launched: bool,
    pub caps: VmxCaps,
    /// CR0/CR4 bits the guest may not own (exits on change), and the fixed values.
    pub cr0_mask: u64,
    pub cr4_mask: u64,
    pub entry_controls: u32,
    vmcs: Box<Page>,
    _msr_bitmap: Box<Page>,
    _io_a: Box<Page>,
    _io_b: Box<Page>,
}

fn set_msr_bit(bitmap: &mut Page, index: u32, write: bool, intercept: bool) {
    let (base, bit) = match index {
        0..=0x1fff => (0usize, index as usize),
        0xc000_0000..=0xc000_1fff => (1024usize, (index - 0xc000_0000) as usize),
        _ => return,
    };
    let base = if write { base + 2048 } else { base };
    let byte = base + bit / 8;
    if let Some(b) = bitmap.0.get_mut(byte) {
        if intercept {
            *b |= 1 << (bit % 8);
        } else {
            *b &= !(1 << (bit % 8));
        }
    }
}

impl Vcpu {
    /// Create the VMCS of vCPU `id`, make it current and write every field.
    pub fn new(
        id: u32,
        caps: VmxCaps,
        host: &HostCpu,
        eptp: u64,
        init: InitialState,
    ) -> Result<Vcpu, SetupError> {
        let mut vmcs_page = Page::zeroed();
        vmcs_page.0[..4].copy_from_slice(&caps.revision().to_le_bytes());
        vmx::load_vmcs(&vmcs_page)?;
        vmx::self_check(&caps).map_err(SetupError::SelfCheck)?;

        // MSR bitmap: every MSR exits, except the passthrough MSRs.
        let mut msr_bitmap = Page::filled(0xff);
        for &m in PASSTHROUGH_MSRS {
            set_msr_bit(&mut msr_bitmap, m, false, false);
            set_msr_bit(&mut msr_bitmap, m, true, false);
        }
        for &m in READ_ONLY_MSRS {
            set_msr_bit(&mut msr_bitmap, m, false, false);
        }
        for m in PLATFORM_MSRS.iter().flat_map(|r| r.clone()) {
            set_msr_bit(&mut msr_bitmap, m, false, false);
            set_msr_bit(&mut msr_bitmap, m, true, false);
        }
        // I/O ports pass through (docs/x86_64.md, "Platform model") except Bulwark's own:
        // its console UART and the test-exit port.
        let mut io_a = Page::zeroed();
        let mut io_b = Page::zeroed();
        for port in TRAPPED_PORTS.iter().flat_map(|r| r.clone()) {
            // Bitmap A covers ports 0..0x8000, bitmap B the rest.
            let (bitmap, p) = match port.checked_sub(0x8000) {
                None => (&mut io_a, port),
                Some(p) => (&mut io_b, p),
            };
            if let Some(b) = bitmap.0.get_mut(usize::from(p / 8)) {
                *b |= 1 << (p % 8);
            }
        }

        let vpid = u16::try_from(id + 1).unwrap_or(1);
        let sec_allowed = caps.secondary_allowed1();
        let mut sec = proc2::ENABLE_EPT | proc2::UNRESTRICTED_GUEST;
        // VPID only with an INVVPID to flush it (the guest's CR3 writes are emulated).
        if caps.vpid() && (caps.invvpid_single() || caps.invvpid_all()) {
            sec |= proc2::ENABLE_VPID;
        }
        // Instructions a guest OS expects when CPUID reports them: without these controls they
        // would raise #UD in the guest.
        for opt in [
            proc2::ENABLE_RDTSCP,
            proc2::ENABLE_INVPCID,
            proc2::ENABLE_XSAVES,
        ] {
            if sec_allowed & opt != 0 {
                sec |= opt;
            }
        }
        let pinv = adjust(0, caps.pinbased).map_err(|b| SetupError::Control("pin-based", b))?;
        let p1 = adjust(
            proc1::HLT_EXITING
                | proc1::USE_IO_BITMAPS
                | proc1::USE_MSR_BITMAPS
                | proc1::ACTIVATE_SECONDARY,
            caps.procbased,
        )
        .map_err(|b| SetupError::Control("primary processor-based", b))?;
        let p2 = adjust(sec, caps.procbased2)
            .map_err(|b| SetupError::Control("secondary processor-based", b))?;
        let ex = adjust(
            exit::HOST_ADDRESS_SPACE_SIZE
                | exit::SAVE_IA32_EFER
                | exit::LOAD_IA32_EFER
                | exit::SAVE_IA32_PAT
                | exit::LOAD_IA32_PAT,
            caps.exit,
        )
        .map_err(|b| SetupError::Control("VM-exit", b))?;
        let en = adjust(entry::LOAD_IA32_EFER | entry::LOAD_IA32_PAT, caps.entry)
            .map_err(|b| SetupError::Control("VM-entry", b))?;
        let _ = pin::EXTERNAL_INTERRUPT_EXITING;

        use vmx::vmwrite as w;
        w(vmcs::PIN_BASED_CONTROLS, u64::from(pinv))?;
        w(vmcs::PRIMARY_PROC_CONTROLS, u64::from(p1))?;
        w(vmcs::SECONDARY_PROC_CONTROLS, u64::from(p2))?;
        w(vmcs::EXIT_CONTROLS, u64::from(ex))?;
        w(vmcs::ENTRY_CONTROLS, u64::from(en))?;
        w(vmcs::EXCEPTION_BITMAP, 0)?;
        w(vmcs::PAGE_FAULT_ERROR_MASK, 0)?;
        w(vmcs::PAGE_FAULT_ERROR_MATCH, 0)?;
        w(vmcs::CR3_TARGET_COUNT, 0)?;
        w(vmcs::EXIT_MSR_STORE_COUNT, 0)?;
        w(vmcs::EXIT_MSR_LOAD_COUNT, 0)?;
        w(vmcs::ENTRY_MSR_LOAD_COUNT, 0)?;
        w(vmcs::ENTRY_INTERRUPTION_INFO, 0)?;
        w(vmcs::MSR_BITMAP, msr_bitmap.phys())?;
        w(vmcs::IO_BITMAP_A, io_a.phys())?;
        w(vmcs::IO_BITMAP_B, io_b.phys())?;
        w(vmcs::EPT_POINTER, eptp)?;
        if p2 & proc2::ENABLE_VPID != 0 {
            w(vmcs::VPID, u64::from(vpid))?;
        }

        // CR0/CR4: the guest owns every bit except those VMX forces (fixed bits, minus PE/PG
        // which unrestricted guest frees) and CR4.VMXE, which it must not see or set.
        let pe_pg = 1u64 | (1 << 31);
        let cr0_fixed1_bits = caps.cr0_fixed0 & !pe_pg;
        let cr0_mask = cr0_fixed1_bits | (!caps.cr0_fixed1 & 0xffff_ffff);
        let cr4_mask = caps.cr4_fixed0 | (!caps.cr4_fixed1 & 0xffff_ffff) | (1 << 13);
        w(vmcs::CR0_GUEST_HOST_MASK, cr0_mask)?;
        w(vmcs::CR4_GUEST_HOST_MASK, cr4_mask)?;
        let guest_cr0 = 0x11u64; // PE | ET: what the guest believes
        let guest_cr4 = 0u64;
        w(vmcs::CR0_READ_SHADOW, guest_cr0)?;
        w(vmcs::CR4_READ_SHADOW, guest_cr4)?;
        w(
            vmcs::GUEST_CR0,
            (guest_cr0 | cr0_fixed1_bits) & caps.cr0_fixed1,
        )?;
        w(vmcs::GUEST_CR3, 0)?;
        w(
            vmcs::GUEST_CR4,
            (guest_cr4 | caps.cr4_fixed0) & caps.cr4_fixed1,
        )?;

        // Host state: this CPU as it is now.
        w(vmcs::HOST_CR0, Cr0::read_raw())?;
        w(vmcs::HOST_CR3, Cr3::read_raw().0.start_address().as_u64())?;
        w(vmcs::HOST_CR4, Cr4::read_raw())?;
        w(vmcs::HOST_CS_SEL, u64::from(host.code.0))?;
        for f in [
            vmcs::HOST_SS_SEL,
            vmcs::HOST_DS_SEL,
            vmcs::HOST_ES_SEL,
            vmcs::HOST_FS_SEL,
            vmcs::HOST_GS_SEL,
        ] {
            w(f, u64::from(host.data.0))?;
        }
        w(vmcs::HOST_TR_SEL, u64::from(host.tr.0))?;
        w(vmcs::HOST_FS_BASE, 0)?;
        w(vmcs::HOST_GS_BASE, 0)?;
        w(vmcs::HOST_TR_BASE, host.tss_base())?;
        w(vmcs::HOST_GDTR_BASE, host.gdt_base())?;
        w(vmcs::HOST_IDTR_BASE, host.idt_base())?;
        w(vmcs::HOST_SYSENTER_CS, 0)?;
        w(vmcs::HOST_SYSENTER_ESP, 0)?;
        w(vmcs::HOST_SYSENTER_EIP, 0)?;
        // SAFETY: EFER and PAT exist on every CPU with VMX and long mode.
        let (efer, pat) = unsafe { (rdmsr(msr::IA32_EFER), rdmsr(msr::IA32_PAT)) };
        w(vmcs::HOST_IA32_EFER, efer)?;
        w(vmcs::HOST_IA32_PAT, pat)?;
        w(vmcs::HOST_RIP, bulwark_vmx_exit as *const () as u64)?;

        // Guest state: Multiboot v1 machine state (spec 3.2): flat 32-bit segments, paging off,
        // interrupts off, A20 on (there is no A20 gate under EPT).
        let code_ar = 0xc09b; // present, DPL0, code execute/read accessed, D=1, G=1
        let data_ar = 0xc093; // present, DPL0, data read/write accessed, D=1, G=1
        let segs = [
            (
                vmcs::GUEST_CS_SEL,
                vmcs::GUEST_CS_BASE,
                vmcs::GUEST_CS_LIMIT,
                vmcs::GUEST_CS_AR,
                0x08,
                code_ar,
            ),
            (
                vmcs::GUEST_DS_SEL,
                vmcs::GUEST_DS_BASE,
                vmcs::GUEST_DS_LIMIT,
                vmcs::GUEST_DS_AR,
                0x10,
                data_ar,
            ),
            (
                vmcs::GUEST_ES_SEL,
                vmcs::GUEST_ES_BASE,
                vmcs::GUEST_ES_LIMIT,
                vmcs::GUEST_ES_AR,
                0x10,
                data_ar,
            ),
            (
                vmcs::GUEST_FS_SEL,
                vmcs::GUEST_FS_BASE,
                vmcs::GUEST_FS_LIMIT,
                vmcs::GUEST_FS_AR,
                0x10,
                data_ar,
            ),
            (
                vmcs::GUEST_GS_SEL,
                vmcs::GUEST_GS_BASE,
                vmcs::GUEST_GS_LIMIT,
                vmcs::GUEST_GS_AR,
                0x10,
                data_ar,
            ),
            (
                vmcs::GUEST_SS_SEL,
                vmcs::GUEST_SS_BASE,
                vmcs::GUEST_SS_LIMIT,
                vmcs::GUEST_SS_AR,
                0x10,
                data_ar,
            ),
        ];
        for (sel, base, limit, ar, s, a) in segs {
            w(sel, s)?;
            w(base, 0)?;
            w(limit, 0xffff_ffff)?;
            w(ar, a)?;
        }
        w(vmcs::GUEST_TR_SEL, 0)?;
        w(vmcs::GUEST_TR_BASE, 0)?;
        w(vmcs::GUEST_TR_LIMIT, 0xffff)?;
        w(vmcs::GUEST_TR_AR, 0x8b)?; // present, busy 32-bit TSS
        w(vmcs::GUEST_LDTR_SEL, 0)?;
        w(vmcs::GUEST_LDTR_BASE, 0)?;
        w(vmcs::GUEST_LDTR_LIMIT, 0)?;
        w(vmcs::GUEST_LDTR_AR, 1 << 16)?; // unusable
        w(vmcs::GUEST_GDTR_BASE, 0)?;
        w(vmcs::GUEST_GDTR_LIMIT, 0)?;
        w(vmcs::GUEST_IDTR_BASE, 0)?;
        w(vmcs::GUEST_IDTR_LIMIT, 0)?;
        w(vmcs::GUEST_DR7, 0x400)?;
        w(vmcs::GUEST_RSP, 0)?;
        w(vmcs::GUEST_RIP, init.rip)?;
        w(vmcs::GUEST_RFLAGS, 0x2)?;
        w(vmcs::GUEST_PENDING_DEBUG, 0)?;
        w(vmcs::GUEST_INTERRUPTIBILITY, 0)?;
        w(vmcs::GUEST_ACTIVITY_STATE, 0)?;
        w(vmcs::GUEST_SYSENTER_CS, 0)?;
        w(vmcs::GUEST_SYSENTER_ESP, 0)?;
        w(vmcs::GUEST_SYSENTER_EIP, 0)?;
        w(vmcs::GUEST_IA32_DEBUGCTL, 0)?;
        w(vmcs::GUEST_IA32_PAT, 0x0007_0406_0007_0406)?; // power-on default
        w(vmcs::GUEST_IA32_EFER, 0)?;
        w(vmcs::VMCS_LINK_POINTER, u64::MAX)?;

        vmx::invalidate_vpid(&caps, vpid)?;

        Ok(Vcpu {
            id,
            vpid,
            regs: GuestRegs {
                rax: init.rax,
                rbx: init.rbx,
                rsi: init.rsi,
                ..GuestRegs::default()
            },
            launched: false,
            caps,
            cr0_mask,
            cr4_mask,
            entry_controls: en,
            vmcs: vmcs_page,
            _msr_bitmap: msr_bitmap,
            _io_a: io_a,
            _io_b: io_b,
        })
    }

    /// Physical address of this vCPU's VMCS.
    pub fn vmcs_phys(&self) -> u64 {
        self.vmcs.phys()
    }

    /// Enter the guest until the next VM exit. Err: VMLAUNCH/VMRESUME failed (the guest did
    /// not run).
    pub fn enter(&mut self) -> Result<(), VmxError> {
        // SAFETY: this vCPU's VMCS is current on this CPU and fully initialised (`new`); the
        // assembly saves and restores every callee-saved register and returns through the
        // HOST_RIP/HOST_RSP written in the VMCS (this very stack frame).
        let r = unsafe { bulwark_vmx_enter(&mut self.regs, u64::from(self.launched)) };
        let (op, field) = match r {
            0 => {
                self.launched = true;
                return Ok(());
            }
            3 | 4 => (vmx::VmxOp::Vmwrite, Some(vmcs::HOST_RSP)),
            _ if self.launched => (vmx::VmxOp::Vmresume, None),
            _ => (vmx::VmxOp::Vmlaunch, None),
        };
        let fail = if r == 1 || r == 3 {
            vmx::VmxFail::Invalid
        } else {
            // An unreadable error field shows as `error=?`, never as a number.
            vmx::VmxFail::Valid(
                vmx::vmread(vmcs::VM_INSTRUCTION_ERROR)
                    .ok()
                    .map(|n| n as u32),
            )
        };
        Err(VmxError { op, field, fail })
    }
}
