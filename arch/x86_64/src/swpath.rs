//! The x86 software path for stores to pages with protected bytes (ROE pages under `skip`,
//! chunk pages): **shadow page + one MTF single-step**, no instruction decoder.
//!
//! On an EPT write violation the core classifies (`Guest::handle_fault`): a `roe`/`roe-chunk`
//! violation whose skip action is `Advance`, or `FaultKind::ShadowStep` (an unprotected byte
//! of a chunk page). Bulwark then snapshots the registers, copies the page P into a scratch
//! frame S of its own (allocated at VM creation from Bulwark's heap, never guest-reachable),
//! points gpa(P) at S writable through the core (`Guest::sync_ept_shadow`, one INVEPT), sets
//! the monitor-trap flag and re-enters. The instruction runs against S (more pages are
//! shadowed if it faults on them too: straddling stores, `rep` crossing pages). On the MTF
//! exit S is compared with P under the page's protected-byte mask: only unprotected bytes are
//! ever copied back, so no protected byte of P changes, not even for one instruction. Then
//! gpa(P) is re-derived (back to P, read-only), INVEPT, MTF cleared.
//! See `docs/x86_64-software-path.md`.
//!
//! A child module of `vm` (it uses `Vm`'s private helpers); the guest's RIP still moves only in
//! `Vm::apply`.

use bulwark_abi::console::{reason, STATUS_BULWARK_FAILURE};
use bulwark_core::addr::{GpaRange, GuestPhysAddr, GuestVirtAddr, HostPhysAddr, PAGE_SIZE};
use bulwark_core::exit::{Access, Action, MemFault};
use bulwark_core::gwalk::x86::X86Walker;
use bulwark_core::gwalk::GuestWalker;
use bulwark_core::physmem::PhysMem;
use bulwark_core::shadow::{self, PAGE};
use bulwark_core::violation::ViolationPolicy;

use super::{stop, Step, Vm};
use crate::mem::{EptFlush, GuestRam};
use crate::vcpu::GuestRegs;
use crate::vmcs;
use crate::vmx::{show, vmread, vmwrite, VmxError};

/// Pages one instruction may write through the software path (a straddling store needs 2, a
/// `rep movs` between two chunk pages crossing a boundary 3-4).
pub const MAX_SHADOWS: usize = 4;
/// Basic exit reason of a monitor-trap-flag VM exit.
pub const EXIT_MTF: u16 = 37;
/// Primary processor-based control: monitor trap flag.
const MONITOR_TRAP_FLAG: u64 = 1 << 27;
/// Single-step with the monitor-trap flag where the CPU offers it (see `SwPath::new`).
const USE_MTF: bool = false;
/// RFLAGS.TF: the single-step fallback where the CPU lacks the monitor-trap flag.
const RFLAGS_TF: u64 = 1 << 8;
/// Exception vector of a debug exception.
const VECTOR_DB: u64 = 1;
/// RFLAGS.IF: cleared for the step (no external interrupt is delivered into it).
const RFLAGS_IF: u64 = 1 << 9;
/// Interruptibility state: blocking by STI (bit 0), by MOV SS (bit 1), by NMI (bit 3).
const BLOCK_STI_MOVSS: u64 = 3;
const BLOCK_NMI: u64 = 1 << 3;
/// Pin-based control: activate the VMX-preemption timer (bounds a step in time).
const PIN_PREEMPTION_TIMER: u64 = 1 << 6;
/// VMCS field: VMX-preemption timer value (32-bit guest-state field).
const PREEMPTION_TIMER_VALUE: u32 = 0x482e;
/// Basic exit reason: the VMX-preemption timer expired.
const EXIT_PREEMPTION_TIMER: u16 = 52;
/// Preemption-timer ticks one step may run between two exits (the timer is reloaded on every
/// VM entry; a stepped instruction takes a handful of ticks, so this only fires for a step that
/// escaped).
const STEP_TIMER_TICKS: u64 = 1 << 22;
/// VM exits one step may take before it is declared escaped (under inject a `rep` string
/// instruction traps after every iteration and stays one step: at most 4 shadowed pages of
/// byte iterations, plus iterations on pages that need no shadow).
const MAX_STEP_EXITS: u32 = 1 << 16;

/// A VMX instruction failed: the run stops (`Vm::vmx_failed`).
type VmxResult<T> = Result<T, VmxError>;

/// Shadows pointed back at their own frames: `Ok(())` when every one is (or there was none),
/// `Err(stop)` when one could not be: the guest must not run with a writable alias, the run
/// stops with `stop`.
type Restored = Result<(), Step>;

/// Registers the instruction may change, for the rollback under `inject`.
#[derive(Clone, Copy, Default)]
struct Snapshot {
    regs: GuestRegs,
    rip: u64,
    rsp: u64,
    rflags: u64,
    interruptibility: u64,
    /// ES, CS, SS, DS, FS, GS: selector, base, limit, access rights (review C5: a far CALL
    /// through a gate or a privilege-changing transfer whose store is rolled back must not
    /// leave the guest running its old RIP/RSP with the new CS/SS).
    segs: [Segment; 6],
}

/// One segment register as the VMCS holds it.
#[derive(Clone, Copy, Default)]
struct Segment {
    sel: u64,
    base: u64,
    limit: u64,
    ar: u64,
}

/// VMCS field of segment `i` (0 = ES .. 5 = GS) for the ES field `es` (fields are 2 apart).
fn seg_field(es: u32, i: usize) -> u32 {
    es + 2 * i as u32
}

