//! The x86 run loop: enter the guest, decode each VM exit into the arch-neutral
//! [`bulwark_core::exit::Exit`] (or emulate the x86-only instruction it stands for), obtain an
//! [`Action`] (from the core for hypercalls and EPT faults), and apply it in [`Vm::apply`] — the
//! one place where the guest's instruction pointer is advanced.

use alloc::vec::Vec;

use bulwark_abi::console::{reason, STATUS_BULWARK_FAILURE};
use bulwark_abi::cpuid as bcpuid;
use bulwark_core::addr::GpaRange;
use bulwark_core::addr::{GuestPhysAddr, GuestVirtAddr};
use bulwark_core::exit::{Access, Action, Exit, Hypercall, MemFault, StopReason};
use bulwark_core::guest::{FaultKind, Guest, GuestTranslate, HypercallOutcome};
use bulwark_core::gwalk::x86::{X86PagingState, X86Walker};
use bulwark_core::gwalk::{GuestWalker, WalkError};
use bulwark_core::pt::ept::Ept;
use bulwark_core::pt::sppt::Sppt;
use bulwark_core::store::AttrStore;
use bulwark_core::violation::ViolationKind;

use crate::cpu::{msr, rdmsr, VmxCaps};
use crate::mem::{EptFlush, GuestRam, HeapFrames, Plan};
use crate::vcpu::Vcpu;
use crate::vmcs::{self, reason as er};
use crate::vmx::{self, show, vmread, vmwrite, VmxError};

#[path = "lapic.rs"]
mod lapic;
#[path = "swpath.rs"]
mod swpath;

/// The guest's COM1 as Bulwark emulates it: transmitted bytes are collected into whole lines
/// and printed as `guest| <line>`; the transmitter always reads as empty.
#[derive(Default)]
pub struct GuestUart {
    line: Vec<u8>,
    lcr: u8,
    ier: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
}

/// Longest guest line before it is printed anyway.
const MAX_LINE: usize = 200;
pub const GUEST_COM1: u16 = 0x3f8;
/// isa-debug-exit: a write of v ends the run with guest status v.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

impl GuestUart {
    fn dlab(&self) -> bool {
        self.lcr & 0x80 != 0
    }

    fn write(&mut self, off: u16, v: u8, out: &dyn Fn(&str)) {
        match off {
            0 if self.dlab() => self.dll = v,
            0 => self.byte(v, out),
            1 if self.dlab() => self.dlm = v,
            1 => self.ier = v & 0x0f,
            3 => self.lcr = v,
            4 => self.mcr = v,
            7 => self.scr = v,
            _ => {} // FCR, LSR, MSR writes: no effect
        }
    }

    fn read(&self, off: u16) -> u8 {
        match off {
            0 if self.dlab() => self.dll,
            0 => 0, // nothing received
            1 if self.dlab() => self.dlm,
            1 => self.ier,
            2 => 0x01, // IIR: no interrupt pending
            3 => self.lcr,
            4 => self.mcr,
            5 => 0x60, // LSR: THR empty, transmitter empty
            6 => {
                if self.mcr & 0x10 != 0 {
                    0
                } else {
                    0xb0
                }
            } // MSR: DCD, DSR, CTS
            _ => self.scr,
        }
    }

    fn byte(&mut self, b: u8, out: &dyn Fn(&str)) {
        match b {
            b'\n' => self.flush(out),
            b'\r' => {}
            _ => {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.flush(out);
                }
            }
        }
    }

    /// Print what is buffered as one guest line (also used when the run ends mid-line).
    pub fn flush(&mut self, out: &dyn Fn(&str)) {
        if self.line.is_empty() {
            return;
        }
        let mut s = alloc::string::String::with_capacity(self.line.len());
        for &c in &self.line {
            if c == b'\t' || (0x20..0x7f).contains(&c) {
                s.push(c as char);
            } else {
                s.push_str(&alloc::format!("\\x{c:02x}"));
            }
        }
        out(&s);
        self.line.clear();
    }
}

/// Everything one guest needs while it runs on this CPU.
pub struct Vm<'a, const XO: bool> {
    pub vcpu: Vcpu,
    pub caps: VmxCaps,
    pub guest: &'a spin::Mutex<Guest>,
    pub plan: &'a Plan,
    pub ept: Ept<XO>,
    pub frames: HeapFrames,
    pub uart: GuestUart,
    /// Features reported in CPUID leaf 0x40000001.
    pub features: bcpuid::Features,
    pub max_phys_bits: u8,
    /// Prints one guest console line (`guest| ...`).
    pub guest_line: &'a dyn Fn(&str),
    /// Unknown ports already reported (first few only, to keep the console readable).
    unknown_ports_logged: u32,
    pub exits: u64,
    /// EPT-violation exits (exit 48) this run: with SPP, stores to unprotected sub-pages of a
    /// chunk page never add to it (docs/x86_64-spp.md).
    pub ept_violations: u64,
    /// The SPP table, when the CPU enumerates SPP and Bulwark turned it on (`crate::spp`).
    pub sppt: Option<Sppt>,
    /// The software path for stores to pages with protected bytes (`swpath`).
    sw: swpath::SwPath,
    /// The local APIC page (writes trapped and emulated, `lapic`), when the plan maps it.
    lapic_base: Option<u64>,
    /// Local APIC writes emulated, and INIT/SIPI IPIs refused among them.
    lapic_writes: u64,
    lapic_ipis_refused: u64,
}

/// A VMX instruction failed: the run stops (`Vm::vmx_failed`), nothing is retried.
type VmxResult<T> = Result<T, VmxError>;

/// What the exit handler decided, before it is applied.
enum Step {
    /// The arch-neutral action (from the core, or the x86 emulation).
    Do(Action),
    /// Skip an instruction Bulwark decoded itself (its length: EPT violations report none).
    AdvanceBy(u64),
    /// Inject a hardware exception other than the core's #GP (e.g. #UD), without advancing.
    Exception { vector: u8, error: Option<u32> },
}

fn gp() -> Step {
    Step::Exception {
        vector: 13,
        error: Some(0),
    }
}

fn ud() -> Step {
    Step::Exception {
        vector: 6,
        error: None,
    }
}

/// #PF with `error` at linear address `lin` (CR2 loaded now: a VM entry does not load it).
fn page_fault(lin: u64, error: u32) -> Step {
    // SAFETY: CR2 only holds the last page-fault address; Bulwark never reads it, and the
    // guest sees it as the address of the #PF delivered on this entry.
    unsafe { core::arch::asm!("mov cr2, {}", in(reg) lin) };
    Step::Exception {
        vector: 14,
        error: Some(error),
    }
}