fn read_segs() -> VmxResult<[Segment; 6]> {
    let mut segs = [Segment::default(); 6];
    for (i, g) in segs.iter_mut().enumerate() {
        *g = Segment {
            sel: vmread(seg_field(vmcs::GUEST_ES_SEL, i))?,
            base: vmread(seg_field(vmcs::GUEST_ES_BASE, i))?,
            limit: vmread(seg_field(vmcs::GUEST_ES_LIMIT, i))?,
            ar: vmread(seg_field(vmcs::GUEST_ES_AR, i))?,
        };
    }
    Ok(segs)
}

/// One shadowed page: guest page base and the scratch frame that backs it now.
#[derive(Clone, Copy)]
struct Shadowed {
    page: GuestPhysAddr,
    slot: usize,
}

/// The step in progress.
struct Stepping {
    snapshot: Snapshot,
    /// The first fault of the step (the core's `shadow_step_done` reports against it).
    first: MemFault,
    /// A violation was already logged for this step (protected faulting byte, skip).
    violation_logged: bool,
    shadows: [Option<Shadowed>; MAX_SHADOWS],
    /// Exception bitmap before the step (TF mode intercepts every exception during it).
    exception_bitmap: u64,
    /// What [`arm`] changed besides TF / MTF (undone by [`disarm`]).
    armed: Armed,
    /// VM exits taken while this step was armed (bounded by [`MAX_STEP_EXITS`]).
    exits: u32,
}

/// The guest state [`arm`] changed so that nothing but the stepped instruction runs while a
/// shadow is mapped: no external interrupt (IF cleared), no NMI (blocking by NMI set), no
/// STI / MOV-SS shadow left over (it would block the single-step trap's consistency check and
/// ends with the stepped instruction anyway), the preemption timer armed.
#[derive(Clone, Copy, Default)]
struct Armed {
    cleared_if: bool,
    set_nmi_block: bool,
    timer: bool,
}

/// Per-vCPU software-path state.
pub struct SwPath {
    frames: [Option<HostPhysAddr>; MAX_SHADOWS],
    step: Option<Stepping>,
    /// Step with the monitor-trap flag; without it (Bochs `corei7_skylake_x` does not offer
    /// it), with RFLAGS.TF and a #DB intercept.
    mtf_allowed: bool,
    /// The CPU can activate the VMX-preemption timer (pin-based allowed-1 bit 6).
    timer_allowed: bool,
    /// Completed steps, for the end-of-run counters.
    pub steps: u64,
}

impl SwPath {
    /// Allocate the scratch frames (from Bulwark's own heap). Missing frames or a CPU without
    /// the monitor-trap flag leave the path unavailable: a store that needs it stops the run.
    pub fn new(frames: &mut dyn PhysMem, procbased_cap: u64, pinbased_cap: u64) -> Self {
        let mut f = [None; MAX_SHADOWS];
        for slot in f.iter_mut() {
            *slot = frames.alloc_frame().ok();
        }
        SwPath {
            frames: f,
            step: None,
            // Observed under Bochs 2.7 `tigerlake` (which enumerates the control): after
            // setting it, no MTF exit followed the stepped instruction, so the shadow stayed
            // mapped. RFLAGS.TF with a #DB intercept works on every model, so it is the
            // default; set USE_MTF once MTF is verified on the target CPU.
            mtf_allowed: USE_MTF && (procbased_cap >> 32) & MONITOR_TRAP_FLAG != 0,
            timer_allowed: (pinbased_cap >> 32) & PIN_PREEMPTION_TIMER != 0,
            steps: 0,
        }
    }

    pub fn available(&self) -> bool {
        self.frames.iter().all(Option::is_some)
    }

    /// How this CPU single-steps ("MTF" or "TF").
    pub fn mode(&self) -> &'static str {
        if self.mtf_allowed {
            "MTF"
        } else {
            "TF"
        }
    }

    /// What bounds a step in time besides its exits ("the preemption timer" or "exits only").
    pub fn bound(&self) -> &'static str {
        if self.timer_allowed {
            "the VMX-preemption timer"
        } else {
            "exit count only (no VMX-preemption timer)"
        }
    }

    pub fn stepping(&self) -> bool {
        self.step.is_some()
    }
}

/// A 4 KiB page of guest RAM or a scratch frame, by its (identity-mapped) physical address.
///
/// # Safety
/// `addr` must be a page-aligned, identity-mapped 4 KiB frame that no other live reference
/// covers (guest RAM while the only vCPU is stopped in Bulwark, or one of Bulwark's scratch
/// frames).
unsafe fn page_ref<'x>(addr: u64) -> &'x [u8; PAGE] {
    // SAFETY: the caller's contract.
    unsafe { &*(addr as *const [u8; PAGE]) }
}

/// # Safety
/// As [`page_ref`], and nothing else reads or writes the frame while the reference lives.
unsafe fn page_mut<'x>(addr: u64) -> &'x mut [u8; PAGE] {
    // SAFETY: the caller's contract.
    unsafe { &mut *(addr as *mut [u8; PAGE]) }
}

/// Arm the single step for the next instruction: the monitor-trap flag, or RFLAGS.TF with
/// every exception intercepted (the #DB trap ends the step; any other exception ends it too
/// and is delivered to the guest afterwards).
///
/// Review A1: an event delivered during a TF step clears TF, so the guest's handler would run
/// untraced while the shadow is mapped writable. So nothing but the stepped instruction may
/// run: RFLAGS.IF is cleared (no external interrupt), blocking by NMI is set (no NMI), and the
/// VMX-preemption timer (where offered) bounds the time to the next exit. Exceptions the
/// instruction raises exit (bitmap all ones) before their delivery; an event whose delivery
/// itself faults on a page with protected bytes is never stepped (`delivery_fault`).
///
/// Review C1: with TF set, a VM entry in an STI / MOV-SS shadow would need BS in the pending
/// debug exceptions. Instead the shadow is cleared: it would end with the stepped instruction
/// anyway, and with IF clear and NMIs blocked nothing it blocks can arrive before it. (Not
/// restored: the instruction in the shadow completes, or under inject the snapshot's
/// interruptibility is restored.)
fn arm(mtf: bool, timer: bool) -> VmxResult<Armed> {
    let mut armed = Armed::default();
    let intr = vmread(vmcs::GUEST_INTERRUPTIBILITY)?;
    let mut new_intr = intr & !BLOCK_STI_MOVSS;
    if intr & BLOCK_NMI == 0 {
        new_intr |= BLOCK_NMI;
        armed.set_nmi_block = true;
    }
    if new_intr != intr {
        vmwrite(vmcs::GUEST_INTERRUPTIBILITY, new_intr)?;
    }
    let f = vmread(vmcs::GUEST_RFLAGS)?;
    armed.cleared_if = f & RFLAGS_IF != 0;
    let mut nf = f & !RFLAGS_IF;
    if mtf {
        set_mtf(true)?;
    } else {
        nf |= RFLAGS_TF;
        vmwrite(vmcs::EXCEPTION_BITMAP, 0xffff_ffff)?;
    }
    vmwrite(vmcs::GUEST_RFLAGS, nf)?;
    if timer {
        let p = vmread(vmcs::PIN_BASED_CONTROLS)?;
        vmwrite(vmcs::PIN_BASED_CONTROLS, p | PIN_PREEMPTION_TIMER)?;
        vmwrite(PREEMPTION_TIMER_VALUE, STEP_TIMER_TICKS)?;
        armed.timer = true;
    }
    Ok(armed)
}

/// Undo [`arm`]: the guest's own TF comes back from the snapshot; IF comes back set if arm
/// cleared it and the instruction left it clear (an instruction that set IF itself keeps its
/// effect); blocking by NMI is lifted if arm set it; every other flag stays as the instruction
/// left it.
fn disarm(mtf: bool, st: &Stepping) -> VmxResult<()> {
    let f = vmread(vmcs::GUEST_RFLAGS)?;
    let mut nf = f;
    if mtf {
        set_mtf(false)?;
    } else {
        nf = (nf & !RFLAGS_TF) | (st.snapshot.rflags & RFLAGS_TF);
        vmwrite(vmcs::EXCEPTION_BITMAP, st.exception_bitmap)?;
        // A single-step trap still pending (Bochs saves BS on a mid-instruction exit) belongs
        // to the step, not to the guest.
        let pd = vmread(vmcs::GUEST_PENDING_DEBUG)?;
        if pd & (1 << 14) != 0 && st.snapshot.rflags & RFLAGS_TF == 0 {
            vmwrite(vmcs::GUEST_PENDING_DEBUG, pd & !(1 << 14))?;
        }
    }
    if st.armed.cleared_if && nf & RFLAGS_IF == 0 {
        nf |= RFLAGS_IF;
    }
    if nf != f {
        vmwrite(vmcs::GUEST_RFLAGS, nf)?;
    }
    if st.armed.set_nmi_block {
        let intr = vmread(vmcs::GUEST_INTERRUPTIBILITY)?;
        if intr & BLOCK_NMI != 0 {
            vmwrite(vmcs::GUEST_INTERRUPTIBILITY, intr & !BLOCK_NMI)?;
        }
    }
    if st.armed.timer {
        let p = vmread(vmcs::PIN_BASED_CONTROLS)?;
        vmwrite(vmcs::PIN_BASED_CONTROLS, p & !PIN_PREEMPTION_TIMER)?;
    }
    Ok(())
}

fn set_mtf(on: bool) -> VmxResult<()> {
    let p = vmread(vmcs::PRIMARY_PROC_CONTROLS)?;
    let v = if on {
        p | MONITOR_TRAP_FLAG
    } else {
        p & !MONITOR_TRAP_FLAG
    };
    if v != p {
        vmwrite(vmcs::PRIMARY_PROC_CONTROLS, v)?;
    }
    Ok(())
}

fn fail(why: &str) -> Step {
    log::error!("software path: {why}");
    stop(STATUS_BULWARK_FAILURE, reason::UNHANDLED_EXIT)
}