fn stop(status: u32, why: &'static str) -> Step {
    Step::Do(Action::Stop(StopReason {
        status,
        reason: why,
    }))
}

/// Translates guest-virtual addresses with the vCPU's paging state at the time of the exit.
struct Translator<'b> {
    ram: GuestRam<'b>,
    walker: X86Walker,
}

impl GuestTranslate for Translator<'_> {
    /// Never used: the core translates with its store at hand (`translate_checked`); a walk
    /// that cannot see the guest's read permissions fails closed.
    fn translate(&mut self, _gva: GuestVirtAddr) -> Result<GuestPhysAddr, ()> {
        Err(())
    }

    /// The walk reads only paging structures the guest itself may read (issue 12, breach 3):
    /// a table on a frame without R does not translate, so the hypercall returns -EINVAL.
    fn translate_checked(
        &mut self,
        store: &AttrStore,
        gva: GuestVirtAddr,
    ) -> Result<GuestPhysAddr, ()> {
        let mem = self.ram.checked(store);
        let r = self.walker.translate(&mem, gva);
        if let Some(gpa) = mem.denied() {
            log::debug!(
                "hypercall translation of {:#x}: the guest may not read its paging structure at {:#x}",
                gva.as_u64(),
                gpa.as_u64()
            );
        }
        r.map(|t| t.gpa).map_err(|_| ())
    }
}

const GUEST_PDPTE0: u32 = 0x280a;

/// Whether hardware exception `vector` pushes an error code: only in protected mode (CR0.PE),
/// and there only #DF, #TS, #NP, #SS, #GP, #PF, #AC and #CP (SDM Vol. 3A, 6.13).
pub fn delivers_error_code(vector: u8, protected: bool) -> bool {
    protected && matches!(vector, 8 | 10..=14 | 17 | 21)
}

fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