impl<const XO: bool> Vm<'_, XO> {
    /// A write fault the software path completes (see the module docs). `violation_logged`:
    /// the core already logged a violation for it (skip). Shadows the page and re-enters with
    /// the monitor-trap flag set.
    pub(super) fn sw_fault(&mut self, f: &MemFault, violation_logged: bool) -> VmxResult<Step> {
        self.sw_fault_with(f, violation_logged, violation_logged)
    }

    /// A write EPT violation on a guest paging structure (the CPU's own page walk; with EPT
    /// A/D every walk access counts as a write, issue 12 breach 4). `None`: not Bulwark's
    /// business here (not RAM, or a page that accepts writes: the core handles it as usual).
    ///
    /// * A table on a frame the guest may not read: the walk's read is refused: an `attr`
    ///   read violation (the CPU checks R before it would set a flag).
    /// * A write-protected table (ROE page, chunk page, attribute without W): the instruction
    ///   is stepped against a shadow copy like any store, **without** a violation up front
    ///   (a walk whose A/D bits are already set changes nothing and is not a violation); at
    ///   the end of the step a changed protected byte (an A/D update into locked bytes) is a
    ///   violation of that page's kind with the policy's action, and only unprotected bytes
    ///   are ever merged back: locked page-table bytes never change, A/D included.
    pub(super) fn sw_paging_structure(&mut self, f: &MemFault) -> VmxResult<Option<Step>> {
        let page = f.gpa.page_base();
        let end = page.as_u64().saturating_add(PAGE_SIZE);
        if f.access != Access::Write || !self.plan.is_ram(page.as_u64(), end) {
            return Ok(None);
        }
        let st = self.guest.lock().store().state(page.frame());
        if !st.allowed.read() {
            let r = MemFault {
                access: Access::Read,
                ..*f
            };
            return self.decide(super::Exit::MemFault(r)).map(Some);
        }
        if !st.write_protected() {
            return Ok(None);
        }
        log::debug!(
            "software path: page walk of gva={:#x} touches write-protected paging structure gpa={:#x}: stepping",
            f.gva.map(|g| g.as_u64()).unwrap_or(0),
            f.gpa.as_u64()
        );
        let step = self.sw_fault_with(f, false, !st.allowed.write())?;
        // Under inject a walk that turns out to change a locked byte must leave the whole
        // instruction without effect, as the CPU's refused walk would (it faults before the
        // data access): the page the instruction accesses is shadowed too, so its store can
        // be discarded with the rest (under skip the access completes anyway).
        if matches!(step, Step::Do(Action::Retry))
            && self.guest.lock().policy() == ViolationPolicy::Inject
        {
            if let Some(gva) = f.gva {
                self.sw_shadow_linear(gva.as_u64())?;
            }
        }
        Ok(Some(step))
    }

    /// [`Vm::sw_fault`]; `discard_ok`: the page may be one whose host attributes refuse
    /// writes (nothing of its shadow is merged back).
    fn sw_fault_with(
        &mut self,
        f: &MemFault,
        violation_logged: bool,
        discard_ok: bool,
    ) -> VmxResult<Step> {
        if !self.sw.available() {
            return Ok(fail("its scratch frames could not be allocated"));
        }
        let page = f.gpa.page_base();
        let end = page.as_u64().saturating_add(PAGE_SIZE);
        if !self.plan.is_ram(page.as_u64(), end) || end > 1 << 32 {
            return Ok(fail("the faulting page is not guest RAM Bulwark can reach"));
        }
        if vmread(vmcs::IDT_VECTORING_INFO)? & (1 << 31) != 0 {
            // `delivery_fault` handles these before the core is asked; never step a delivery.
            return self.sw_abort_fail("write fault during event delivery reached the single step");
        }
        if self.sw.step.is_none() {
            let snapshot = Snapshot {
                regs: self.vcpu.regs,
                rip: vmread(vmcs::GUEST_RIP)?,
                rsp: vmread(vmcs::GUEST_RSP)?,
                rflags: vmread(vmcs::GUEST_RFLAGS)?,
                interruptibility: vmread(vmcs::GUEST_INTERRUPTIBILITY)?,
                segs: read_segs()?,
            };
            let exception_bitmap = vmread(vmcs::EXCEPTION_BITMAP)?;
            let armed = arm(self.sw.mtf_allowed, self.sw.timer_allowed)?;
            self.sw.step = Some(Stepping {
                snapshot,
                first: *f,
                violation_logged: false,
                shadows: [None; MAX_SHADOWS],
                exception_bitmap,
                armed,
                exits: 0,
            });
        }
        let Some(st) = self.sw.step.as_mut() else {
            return Ok(fail("lost the step state"));
        };
        st.violation_logged |= violation_logged;
        if !self.sw.mtf_allowed {
            // Observed in Bochs: an EPT violation exit in the middle of a TF-stepped
            // instruction (a store straddling into a second shadowed page) saves the pending
            // single-step trap (BS) in the pending-debug-exceptions field, and the next entry
            // delivers that #DB before the instruction re-executes. The instruction has not
            // completed: drop the pending trap; TF traps again after it completes.
            let pd = vmread(vmcs::GUEST_PENDING_DEBUG)?;
            if pd & (1 << 14) != 0 {
                vmwrite(vmcs::GUEST_PENDING_DEBUG, pd & !(1 << 14))?;
            }
        }
        if st.shadows.iter().flatten().any(|s| s.page == page) {
            // The shadow is writable: a second write fault on it means the tables disagree.
            return self.sw_abort_fail("write fault on a page that is already shadowed");
        }
        let first = st.shadows.iter().all(Option::is_none);
        if let Err(why) = self.sw_shadow(page, discard_ok)? {
            return self.sw_abort_fail(why);
        }
        // Under inject a store that turns out to change protected bytes must write nothing at
        // all, also not its bytes on a neighbouring page that needs no exit (a store
        // straddling from a chunk page into an ordinary page). A store is at most 64 bytes:
        // when the fault is that close to a page edge, shadow the virtual neighbour too, so
        // its bytes can be discarded as well. (Under skip they are written anyway.)
        if first && !violation_logged && self.guest.lock().policy() == ViolationPolicy::Inject {
            if let Some(gva) = f.gva {
                let off = gva.as_u64() & (PAGE_SIZE - 1);
                let mut near = [None, None];
                if off < 64 {
                    near[0] = gva.as_u64().checked_sub(PAGE_SIZE);
                }
                if off >= PAGE_SIZE - 64 {
                    near[1] = gva.as_u64().checked_add(PAGE_SIZE);
                }
                for v in near.into_iter().flatten() {
                    self.sw_shadow_linear(v)?;
                }
            }
        }
        Ok(Step::Do(Action::Retry))
    }

    /// Abort the step (nothing merged) and stop the run with `why`; a shadow that cannot be
    /// restored stops it too (`sw_abort` logs that).
    fn sw_abort_fail(&mut self, why: &str) -> VmxResult<Step> {
        let restored = self.sw_abort()?;
        let stop = fail(why);
        Ok(match restored {
            Ok(()) => stop,
            Err(s) => s,
        })
    }

    /// Under inject: shadow the page that linear address `v` maps to now (if it is not yet),
    /// so that whatever the stepped instruction writes there can be discarded with the rest.
    fn sw_shadow_linear(&mut self, v: u64) -> VmxResult<()> {
        let walker = X86Walker::new(self.paging_state()?);
        let ram = GuestRam { plan: self.plan };
        // Walked as the guest may read its tables (issue 12): a page whose tables it may not
        // read is not shadowed (the access faults by itself).
        let walked = {
            let g = self.guest.lock();
            walker.translate(&ram.checked(g.store()), GuestVirtAddr::new(v))
        };
        let Ok(t) = walked else {
            return Ok(());
        };
        let np = t.gpa.page_base();
        let known = self
            .sw
            .step
            .as_ref()
            .is_some_and(|st| st.shadows.iter().flatten().any(|s| s.page == np));
        if !known {
            // A page that cannot be shadowed (not RAM, read-only) is left: the store faults
            // there by itself if it reaches it.
            if let Err(why) = self.sw_shadow(np, false)? {
                log::debug!(
                    "software path: neighbour gpa={:#x} not shadowed: {why}",
                    np.as_u64()
                );
            }
        }
        Ok(())
    }

    /// Copy guest page `page` into a free scratch frame and map the frame at `page`, writable.
    /// `discard_ok`: the page may be one whose host attributes refuse writes (review C2: an
    /// `attr` write violation under skip); nothing of its shadow is ever merged back, and a
    /// page the guest may not read is shadowed by zeros (the instruction learns nothing).
    fn sw_shadow(
        &mut self,
        page: GuestPhysAddr,
        discard_ok: bool,
    ) -> VmxResult<Result<(), &'static str>> {
        let end = page.as_u64().saturating_add(PAGE_SIZE);
        if !self.plan.is_ram(page.as_u64(), end) || end > 1 << 32 {
            return Ok(Err("the page is not guest RAM Bulwark can reach"));
        }
        let frames = self.sw.frames;
        let Some(st) = self.sw.step.as_mut() else {
            return Ok(Err("no step in progress"));
        };
        let used: [bool; MAX_SHADOWS] =
            core::array::from_fn(|i| st.shadows.iter().flatten().any(|s| s.slot == i));
        let Some(slot) = (0..MAX_SHADOWS).find(|i| !used.get(*i).copied().unwrap_or(true)) else {
            return Ok(Err("one instruction writes more pages with protected bytes than the software path shadows"));
        };
        let Some(Some(hpa)) = frames.get(slot).copied() else {
            return Ok(Err("scratch frame missing"));
        };
        let Some(entry) = st.shadows.iter_mut().find(|s| s.is_none()) else {
            return Ok(Err("no free shadow entry"));
        };
        let allowed = self.guest.lock().store().state(page.frame()).allowed;
        let discard = !(allowed.read() && allowed.write());
        if discard && !discard_ok {
            return Ok(Err("the page's host attributes refuse writes"));
        }
        if allowed.read() {
            // SAFETY: `page` is 4 KiB of guest RAM below 4 GiB (checked above; identity
            // mapped) and the only vCPU is stopped; `hpa` is one of Bulwark's scratch frames,
            // which nothing else references (the guest reaches it only through the EPT leaf
            // set below).
            unsafe { page_mut(hpa.as_u64()).copy_from_slice(page_ref(page.as_u64())) };
        } else {
            // SAFETY: as above, for the scratch frame alone.
            unsafe { page_mut(hpa.as_u64()).fill(0) };
        }
        let mut flush = EptFlush {
            caps: &self.caps,
            eptp: self.ept.eptp(),
            flushes: 0,
            failed: None,
        };
        let r = if discard {
            self.guest.lock().sync_ept_shadow_discard(
                &mut self.frames,
                &mut self.ept,
                page,
                hpa,
                &mut flush,
            )
        } else {
            self.guest.lock().sync_ept_shadow(
                &mut self.frames,
                &mut self.ept,
                page,
                hpa,
                &mut flush,
            )
        };
        if let Some(e) = flush.failed {
            return Err(e);
        }
        if let Err(e) = r {
            log::debug!(
                "software path: shadowing gpa={:#x} refused: {e:?}",
                page.as_u64()
            );
            return Ok(Err("the page could not be shadowed"));
        }
        *entry = Some(Shadowed { page, slot });
        log::debug!(
            "software path: gpa={:#x} shadowed by {:#x} (slot {slot}), stepping",
            page.as_u64(),
            hpa.as_u64()
        );
        Ok(Ok(()))
    }

    /// An exception exit (TF mode intercepts them all during a step): the #DB single-step
    /// trap ends the step like an MTF exit; any other exception means the instruction did not
    /// complete (or an earlier `rep` iteration did): end the step the same way (merging is
    /// still correct: only unprotected bytes), then deliver the exception to the guest.
    pub(super) fn sw_exception(&mut self) -> VmxResult<Step> {
        let info = vmread(vmcs::EXIT_INTERRUPTION_INFO)?;
        let vector = info & 0xff;
        let kind = (info >> 8) & 7;
        let qualification = vmread(vmcs::EXIT_QUALIFICATION)?;
        let single_step = vector == VECTOR_DB && kind == 3 && qualification & (1 << 14) != 0;
        log::debug!(
            "software path: exception exit info={info:#x} qualification={qualification:#x} rip={:#x}",
            vmread(vmcs::GUEST_RIP)?
        );
        let done = self.sw_step_end(single_step)?;
        if single_step || !matches!(done, Step::Do(Action::Retry)) {
            return Ok(done);
        }
        // Re-deliver the exception the guest raised (CR2 for #PF: a VM exit does not load it).
        if vector == 14 {
            let cr2 = qualification;
            // SAFETY: CR2 only holds the last page-fault address; Bulwark never reads it, and the
            // guest sees it as the address of the #PF delivered on this entry.
            unsafe { core::arch::asm!("mov cr2, {}", in(reg) cr2) };
        }
        let error = if info & (1 << 11) != 0 {
            Some(vmread(vmcs::EXIT_INTERRUPTION_ERROR_CODE)? as u32)
        } else {
            None
        };
        if kind == 3 {
            return Ok(Step::Exception {
                vector: vector as u8,
                error,
            });
        }
        // Software exceptions (INT3, INTO) and the rest: re-inject as reported.
        vmwrite(vmcs::ENTRY_INTERRUPTION_INFO, info & 0x8000_0fff)?;
        if let Some(e) = error {
            vmwrite(vmcs::ENTRY_EXCEPTION_ERROR_CODE, u64::from(e))?;
        }
        vmwrite(
            vmcs::ENTRY_INSTRUCTION_LENGTH,
            vmread(vmcs::EXIT_INSTRUCTION_LENGTH)?,
        )?;
        Ok(Step::Do(Action::Retry))
    }

    /// The MTF exit.
    pub(super) fn sw_mtf(&mut self) -> VmxResult<Step> {
        self.sw_step_end(true)
    }

    /// The bytes of `page` a step must never write back: every byte of a page whose host
    /// attributes refuse writes, else the core's protected bytes (ROE page, chunk bits).
    fn sw_mask(&self, page: GuestPhysAddr) -> [u64; PAGE / 64] {
        let g = self.guest.lock();
        if !g.store().state(page.frame()).allowed.write() {
            return [u64::MAX; PAGE / 64];
        }
        g.protected_page(page.frame())
    }

    /// The first protected byte the instruction changed, over every shadowed page.
    fn sw_changed(&self, st: &Stepping) -> Option<GuestPhysAddr> {
        for s in st.shadows.iter().flatten() {
            let Some(Some(hpa)) = self.sw.frames.get(s.slot).copied() else {
                continue;
            };
            let mask = self.sw_mask(s.page);
            // SAFETY: as in `sw_shadow`: a guest RAM page (checked there) and Bulwark's frame;
            // the vCPU is stopped.
            let (p, c) = unsafe { (page_ref(s.page.as_u64()), page_ref(hpa.as_u64())) };
            if let Some(off) = shadow::first_changed_protected(p, c, &mask) {
                return Some(GuestPhysAddr::new(s.page.as_u64() + off as u64));
            }
        }
        None
    }

    /// The end of a step (MTF exit, or the #DB trap in TF mode; `completed`: a single-step
    /// trap rather than another exception): decide, merge, restore.
    fn sw_step_end(&mut self, completed: bool) -> VmxResult<Step> {
        // Under inject a `rep` string instruction is one store: the single step traps after
        // every iteration (RIP still at the instruction); while no protected byte has changed,
        // keep the shadows and step on, so that a later iteration that changes one rolls the
        // whole instruction back (nothing written, registers as before it).
        if completed && self.guest.lock().policy() == ViolationPolicy::Inject {
            if let Some(st) = self.sw.step.as_ref() {
                if vmread(vmcs::GUEST_RIP)? == st.snapshot.rip && self.sw_changed(st).is_none() {
                    return Ok(Step::Do(Action::Retry));
                }
            }
        }
        let Some(st) = self.sw.step.take() else {
            set_mtf(false)?;
            log::warn!("monitor-trap-flag exit without a software-path step: ignored");
            return Ok(Step::Do(Action::Retry));
        };
        disarm(self.sw.mtf_allowed, &st)?;
        self.sw.steps += 1;
        let changed = self.sw_changed(&st);
        let action = if st.violation_logged {
            // Only skip gets here (inject and halt end the step at the fault).
            Action::Advance
        } else {
            let d = self
                .guest
                .lock()
                .shadow_step_done(self.vcpu.id, &st.first, changed);
            d.action
        };
        match action {
            Action::Advance => {
                if completed {
                    self.sw_fix_pushf(&st)?;
                }
                for s in st.shadows.iter().flatten() {
                    let Some(Some(hpa)) = self.sw.frames.get(s.slot).copied() else {
                        continue;
                    };
                    let mask = self.sw_mask(s.page);
                    // SAFETY: as above; the vCPU is stopped, so this is the only access.
                    let (p, c) = unsafe { (page_mut(s.page.as_u64()), page_ref(hpa.as_u64())) };
                    shadow::merge_unprotected(p, c, &mask);
                }
                if let Err(s) = self.sw_unshadow(&st)? {
                    return Ok(s);
                }
                // The instruction has completed: its register effects stand, RIP is already
                // past it. Re-enter where the guest is now.
                Ok(Step::Do(Action::Retry))
            }
            other => {
                self.sw_restore(&st)?;
                if let Err(s) = self.sw_unshadow(&st)? {
                    return Ok(s);
                }
                Ok(Step::Do(other))
            }
        }
    }

    /// One byte of guest memory at linear `lin` as the guest sees it now: through the guest's
    /// paging (tables read only where the guest may read them) and, where the page is shadowed
    /// by this step, from the shadow. `Some((byte, gpa))`; `None` when it does not translate,
    /// is not guest RAM, or the guest may neither read nor execute it.
    fn sw_guest_byte(&self, st: &Stepping, walker: &X86Walker, lin: u64) -> Option<(u8, u64)> {
        let ram = GuestRam { plan: self.plan };
        let t = {
            let g = self.guest.lock();
            walker.translate(&ram.checked(g.store()), GuestVirtAddr::new(lin))
        }
        .ok()?;
        let gpa = t.gpa.as_u64();
        let allowed = self.guest.lock().store().state(t.gpa.frame()).allowed;
        if !(allowed.read() || allowed.exec()) {
            return None;
        }
        if let Some(hpa) = self.sw_shadow_frame(st, t.gpa.page_base()) {
            // SAFETY: one of Bulwark's scratch frames (identity mapped), the vCPU is stopped.
            let b = unsafe { page_ref(hpa) }
                .get(t.gpa.page_offset() as usize)
                .copied()?;
            return Some((b, gpa));
        }
        ram.read_byte(gpa).ok().map(|b| (b, gpa))
    }

    /// The scratch frame shadowing guest page `page` in this step, if any.
    fn sw_shadow_frame(&self, st: &Stepping, page: GuestPhysAddr) -> Option<u64> {
        let s = st.shadows.iter().flatten().find(|s| s.page == page)?;
        self.sw
            .frames
            .get(s.slot)
            .copied()
            .flatten()
            .map(|h| h.as_u64())
    }

    /// Issue 12: the step must be invisible to the guest. [`arm`] sets RFLAGS.TF and clears
    /// IF for the stepped instruction; a stepped PUSHF/PUSHFD/PUSHFQ stores that image, and a
    /// later POPF would give the guest a #DB (and IF off). After a completed PUSHF the stored
    /// image's TF and IF (bits 0 and 1 of its second byte, at SS:RSP+1 for every operand size)
    /// are set back to the guest's own, in the shadow (so the merge copies the corrected
    /// byte) or, for an ordinary page, in place. (Interrupt and exception frames are never
    /// stepped: `delivery_fault`.)
    fn sw_fix_pushf(&mut self, st: &Stepping) -> VmxResult<()> {
        let long = self.long_mode_code()?;
        let walker = X86Walker::new(self.paging_state()?);
        let cs_base = if long { 0 } else { st.snapshot.segs[1].base };
        let mut opcode = None;
        for i in 0..15u64 {
            let lin = cs_base.wrapping_add(st.snapshot.rip.wrapping_add(i));
            let lin = if long { lin } else { lin & 0xffff_ffff };
            let Some((b, _)) = self.sw_guest_byte(st, &walker, lin) else {
                return Ok(());
            };
            match b {
                0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 => {}
                0x40..=0x4f if long => {}
                b => {
                    opcode = Some(b);
                    break;
                }
            }
        }
        if opcode != Some(0x9c) {
            return Ok(());
        }
        let ss_ar = vmread(vmcs::GUEST_SS_AR)?;
        let (ss_base, mask) = if long {
            (0, u64::MAX)
        } else if ss_ar & (1 << 14) != 0 {
            (vmread(vmcs::GUEST_SS_BASE)?, 0xffff_ffff)
        } else {
            (vmread(vmcs::GUEST_SS_BASE)?, 0xffff)
        };
        let lin = ss_base.wrapping_add(vmread(vmcs::GUEST_RSP)?.wrapping_add(1) & mask);
        let lin = if long { lin } else { lin & 0xffff_ffff };
        let Some((b, gpa)) = self.sw_guest_byte(st, &walker, lin) else {
            return Ok(());
        };
        let own = ((st.snapshot.rflags >> 8) & 3) as u8;
        let fixed = (b & !3) | own;
        if fixed == b {
            return Ok(());
        }
        let g = GuestPhysAddr::new(gpa);
        if let Some(hpa) = self.sw_shadow_frame(st, g.page_base()) {
            // SAFETY: one of Bulwark's scratch frames (identity mapped), the vCPU is stopped;
            // the merge decides afterwards whether this byte may reach the guest page.
            if let Some(x) = unsafe { page_mut(hpa) }.get_mut(g.page_offset() as usize) {
                *x = fixed;
            }
        } else if !self.guest.lock().store().state(g.frame()).write_protected() {
            // The CPU stored the image there directly (an ordinary page).
            if (GuestRam { plan: self.plan })
                .write_byte(gpa, fixed)
                .is_err()
            {
                log::debug!("software path: PUSHF flags image at {gpa:#x} not guest RAM");
            }
        }
        log::debug!(
            "software path: stepped PUSHF: flags image at {gpa:#x} given back the guest's TF/IF"
        );
        Ok(())
    }

    /// End a step without merging anything (inject/halt, or an error): registers back to the
    /// snapshot, every shadowed page back to its own frame. No step in progress: nothing to
    /// do. `Err(stop)` when a shadow could not be restored (review A5): the guest must not run
    /// with a writable alias.
    pub(super) fn sw_abort(&mut self) -> VmxResult<Restored> {
        let Some(st) = self.sw.step.take() else {
            return Ok(Ok(()));
        };
        disarm(self.sw.mtf_allowed, &st)?;
        self.sw_restore(&st)?;
        let r = self.sw_unshadow(&st)?;
        if r.is_err() {
            log::error!("software path: a shadowed page could not be restored: stopping the guest");
        }
        Ok(r)
    }

    /// Every VM exit while a step is armed passes here first (review A1). Expected: the #DB
    /// (or another exception) that ends the step, the MTF exit, an EPT violation of the
    /// stepped instruction. Anything else, or more than [`MAX_STEP_EXITS`] exits, means
    /// the guest ran more than the one instruction against the shadow: the step is aborted
    /// (shadows discarded) and the run stopped.
    pub(super) fn sw_guard(&mut self, basic: u16) -> VmxResult<Option<Step>> {
        let Some(st) = self.sw.step.as_mut() else {
            return Ok(None);
        };
        st.exits = st.exits.saturating_add(1);
        let too_many = st.exits > MAX_STEP_EXITS;
        let expected = matches!(
            basic,
            vmcs::reason::EXCEPTION_OR_NMI | EXIT_MTF | vmcs::reason::EPT_VIOLATION
        );
        if expected && !too_many {
            return Ok(None);
        }
        // Where the step escaped to (read before the rollback; for the log line only).
        let rip = show(vmcs::GUEST_RIP);
        let (first_ip, exits) = (st.first.ip.as_u64(), st.exits);
        if let Err(s) = self.sw_abort()? {
            return Ok(Some(s));
        }
        let why = if basic == EXIT_PREEMPTION_TIMER {
            "the preemption timer expired"
        } else if too_many {
            "too many exits"
        } else {
            "unexpected exit"
        };
        log::error!(
            "software path: the single step escaped ({why}: exit {} ({}) after {exits} exit(s) of a step begun at ip={first_ip:#x}, rip={rip:#x}): shadows discarded, stopping the guest",
            basic,
            vmcs::reason::name(basic)
        );
        self.dump_state();
        Ok(Some(stop(STATUS_BULWARK_FAILURE, reason::UNHANDLED_EXIT)))
    }

    /// A write fault during event delivery (IDT-vectoring information valid: an exception or
    /// interrupt frame pushed onto a page whose store state refuses writes). Never stepped
    /// (review A1: the delivery clears TF and the handler would run untraced against the
    /// writable shadow) and never skipped (no instruction to skip): the core logs a violation
    /// of the page's kind; `halt` stops the run; otherwise the event is replaced by the
    /// exception the CPU itself would raise for a fault during its delivery: #DF for a
    /// contributory exception or #PF being delivered, a triple fault (run stopped) for a #DF,
    /// #GP(0) for anything else (interrupts, NMI, INT n, benign exceptions). `None`: the page
    /// accepts writes; the fault is handled as usual.
    pub(super) fn delivery_fault(&mut self, f: &MemFault) -> VmxResult<Option<Step>> {
        let Some(d) = self.guest.lock().delivery_write_violation(self.vcpu.id, f) else {
            return Ok(None);
        };
        let info = vmread(vmcs::IDT_VECTORING_INFO)?;
        log::debug!(
            "software path: event delivery (idt-vectoring={info:#x}) writes gpa={:#x}: refused",
            f.gpa.as_u64()
        );
        if let Err(s) = self.sw_abort()? {
            return Ok(Some(s));
        }
        if let Action::Stop(_) = d.action {
            log::error!(
                "guest stopped: event delivery (idt-vectoring={info:#x}) writes protected guest memory gpa={:#x} ip={:#x}",
                f.gpa.as_u64(),
                f.ip.as_u64()
            );
            self.dump_state();
            return Ok(Some(Step::Do(d.action)));
        }
        let vector = info & 0xff;
        let hw_exception = (info >> 8) & 7 == 3;
        Ok(Some(match vector {
            8 if hw_exception => {
                log::error!(
                    "guest crashed: delivering #DF wrote protected guest memory gpa={:#x} (triple fault)",
                    f.gpa.as_u64()
                );
                self.dump_state();
                stop(STATUS_BULWARK_FAILURE, reason::GUEST_CRASH)
            }
            0 | 10..=14 if hw_exception => Step::Exception {
                vector: 8,
                error: Some(0),
            },
            _ => Step::Exception {
                vector: 13,
                error: Some(0),
            },
        }))
    }

    fn sw_restore(&mut self, st: &Stepping) -> VmxResult<()> {
        let s = &st.snapshot;
        self.vcpu.regs = s.regs;
        vmwrite(vmcs::GUEST_RIP, s.rip)?;
        vmwrite(vmcs::GUEST_RSP, s.rsp)?;
        vmwrite(vmcs::GUEST_RFLAGS, s.rflags)?;
        vmwrite(vmcs::GUEST_INTERRUPTIBILITY, s.interruptibility)?;
        for (i, g) in s.segs.iter().enumerate() {
            vmwrite(seg_field(vmcs::GUEST_ES_SEL, i), g.sel)?;
            vmwrite(seg_field(vmcs::GUEST_ES_BASE, i), g.base)?;
            vmwrite(seg_field(vmcs::GUEST_ES_LIMIT, i), g.limit)?;
            vmwrite(seg_field(vmcs::GUEST_ES_AR, i), g.ar)?;
        }
        Ok(())
    }

    /// Point every shadowed page back at its own frame with the derived rights. `Err(stop)`:
    /// one could not be restored (the run stops there). A shadow whose page range does not
    /// build is such a failure, never a success (it used to be a `?` on `None`, which this
    /// function's old `Option` return read as "all restored").
    fn sw_unshadow(&mut self, st: &Stepping) -> VmxResult<Restored> {
        for s in st.shadows.iter().flatten() {
            let Some(range) = GpaRange::new(s.page, PAGE_SIZE) else {
                log::error!(
                    "software path: shadowed gpa={:#x} does not form a page range",
                    s.page.as_u64()
                );
                return Ok(Err(stop(STATUS_BULWARK_FAILURE, reason::UNHANDLED_EXIT)));
            };
            if let Some(step) = self.rederive(range)? {
                return Ok(Err(step));
            }
        }
        Ok(Ok(()))
    }
}