impl<'a, const XO: bool> Vm<'a, XO> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vcpu: Vcpu,
        caps: VmxCaps,
        guest: &'a spin::Mutex<Guest>,
        plan: &'a Plan,
        ept: Ept<XO>,
        mut frames: HeapFrames,
        features: bcpuid::Features,
        max_phys_bits: u8,
        guest_line: &'a dyn Fn(&str),
    ) -> Self {
        let sw = swpath::SwPath::new(&mut frames, caps.procbased, caps.pinbased);
        if sw.available() {
            guest.lock().enable_shadow_step();
            log::info!(
                "software path: {} shadow frames, single-step by {} (IF clear, NMIs blocked; bounded by {})",
                swpath::MAX_SHADOWS,
                sw.mode(),
                sw.bound()
            );
        } else {
            log::warn!(
                "software path unavailable (no scratch frames): stores to chunk pages stop the run"
            );
        }
        Vm {
            vcpu,
            caps,
            guest,
            plan,
            ept,
            frames,
            uart: GuestUart::default(),
            features,
            max_phys_bits,
            guest_line,
            unknown_ports_logged: 0,
            exits: 0,
            ept_violations: 0,
            sppt: None,
            sw,
            lapic_base: plan
                .regions
                .iter()
                .find(|r| r.kind == bulwark_core::guest::RegionKind::DeviceWriteTrapped)
                .map(|r| r.gpa.as_u64()),
            lapic_writes: 0,
            lapic_ipis_refused: 0,
        }
    }

    /// Run the guest until something ends the run.
    pub fn run(&mut self) -> StopReason {
        loop {
            // Held console lines go out while COM1 takes them (never waits; docs/console.md):
            // at every exit, so a line queued during one exit is not held until the next line.
            crate::serial::poll();
            if let Err(e) = self.vcpu.enter() {
                return self.vmx_failed(e);
            }
            self.exits += 1;
            match self.handle_exit().and_then(|step| self.apply(step)) {
                Ok(None) => {}
                Ok(Some(r)) => return self.finish(r),
                Err(e) => return self.vmx_failed(e),
            }
        }
    }

    /// A VMX instruction failed (docs/console.md, `reason=vmx-error`): one line naming it,
    /// the guest state as far as it can still be read, and the run ends. Bulwark never
    /// continues with a VMCS or TLB state it does not know.
    fn vmx_failed(&mut self, e: VmxError) -> StopReason {
        log::error!("vmx error {e}");
        self.dump_state();
        self.finish(StopReason {
            status: STATUS_BULWARK_FAILURE,
            reason: reason::VMX_ERROR,
        })
    }

    fn finish(&mut self, r: StopReason) -> StopReason {
        self.uart.flush(self.guest_line);
        // Pending rate-limited counts (per ip, and the global summary) before the totals.
        let c = {
            let mut g = self.guest.lock();
            g.violation_log().flush();
            g.counters()
        };
        log::info!(
            "counters exits={} hypercalls={} violations={} emulated_stores={} spurious_faults={} table_pages={}",
            self.exits,
            c.hypercalls,
            c.violations.iter().sum::<u64>(),
            c.emulated_stores,
            c.spurious_faults,
            self.ept.stats().table_pages
        );
        log::info!(
            "exit counts: total={} ept-violation={} spp={}",
            self.exits,
            self.ept_violations,
            if self.sppt.is_some() { "on" } else { "off" }
        );
        log::info!(
            "local APIC: {} write(s) emulated, {} INIT/SIPI IPI(s) refused",
            self.lapic_writes,
            self.lapic_ipis_refused
        );
        log::info!(
            "guest stopped after {} VM exits: status={} reason={}",
            self.exits,
            r.status,
            r.reason
        );
        r
    }

    /// Apply a decision. The only place that advances the guest's RIP.
    fn apply(&mut self, step: Step) -> VmxResult<Option<StopReason>> {
        match step {
            Step::Do(Action::Retry) => {
                self.reinject_vectoring()?;
                Ok(None)
            }
            Step::Do(Action::Advance) => self.advance(),
            Step::Do(Action::AdvanceWithResult(v)) => {
                self.vcpu.regs.rax = v;
                self.advance()
            }
            Step::Do(Action::AdvanceWithResults([a, b, c, d])) => {
                self.vcpu.regs.rax = a;
                self.vcpu.regs.rbx = b;
                self.vcpu.regs.rcx = c;
                self.vcpu.regs.rdx = d;
                self.advance()
            }
            Step::Do(Action::EmulateStore(e)) => {
                log::error!(
                    "store emulation for chunk-protected memory is not implemented on x86 yet (gpa={:#x} size={})",
                    e.gpa.as_u64(),
                    e.size
                );
                self.dump_state();
                Ok(Some(StopReason {
                    status: STATUS_BULWARK_FAILURE,
                    reason: reason::UNHANDLED_EXIT,
                }))
            }
            Step::Do(Action::InjectFault) => {
                self.inject(13, Some(0))?;
                Ok(None)
            }
            Step::Exception { vector, error } => {
                self.inject(vector, error)?;
                Ok(None)
            }
            Step::AdvanceBy(len) => {
                self.skip(len)?;
                Ok(None)
            }
            Step::Do(Action::Stop(r)) => Ok(Some(r)),
        }
    }

    /// Move RIP past an instruction of `len` bytes (wrapping as the guest's mode does) and end
    /// any STI / MOV SS interrupt shadow it was in.
    fn skip(&mut self, len: u64) -> VmxResult<()> {
        let rip = vmread(vmcs::GUEST_RIP)?.wrapping_add(len);
        let rip = if self.long_mode_code()? {
            rip
        } else {
            rip & 0xffff_ffff
        };
        vmwrite(vmcs::GUEST_RIP, rip)?;
        let intr = vmread(vmcs::GUEST_INTERRUPTIBILITY)?;
        if intr & 3 != 0 {
            vmwrite(vmcs::GUEST_INTERRUPTIBILITY, intr & !3)?;
        }
        Ok(())
    }

    fn advance(&mut self) -> VmxResult<Option<StopReason>> {
        let basic = self.basic_reason()?;
        if basic == er::EPT_VIOLATION {
            // The instruction-length field is undefined for EPT violations (review C2): such
            // exits complete or refuse the instruction through the software path instead.
            log::error!("cannot skip the guest instruction of an EPT violation: no length");
            self.dump_state();
            return Ok(Some(StopReason {
                status: STATUS_BULWARK_FAILURE,
                reason: reason::UNHANDLED_EXIT,
            }));
        }
        let len = vmread(vmcs::EXIT_INSTRUCTION_LENGTH)?;
        if !(1..=15).contains(&len) {
            log::error!(
                "cannot skip the guest instruction: exit {} reports instruction length {len}",
                er::name(basic)
            );
            self.dump_state();
            return Ok(Some(StopReason {
                status: STATUS_BULWARK_FAILURE,
                reason: reason::UNHANDLED_EXIT,
            }));
        }
        // The skipped instruction ends any STI / MOV SS interrupt shadow.
        self.skip(len)?;
        if basic == er::HLT && self.caps.misc & (1 << 6) != 0 {
            // HLT with interrupts enabled: the vCPU waits in the HLT activity state inside
            // VMX non-root operation (IA32_VMX_MISC bit 6), woken by the guest's next
            // interrupt directly; Bulwark does not spin (docs/x86_64.md, "Platform model").
            vmwrite(vmcs::GUEST_ACTIVITY_STATE, 1)?;
        }
        Ok(None)
    }

    /// Inject hardware exception `vector` as the architecture delivers it in the guest's
    /// current mode (`delivers_error_code`): an error code only in protected mode and only for
    /// the vectors that push one (`error` or 0). Real mode takes none: VM entry with an unrestricted
    /// real-mode guest and an error code fails (VM-instruction error 7).
    fn inject(&mut self, vector: u8, error: Option<u32>) -> VmxResult<()> {
        let mut info = u64::from(vector) | (3 << 8) | (1 << 31);
        let protected = vmread(vmcs::GUEST_CR0)? & 1 != 0;
        if delivers_error_code(vector, protected) {
            info |= 1 << 11;
            vmwrite(
                vmcs::ENTRY_EXCEPTION_ERROR_CODE,
                u64::from(error.unwrap_or(0)),
            )?;
        }
        vmwrite(vmcs::ENTRY_INTERRUPTION_INFO, info)
    }

    /// An exit during event delivery (e.g. an EPT violation while pushing an exception frame)
    /// loses the event unless it is delivered again on re-entry.
    fn reinject_vectoring(&mut self) -> VmxResult<()> {
        let info = vmread(vmcs::IDT_VECTORING_INFO)?;
        if info & (1 << 31) == 0 {
            return Ok(());
        }
        vmwrite(vmcs::ENTRY_INTERRUPTION_INFO, info & 0x8000_0fff)?;
        if info & (1 << 11) != 0 {
            vmwrite(
                vmcs::ENTRY_EXCEPTION_ERROR_CODE,
                vmread(vmcs::IDT_VECTORING_ERROR_CODE)?,
            )?;
        }
        vmwrite(
            vmcs::ENTRY_INSTRUCTION_LENGTH,
            vmread(vmcs::EXIT_INSTRUCTION_LENGTH)?,
        )
    }

    fn basic_reason(&self) -> VmxResult<u16> {
        Ok(vmread(vmcs::EXIT_REASON)? as u16)
    }

    fn long_mode_code(&self) -> VmxResult<bool> {
        let efer = vmread(vmcs::GUEST_IA32_EFER)?;
        let cs_ar = vmread(vmcs::GUEST_CS_AR)?;
        Ok(efer & (1 << 10) != 0 && cs_ar & (1 << 13) != 0)
    }

    fn cpl(&self) -> VmxResult<u8> {
        Ok(((vmread(vmcs::GUEST_SS_AR)? >> 5) & 3) as u8)
    }

    fn handle_exit(&mut self) -> VmxResult<Step> {
        let full = vmread(vmcs::EXIT_REASON)?;
        let basic = full as u16;
        if full & (1 << 31) != 0 {
            log::error!(
                "VM entry failed: exit reason {} ({}), qualification {:#x}",
                basic,
                er::name(basic),
                show(vmcs::EXIT_QUALIFICATION)
            );
            self.dump_state();
            return Ok(stop(STATUS_BULWARK_FAILURE, reason::UNHANDLED_EXIT));
        }
        if let Some(s) = self.sw_guard(basic)? {
            return Ok(s);
        }
        Ok(match basic {
            er::CPUID => self.cpuid()?,
            er::VMCALL => {
                let r = &self.vcpu.regs;
                let hc = Hypercall {
                    nr: r.rax,
                    args: [r.rbx, r.rcx, r.rdx, r.rsi],
                    from_user: self.cpl()? != 0,
                    narrow: !self.long_mode_code()?,
                };
                self.decide(Exit::Hypercall(hc))?
            }
            er::HLT => self.decide(Exit::Halt)?,
            er::IO_INSTRUCTION => self.io()?,
            er::RDMSR => self.rdmsr(),
            er::WRMSR => self.wrmsr(),
            er::CR_ACCESS => self.cr_access()?,
            er::XSETBV => self.xsetbv()?,
            swpath::EXIT_MTF => self.sw_mtf()?,
            er::EXCEPTION_OR_NMI if self.sw.stepping() => self.sw_exception()?,
            er::EPT_VIOLATION => {
                self.ept_violations += 1;
                let q = vmread(vmcs::EXIT_QUALIFICATION)?;
                let access = if q & 4 != 0 {
                    Access::Exec
                } else if q & 2 != 0 {
                    Access::Write
                } else {
                    Access::Read
                };
                let gva = if q & (1 << 7) != 0 {
                    Some(GuestVirtAddr::new(vmread(vmcs::GUEST_LINEAR_ADDRESS)?))
                } else {
                    None
                };
                let f = MemFault {
                    gpa: GuestPhysAddr::new(vmread(vmcs::GUEST_PHYSICAL_ADDRESS)?),
                    gva,
                    ip: GuestVirtAddr::new(vmread(vmcs::GUEST_RIP)?),
                    access,
                    size: None,
                };
                log::debug!(
                    "ept-violation gpa={:#x} gva={:#x} ip={:#x} access={} qualification={:#x}",
                    f.gpa.as_u64(),
                    gva.map(|g| g.as_u64()).unwrap_or(0),
                    f.ip.as_u64(),
                    access.as_str(),
                    q
                );
                if access == Access::Write && vmread(vmcs::IDT_VECTORING_INFO)? & (1 << 31) != 0 {
                    if let Some(s) = self.delivery_fault(&f)? {
                        return Ok(s);
                    }
                }
                // A store to the local APIC page (mapped read-only): emulated, INIT/SIPI
                // refused (`lapic`). A paging-structure access there goes to the core.
                if let Some(base) = self.lapic_base {
                    let paging = q & (1 << 7) != 0 && q & (1 << 8) == 0;
                    if access == Access::Write
                        && !paging
                        && (base..base + 0x1000).contains(&f.gpa.as_u64())
                        && !self.sw.stepping()
                    {
                        return self.lapic_write(&f, base);
                    }
                }
                // Qualification bit 7 set, bit 8 clear: the access was to a guest paging
                // structure (the CPU's own walk), not to the linear address's page.
                if q & (1 << 7) != 0 && q & (1 << 8) == 0 {
                    if let Some(s) = self.sw_paging_structure(&f)? {
                        return Ok(s);
                    }
                }
                self.decide(Exit::MemFault(f))?
            }
            er::EPT_MISCONFIG => {
                log::error!(
                    "EPT misconfiguration (a Bulwark bug): gpa={:#x} ip={:#x}",
                    show(vmcs::GUEST_PHYSICAL_ADDRESS),
                    show(vmcs::GUEST_RIP)
                );
                self.dump_state();
                stop(STATUS_BULWARK_FAILURE, reason::UNHANDLED_EXIT)
            }
            er::SPP_EVENT => self.spp_event()?,
            er::TASK_SWITCH => self.task_switch()?,
            er::TRIPLE_FAULT => self.decide(Exit::Fatal {
                reason: "triple fault",
                code: u64::from(basic),
            })?,
            er::VMCLEAR..=er::VMXON | er::INVEPT | er::INVVPID | er::GETSEC => {
                // VMX is hidden from the guest: these instructions do not exist for it.
                ud()
            }
            _ => {
                log::error!(
                    "unhandled VM exit: reason {} ({}), qualification {:#x}",
                    basic,
                    er::name(basic),
                    show(vmcs::EXIT_QUALIFICATION)
                );
                self.dump_state();
                stop(STATUS_BULWARK_FAILURE, reason::UNHANDLED_EXIT)
            }
        })
    }

    /// Arch-neutral exits: hypercalls and faults go to the core; the rest is plain policy.
    fn decide(&mut self, exit: Exit) -> VmxResult<Step> {
        Ok(match exit {
            Exit::Hypercall(hc) => {
                let state = self.paging_state()?;
                let mut tr = Translator {
                    ram: GuestRam { plan: self.plan },
                    walker: X86Walker::new(state),
                };
                let outcome = self.guest.lock().handle_hypercall(&hc, &mut tr);
                match outcome {
                    HypercallOutcome::Handled { action, rederive } => {
                        if let Some(r) = rederive {
                            if let Some(s) = self.rederive(r)? {
                                return Ok(s);
                            }
                        }
                        Step::Do(action)
                    }
                    // Nothing else is defined on x86: KVM answers unknown calls -KVM_ENOSYS.
                    HypercallOutcome::NotMine => Step::Do(Action::AdvanceWithResult(
                        bulwark_abi::errno::Errno::NoSys.to_reg(hc.narrow),
                    )),
                }
            }
            Exit::MemFault(f) => {
                let d = self.guest.lock().handle_fault(self.vcpu.id, &f);
                if let Some(r) = d.rederive {
                    if let Some(s) = self.rederive(r)? {
                        return Ok(s);
                    }
                }
                if let Action::Stop(_) = d.action {
                    log::error!(
                        "guest stopped by an EPT violation: gpa={:#x} gva={:#x} ip={:#x} access={}",
                        f.gpa.as_u64(),
                        f.gva.map(|g| g.as_u64()).unwrap_or(0),
                        f.ip.as_u64(),
                        f.access.as_str()
                    );
                    self.dump_state();
                }
                // Stores to pages with protected bytes: the software path (swpath) completes
                // the instruction against shadow copies; EPT violations carry no length to
                // skip it by.
                if f.access == Access::Write {
                    let logged = match (d.kind, d.action) {
                        (FaultKind::ShadowStep, _) => Some(false),
                        // `attr` too (review C2): the exit's instruction length is undefined
                        // for an EPT violation, so skip completes the instruction against a
                        // shadow whose bytes are all dropped.
                        (
                            FaultKind::Violation(
                                ViolationKind::Roe | ViolationKind::RoeChunk | ViolationKind::Attr,
                            ),
                            Action::Advance,
                        ) => Some(true),
                        _ => None,
                    };
                    if let Some(logged) = logged {
                        return self.sw_fault(&f, logged);
                    }
                }
                if self.sw.stepping() && matches!(d.action, Action::InjectFault | Action::Stop(_)) {
                    // A later page of the instruction decided: nothing of it is written.
                    if let Err(s) = self.sw_abort()? {
                        return Ok(s);
                    }
                }
                Step::Do(d.action)
            }
            Exit::Halt => {
                if vmread(vmcs::GUEST_RFLAGS)? & (1 << 9) == 0 {
                    log::error!(
                        "guest executed HLT with interrupts disabled at ip={:#x}: it can never resume",
                        show(vmcs::GUEST_RIP)
                    );
                    stop(STATUS_BULWARK_FAILURE, reason::GUEST_CRASH)
                } else {
                    // Interrupts reach the guest directly (no external-interrupt exiting): let
                    // it continue; a pending interrupt is delivered on entry.
                    Step::Do(Action::Advance)
                }
            }
            Exit::GuestStatus(v) => {
                log::info!("guest wrote {v:#x} to port 0xf4: ending the run with its status");
                stop(v, reason::GUEST_EXIT)
            }
            Exit::Fatal { reason: why, code } => {
                log::error!("guest crashed: {why} (exit reason {code})");
                self.dump_state();
                stop(STATUS_BULWARK_FAILURE, reason::GUEST_CRASH)
            }
        })
    }

    /// Re-derive EPT permissions of `range` from the core's store. `Ok(Some(stop))`: the EPT
    /// update failed and the guest stops; `Err`: an INVEPT failed.
    fn rederive(&mut self, range: GpaRange) -> VmxResult<Option<Step>> {
        let eptp = self.ept.eptp();
        let mut flush = EptFlush {
            caps: &self.caps,
            eptp,
            flushes: 0,
            failed: None,
        };
        let r = crate::spp::sync_ept(
            &self.guest.lock(),
            &mut self.frames,
            &mut self.ept,
            self.sppt.as_mut(),
            range,
            &mut flush,
        );
        if let Some(e) = flush.failed {
            return Err(e);
        }
        match r {
            Ok(_) => Ok(None),
            Err(e) => {
                log::error!("EPT update failed: {e:?}");
                Ok(Some(stop(STATUS_BULWARK_FAILURE, reason::UNHANDLED_EXIT)))
            }
        }
    }

    /// Exit 66: Bulwark builds every SPPT path before the EPT leaf that needs it and never sets
    /// a reserved bit, so an SPPT miss or misconfiguration is a Bulwark bug: log it with what
    /// the SPPT holds for the page and stop the run (never retry).
    fn spp_event(&mut self) -> VmxResult<Step> {
        let q = vmread(vmcs::EXIT_QUALIFICATION)?;
        let gpa = vmread(vmcs::GUEST_PHYSICAL_ADDRESS)?;
        let entry: alloc::string::String = match &self.sppt {
            None => "no SPPT".into(),
            Some(s) => match s.get(&self.frames, GuestPhysAddr::new(gpa & !0xfff)) {
                None => "path missing".into(),
                Some(v) => alloc::format!("{:#018x}", v.raw()),
            },
        };
        log::error!(
            "SPP event (a Bulwark bug): {} reason={} qualification={:#x} gpa={:#x} ip={:#x} sppt-entry={}",
            crate::spp::event_kind(q),
            er::SPP_EVENT,
            q,
            gpa,
            show(vmcs::GUEST_RIP),
            entry
        );
        self.dump_state();
        Ok(stop(STATUS_BULWARK_FAILURE, reason::UNHANDLED_EXIT))
    }

    /// Exit 9: a hardware task switch (CALL/JMP to a TSS or task gate, IRET with NT, an
    /// interrupt or exception through a task gate) is refused with one clear line, a state
    /// dump, and the run stopped (`unhandled-exit`); docs/x86_64.md says why it is not emulated.
    /// VMX always exits before the task switch changes anything, so nothing was written.
    fn task_switch(&mut self) -> VmxResult<Step> {
        let q = vmread(vmcs::EXIT_QUALIFICATION)?;
        let source = match (q >> 30) & 3 {
            0 => "CALL",
            1 => "IRET",
            2 => "JMP",
            _ => "a task gate in the IDT",
        };
        log::error!(
            "guest hardware task switch to TSS selector {:#x} by {} at ip={}: not emulated (docs/x86_64.md), stopping the guest",
            q & 0xffff,
            source,
            show(vmcs::GUEST_RIP)
        );
        self.dump_state();
        Ok(stop(STATUS_BULWARK_FAILURE, reason::UNHANDLED_EXIT))
    }

    fn paging_state(&self) -> VmxResult<X86PagingState> {
        let cr0 = vmread(vmcs::GUEST_CR0)?;
        let cr4 = vmread(vmcs::GUEST_CR4)?;
        let efer = vmread(vmcs::GUEST_IA32_EFER)?;
        let mut s = X86PagingState::new(cr0, vmread(vmcs::GUEST_CR3)?, cr4, efer)
            .with_maxphyaddr(self.max_phys_bits);
        let pae_legacy = cr0 & (1 << 31) != 0 && cr4 & (1 << 5) != 0 && efer & (1 << 8) == 0;
        if pae_legacy {
            let mut p = [0u64; 4];
            for (i, pdpte) in (0u32..).zip(p.iter_mut()) {
                *pdpte = vmread(GUEST_PDPTE0 + 2 * i)?;
            }
            s = s.with_pdptes(p);
        }
        Ok(s)
    }

    fn cpuid(&mut self) -> VmxResult<Step> {
        let leaf = self.vcpu.regs.rax as u32;
        let sub = self.vcpu.regs.rcx as u32;
        let [a, b, c, d] =
            if (bcpuid::LEAF_SIGNATURE..=bcpuid::LEAF_SIGNATURE + 0xff).contains(&leaf) {
                match leaf {
                    bcpuid::LEAF_SIGNATURE => bcpuid::signature_leaf(),
                    bcpuid::LEAF_FEATURES => self.features.encode(),
                    _ => [0; 4],
                }
            } else {
                let r = core::arch::x86_64::__cpuid_count(leaf, sub);
                let (a, b, mut c, d) = (r.eax, r.ebx, r.ecx, r.edx);
                if leaf == 1 {
                    c &= !(1 << 5); // VMX: hidden
                    c &= !(1 << 6); // SMX: GETSEC is not offered
                    c &= !(1 << 21); // x2APIC: IA32_APIC_BASE is not writable (xAPIC only)
                    c |= 1 << 31; // running under a hypervisor
                                  // OSXSAVE mirrors the guest's own CR4, not Bulwark's.
                                  // The guest's view: masked bits from the read shadow, the rest from CR4.
                    let mask = self.vcpu.cr4_mask;
                    let cr4 = (vmread(vmcs::GUEST_CR4)? & !mask)
                        | (vmread(vmcs::CR4_READ_SHADOW)? & mask);
                    if cr4 & (1 << 18) != 0 {
                        c |= 1 << 27;
                    } else {
                        c &= !(1 << 27);
                    }
                }
                [a, b, c, d]
            };
        Ok(Step::Do(Action::AdvanceWithResults([
            u64::from(a),
            u64::from(b),
            u64::from(c),
            u64::from(d),
        ])))
    }

    fn io(&mut self) -> VmxResult<Step> {
        let q = vmread(vmcs::EXIT_QUALIFICATION)?;
        let size = (q & 7) as u8 + 1;
        let is_in = q & (1 << 3) != 0;
        let port = (q >> 16) as u16;
        if q & (1 << 4) != 0 {
            return self.string_io(port, size, is_in, q & (1 << 5) != 0);
        }
        if is_in {
            let v = self.port_in(port, size);
            // IN to AL/AX keeps the rest of RAX; IN to EAX zero-extends.
            let mask = size_mask(size);
            let rax = self.vcpu.regs.rax;
            self.vcpu.regs.rax = if size == 4 {
                v
            } else {
                (rax & !mask) | (v & mask)
            };
            Ok(Step::Do(Action::Advance))
        } else {
            let v = self.vcpu.regs.rax & size_mask(size);
            Ok(self
                .port_out(port, size, v)?
                .unwrap_or(Step::Do(Action::Advance)))
        }
    }

    /// The value a port read returns (emulated COM1, else "no device": all ones).
    fn port_in(&mut self, port: u16, size: u8) -> u64 {
        if (GUEST_COM1..GUEST_COM1 + 8).contains(&port) {
            u64::from(self.uart.read(port - GUEST_COM1))
        } else {
            self.note_unknown_port(port, "in");
            size_mask(size)
        }
    }

    /// Perform a port write; `Some(step)` when it ends the run (port 0xf4).
    fn port_out(&mut self, port: u16, _size: u8, v: u64) -> VmxResult<Option<Step>> {
        if (GUEST_COM1..GUEST_COM1 + 8).contains(&port) {
            let out = self.guest_line;
            self.uart.write(port - GUEST_COM1, v as u8, out);
            Ok(None)
        } else if port == DEBUG_EXIT_PORT {
            Ok(Some(self.decide(Exit::GuestStatus(v as u32))?))
        } else {
            self.note_unknown_port(port, "out");
            Ok(None)
        }
    }

    /// INS/OUTS (with or without REP): elements move between the port and guest memory at
    /// segment:RSI (OUTS) or ES:RDI (INS), translated through the guest's paging. At most
    /// `STRING_IO_CHUNK` elements per exit; an unfinished REP re-executes (RIP unchanged).
    /// Every byte of an element is checked before anything moves (review C4): what the guest's
    /// own paging refuses (not present, reserved bits, U/S at CPL 3, R/W with CR0.WP or at
    /// CPL 3, SMAP) is a #PF with the architectural error code and CR2. A byte of INS into
    /// memory whose store state refuses writes goes through the core per byte (review C3):
    /// unprotected bytes of a chunk page are written, a protected byte is a violation line with
    /// the policy's action (skip: that byte dropped; inject: #GP(0) at this element; halt:
    /// stop). OUTS from memory the host attributes make unreadable: #GP(0).
    fn string_io(&mut self, port: u16, size: u8, is_in: bool, rep: bool) -> VmxResult<Step> {
        const STRING_IO_CHUNK: u64 = 4096;
        let info = vmread(vmcs::EXIT_INSTRUCTION_INFO)?;
        let addr_mask: u64 = match (info >> 7) & 7 {
            0 => 0xffff,
            1 => 0xffff_ffff,
            _ => u64::MAX,
        };
        let long = self.long_mode_code()?;
        let seg = if is_in { 0 } else { (info >> 15) & 7 };
        // In 64-bit mode only FS and GS have bases.
        let base = if long && seg < 4 {
            0
        } else {
            vmread(vmcs::GUEST_ES_BASE + 2 * seg as u32)?
        };
        let rflags = vmread(vmcs::GUEST_RFLAGS)?;
        let down = rflags & (1 << 10) != 0;
        let cpl = self.cpl()?;
        let wp = vmread(vmcs::GUEST_CR0)? & (1 << 16) != 0;
        // SMAP: supervisor data accesses to user pages fault unless RFLAGS.AC.
        let smap = vmread(vmcs::GUEST_CR4)? & (1 << 21) != 0 && cpl < 3 && rflags & (1 << 18) == 0;
        let mut count = if rep {
            self.vcpu.regs.rcx & addr_mask
        } else {
            1
        };
        let reg = if is_in { 7 } else { 6 }; // RDI or RSI
        let walker = X86Walker::new(self.paging_state()?);
        let ram = GuestRam { plan: self.plan };
        let ip = GuestVirtAddr::new(vmread(vmcs::GUEST_RIP)?);
        let mut done = 0u64;
        while count > 0 && done < STRING_IO_CHUNK {
            let offset = self.vcpu.regs.get(reg)? & addr_mask;
            // (gpa, linear) per byte of the element, decided before anything moves.
            let mut plan = [(0u64, 0u64); 4];
            for (i, slot) in plan.iter_mut().enumerate().take(usize::from(size)) {
                let lin = base.wrapping_add((offset.wrapping_add(i as u64)) & addr_mask);
                let lin = if long { lin } else { lin & 0xffff_ffff };
                let pf = |present: bool, rsvd: bool| -> u32 {
                    u32::from(present)
                        | (u32::from(is_in) << 1)
                        | (u32::from(cpl == 3) << 2)
                        | (u32::from(rsvd) << 3)
                };
                // The walk reads the guest's tables as the CPU's own walk would: a table on a
                // frame the guest may not read is an EPT read violation (issue 12, breach 3).
                let (walked, denied) = {
                    let g = self.guest.lock();
                    let mem = ram.checked(g.store());
                    let r = walker.translate(&mem, GuestVirtAddr::new(lin));
                    (r, mem.denied())
                };
                if let (Err(_), Some(gpa)) = (&walked, denied) {
                    return self.string_io_read_fault(gpa, lin, ip);
                }
                let t = match walked {
                    Ok(t) => t,
                    Err(WalkError::NotPresent { .. }) => {
                        return Ok(page_fault(lin, pf(false, false)))
                    }
                    Err(WalkError::Reserved { .. }) => return Ok(page_fault(lin, pf(true, true))),
                    Err(e) => {
                        log::debug!("string I/O: linear {lin:#x} does not translate ({e:?}): #GP");
                        return Ok(gp());
                    }
                };
                let p = t.perms;
                let denied = if cpl == 3 {
                    !p.user || (is_in && !p.writable)
                } else {
                    (is_in && wp && !p.writable) || (smap && p.user)
                };
                if denied {
                    return Ok(page_fault(lin, pf(true, false)));
                }
                // Every byte is checked before anything moves (issue 12): a byte outside guest
                // RAM (Bulwark's region, a device, a hole) refuses the whole element.
                let g = t.gpa.as_u64();
                if g.checked_add(1)
                    .is_none_or(|end| !self.plan.is_ram(g, end) || end > 1 << 32)
                {
                    log::debug!("string I/O: linear {lin:#x} is not guest RAM ({g:#x}): #GP");
                    return Ok(gp());
                }
                *slot = (t.gpa.as_u64(), lin);
            }
            // Then the protection state of each byte (only once every byte translated to RAM,
            // so that no violation is logged or store counted for an element that faults).
            let mut write = [is_in; 4];
            for (i, &(gpa, lin)) in plan.iter().enumerate().take(usize::from(size)) {
                let gpa = GuestPhysAddr::new(gpa);
                let st = self.guest.lock().store().state(gpa.frame());
                if is_in && st.write_protected() {
                    let f = MemFault {
                        gpa,
                        gva: Some(GuestVirtAddr::new(lin)),
                        ip,
                        access: Access::Write,
                        size: Some(1),
                    };
                    let d = self.guest.lock().handle_fault(self.vcpu.id, &f);
                    match d.action {
                        // An unprotected byte of a chunk page (or a stale refusal).
                        Action::EmulateStore(_) | Action::Retry => {}
                        // skip: this byte is dropped.
                        Action::Advance => {
                            if let Some(w) = write.get_mut(i) {
                                *w = false;
                            }
                        }
                        Action::Stop(_) => return Ok(Step::Do(d.action)),
                        _ => return Ok(gp()),
                    }
                } else if !is_in && !st.allowed.read() {
                    // OUTS from memory the guest may not read: the read EPT violation the
                    // CPU's own access would take (attr line, the policy's action).
                    return self.string_io_read_fault(gpa, lin, ip);
                }
            }
            let mut bytes = [0u8; 4];
            if is_in {
                let value = self.port_in(port, size);
                for (i, (&(gpa, _), &write)) in plan
                    .iter()
                    .zip(write.iter())
                    .enumerate()
                    .take(usize::from(size))
                {
                    if write && ram.write_byte(gpa, (value >> (8 * i)) as u8).is_err() {
                        return Ok(gp());
                    }
                }
            } else {
                for (b, &(gpa, _)) in bytes.iter_mut().zip(plan.iter()).take(usize::from(size)) {
                    match ram.read_byte(gpa) {
                        Ok(v) => *b = v,
                        Err(_) => return Ok(gp()),
                    }
                }
                let v = u64::from(u32::from_le_bytes(bytes));
                if let Some(step) = self.port_out(port, size, v)? {
                    return Ok(step);
                }
            }
            let step = u64::from(size);
            let next = if down {
                offset.wrapping_sub(step)
            } else {
                offset.wrapping_add(step)
            };
            let full = self.vcpu.regs.get(reg)?;
            self.vcpu
                .regs
                .set(reg, (full & !addr_mask) | (next & addr_mask))?;
            count -= 1;
            done += 1;
            if rep {
                let rcx = self.vcpu.regs.rcx;
                self.vcpu.regs.rcx = (rcx & !addr_mask) | (count & addr_mask);
            }
        }
        Ok(if count > 0 {
            Step::Do(Action::Retry)
        } else {
            Step::Do(Action::Advance)
        })
    }

    /// A read the guest may not make, met by string I/O emulation (a paging structure or an
    /// OUTS source on a frame without R): handled as the CPU's own read EPT violation would be
    /// (`attr` violation line; #GP(0) under skip and inject, the run stops under halt).
    fn string_io_read_fault(
        &mut self,
        gpa: GuestPhysAddr,
        lin: u64,
        ip: GuestVirtAddr,
    ) -> VmxResult<Step> {
        let f = MemFault {
            gpa,
            gva: Some(GuestVirtAddr::new(lin)),
            ip,
            access: Access::Read,
            size: None,
        };
        let d = self.guest.lock().handle_fault(self.vcpu.id, &f);
        Ok(match d.action {
            Action::Stop(_) => Step::Do(d.action),
            _ => gp(),
        })
    }

    fn note_unknown_port(&mut self, port: u16, dir: &str) {
        if self.unknown_ports_logged < 8 {
            self.unknown_ports_logged += 1;
            log::debug!(
                "guest {dir} on port {port:#x}: no device (reads all ones, writes dropped)"
            );
        }
    }

    fn rdmsr(&mut self) -> Step {
        let index = self.vcpu.regs.rcx as u32;
        let value = match index {
            msr::IA32_FEATURE_CONTROL => 1, // locked, VMX off: matches the hidden CPUID bit
            // Readable as on the real CPU: APIC base, MTRRs, misc enables, platform info.
            0x1b | 0xfe | 0x1a0 | 0x2ff | 0x200..=0x21f | 0x250 | 0x258 | 0x259 | 0x268..=0x26f => {
                // SAFETY: these MSRs exist on every CPU with VMX (architectural MTRRs,
                // APIC base, MISC_ENABLE).
                unsafe { rdmsr(index) }
            }
            _ => {
                log::debug!("guest rdmsr {index:#x}: not offered, #GP");
                return gp();
            }
        };
        Step::Do(Action::AdvanceWithResults([
            value & 0xffff_ffff,
            self.vcpu.regs.rbx,
            self.vcpu.regs.rcx,
            value >> 32,
        ]))
    }

    fn wrmsr(&mut self) -> Step {
        let index = self.vcpu.regs.rcx as u32;
        let value = (self.vcpu.regs.rdx << 32) | (self.vcpu.regs.rax & 0xffff_ffff);
        match index {
            // Memory types come from EPT (ignore-PAT): the guest's MTRR writes have no effect
            // and must not reach the real MTRRs, which Bulwark's own memory depends on.
            0x2ff | 0x200..=0x21f | 0x250 | 0x258 | 0x259 | 0x268..=0x26f => {
                log::debug!(
                    "guest wrmsr {index:#x} = {value:#x}: dropped (EPT decides memory types)"
                );
                Step::Do(Action::Advance)
            }
            _ => {
                // Feature control, VMX capability MSRs and everything else: not writable.
                log::debug!("guest wrmsr {index:#x} = {value:#x}: refused, #GP");
                gp()
            }
        }
    }

    fn cr_access(&mut self) -> VmxResult<Step> {
        let q = vmread(vmcs::EXIT_QUALIFICATION)?;
        let cr = (q & 15) as u8;
        let kind = (q >> 4) & 3;
        let reg = ((q >> 8) & 15) as u8;
        match (kind, cr) {
            (0, 0) => {
                let v = self.vcpu.regs.get(reg)?;
                self.write_cr0(v)
            }
            (0, 4) => {
                let v = self.vcpu.regs.get(reg)?;
                self.write_cr4(v)
            }
            (0, 3) => {
                let v = self.vcpu.regs.get(reg)?;
                vmwrite(vmcs::GUEST_CR3, v)?;
                vmx::invalidate_vpid(&self.caps, self.vcpu.vpid)?;
                Ok(Step::Do(Action::Advance))
            }
            (1, 3) => {
                let v = vmread(vmcs::GUEST_CR3)?;
                self.vcpu.regs.set(reg, v)?;
                Ok(Step::Do(Action::Advance))
            }
            _ => {
                log::error!("unhandled control-register access: qualification {q:#x}");
                self.dump_state();
                Ok(stop(STATUS_BULWARK_FAILURE, reason::UNHANDLED_EXIT))
            }
        }
    }

    fn write_cr0(&mut self, v: u64) -> VmxResult<Step> {
        const PE: u64 = 1;
        const NW: u64 = 1 << 29;
        const CD: u64 = 1 << 30;
        const PG: u64 = 1 << 31;
        if v >> 32 != 0 || (v & PG != 0 && v & PE == 0) || (v & NW != 0 && v & CD == 0) {
            return Ok(gp());
        }
        let old = vmread(vmcs::GUEST_CR0)?;
        let forced = self.vcpu.caps.cr0_fixed0 & !(PE | PG);
        let real = (v | forced) & self.vcpu.caps.cr0_fixed1;
        // Long-mode activation/deactivation that the CPU would have done itself.
        let mut efer = vmread(vmcs::GUEST_IA32_EFER)?;
        let mut ctl = vmread(vmcs::ENTRY_CONTROLS)?;
        if old & PG == 0 && v & PG != 0 && efer & (1 << 8) != 0 {
            if vmread(vmcs::GUEST_CR4)? & (1 << 5) == 0 {
                return Ok(gp()); // long mode needs PAE
            }
            efer |= 1 << 10;
            ctl |= u64::from(vmcs::entry::IA32E_MODE_GUEST);
        } else if old & PG != 0 && v & PG == 0 {
            efer &= !(1 << 10);
            ctl &= !u64::from(vmcs::entry::IA32E_MODE_GUEST);
        }
        vmwrite(vmcs::GUEST_IA32_EFER, efer)?;
        vmwrite(vmcs::ENTRY_CONTROLS, ctl)?;
        vmwrite(vmcs::CR0_READ_SHADOW, v)?;
        vmwrite(vmcs::GUEST_CR0, real)?;
        vmx::invalidate_vpid(&self.caps, self.vcpu.vpid)?;
        Ok(Step::Do(Action::Advance))
    }

    fn write_cr4(&mut self, v: u64) -> VmxResult<Step> {
        const VMXE: u64 = 1 << 13;
        let caps = &self.vcpu.caps;
        let allowed = caps.cr4_fixed1 & !VMXE;
        if v & VMXE != 0 || v & !allowed != 0 {
            return Ok(gp());
        }
        let real = (v | caps.cr4_fixed0) & caps.cr4_fixed1;
        vmwrite(vmcs::CR4_READ_SHADOW, v)?;
        vmwrite(vmcs::GUEST_CR4, real)?;
        vmx::invalidate_vpid(&self.caps, self.vcpu.vpid)?;
        Ok(Step::Do(Action::Advance))
    }

    fn xsetbv(&mut self) -> VmxResult<Step> {
        let index = self.vcpu.regs.rcx as u32;
        let value = (self.vcpu.regs.rdx << 32) | (self.vcpu.regs.rax & 0xffff_ffff);
        let leaf = core::arch::x86_64::__cpuid_count(0xd, 0);
        let supported = u64::from(leaf.eax) | (u64::from(leaf.edx) << 32);
        let avx512 = 0b111 << 5;
        let ok = index == 0
            && self.cpl()? == 0
            && value & 1 != 0
            && value & !supported == 0
            && (value & 4 == 0 || value & 2 != 0)
            && (value & avx512 == 0 || (value & avx512 == avx512 && value & 4 != 0))
            && (value & (1 << 3)) >> 3 == (value & (1 << 4)) >> 4; // MPX: both or neither
        if !ok {
            return Ok(gp());
        }
        // SAFETY: the value passed the architectural checks above against what this CPU
        // supports; Bulwark itself uses no extended state, so the guest owns XCR0.
        unsafe {
            core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32);
        }
        Ok(Step::Do(Action::Advance))
    }

    /// Log the guest's state (for every unexpected exit and failure). Diagnostics only: a field
    /// that cannot be read shows as `<vmread failed: ...>`.
    pub fn dump_state(&self) {
        let r = &self.vcpu.regs;
        log::error!(
            "guest state: rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} (shadow {:#x}) cr3={:#x} cr4={:#x} (shadow {:#x}) efer={:#x}",
            show(vmcs::GUEST_RIP),
            show(vmcs::GUEST_RSP),
            show(vmcs::GUEST_RFLAGS),
            show(vmcs::GUEST_CR0),
            show(vmcs::CR0_READ_SHADOW),
            show(vmcs::GUEST_CR3),
            show(vmcs::GUEST_CR4),
            show(vmcs::CR4_READ_SHADOW),
            show(vmcs::GUEST_IA32_EFER)
        );
        log::error!(
            "guest state: cs={:#x} base={:#x} ar={:#x} ss={:#x} ar={:#x} gdtr={:#x}/{:#x} idtr={:#x}/{:#x} activity={} interruptibility={:#x}",
            show(vmcs::GUEST_CS_SEL),
            show(vmcs::GUEST_CS_BASE),
            show(vmcs::GUEST_CS_AR),
            show(vmcs::GUEST_SS_SEL),
            show(vmcs::GUEST_SS_AR),
            show(vmcs::GUEST_GDTR_BASE),
            show(vmcs::GUEST_GDTR_LIMIT),
            show(vmcs::GUEST_IDTR_BASE),
            show(vmcs::GUEST_IDTR_LIMIT),
            show(vmcs::GUEST_ACTIVITY_STATE),
            show(vmcs::GUEST_INTERRUPTIBILITY)
        );
        log::error!(
            "guest state: rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x} r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}",
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15
        );
        log::error!(
            "exit: reason={:#x} qualification={:#x} interruption-info={:#x} idt-vectoring={:#x} instruction-length={} instruction-error={}",
            show(vmcs::EXIT_REASON),
            show(vmcs::EXIT_QUALIFICATION),
            show(vmcs::EXIT_INTERRUPTION_INFO),
            show(vmcs::IDT_VECTORING_INFO),
            show(vmcs::EXIT_INSTRUCTION_LENGTH),
            show(vmcs::VM_INSTRUCTION_ERROR)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::delivers_error_code;

    #[test]
    fn error_codes_follow_the_mode() {
        // Protected mode: exactly the architectural set.
        for v in 0u8..32 {
            let want = matches!(v, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21);
            assert_eq!(delivers_error_code(v, true), want, "vector {v}");
        }
        // Real mode: never (VM entry fails with error 7 otherwise).
        assert!((0u8..=255).all(|v| !delivers_error_code(v, false)));
    }
}
