//! Stores the abort syndrome cannot describe, to pages holding ROE-protected bytes (chunk pages):
//! pairs (STP/STNP), SIMD (STR Q, ST1..ST4), atomics (SWP, LDADD, CAS, ...), DC ZVA, and any
//! store that crosses a page end. Design and decisions: docs/aarch64.md ("Chunk stores without
//! a syndrome").
//!
//! * **Software step**: the faulting page P is copied into a scratch frame S that Bulwark owns,
//!   stage 2 points ipa(P) at S (writable) through the core's engine (`Stage2::map`), and the
//!   guest executes the one instruction under the architectural software step (MDCR_EL2.TDE = 1,
//!   the guest's MDSCR_EL1.SS = 1, SPSR_EL2.SS = 1, the OS Lock and the OS Double Lock
//!   released if the guest left them set; guest A/I/F masked for the step). The step
//!   ends with a Software Step exception (EC 0x32) at EL2. A second faulting page of the same
//!   instruction (a store crossing into another protected page) gets the second scratch frame and
//!   the instruction is stepped again. Then S is compared with P under the protected-byte mask:
//!   unprotected changes are copied to P; a changed protected byte, or a protected faulting byte,
//!   is a violation decided by the core (`skip`: keep the instruction's register effects, drop the
//!   protected bytes; `inject`: registers and PC restored, synchronous external abort; `halt`).
//!   Stage 2 is re-derived from the core afterwards (one TLB function for every edit).
//!   Any other exit while the step is armed (not EC 0x32, not a write abort at the same PC) is an
//!   escaped step: the redirection is undone and the run stops.
//! * **Exclusives** (STXR/STLXR/STXP/STLXP) are not stepped: the exit clears the exclusive
//!   monitor, the stepped STXR would fail, and the guest's LDXR/STXR loop would retry forever.
//!   Bulwark decodes them and completes them as a **successful** store-exclusive (status register
//!   0), writing only unprotected bytes. One vCPU and no emulated DMA: no other observer can have
//!   written the location between the guest's LDXR and its STXR.

extern crate alloc;

use super::{Decoded, GuestMem, Stage2Tlb, Vm};
use bulwark_aarch64::esr::ec;
use bulwark_aarch64::inject::spsr_with_aif_of;
use bulwark_aarch64::insn::{decode_exclusive, Exclusive};
use bulwark_aarch64::mte;
use bulwark_aarch64::read_sysreg;
use bulwark_aarch64::tagmask::{first_changed_protected_tag, granule_protected, merged_tags, TAGS};
use bulwark_aarch64::vcpu::VcpuRegs;
use bulwark_aarch64::write_sysreg;
use bulwark_abi::console::{reason, STATUS_BULWARK_FAILURE};
use bulwark_core::addr::{GpaRange, GuestPhysAddr, GuestVirtAddr, HostPhysAddr, PAGE_SIZE};
use bulwark_core::exit::{Access, Action, Exit, MemFault, StopReason};
use bulwark_core::guest::GuestTranslate;
use bulwark_core::gwalk::arm64::{Arm64TranslationRegs, Arm64Walker};
use bulwark_core::gwalk::{GuestMemRead, WalkTranslate};
use bulwark_core::pt::{LeafAttrs, Perms};
use bulwark_core::shadow;

/// EC of a Software Step exception from a lower exception level.
pub const EC_SOFTSTEP_LOWER: u8 = 0x32;
/// MDSCR_EL1.SS: software step enable.
const MDSCR_SS: u64 = 1;
/// MDSCR_EL1.KDE: local (kernel) debug enable.
const MDSCR_KDE: u64 = 1 << 13;
/// MDSCR_EL1.MDE: monitor debug events (breakpoints, watchpoints) enable.
const MDSCR_MDE: u64 = 1 << 15;
/// OSLSR_EL1.OSLK: the OS Lock is set.
const OSLSR_OSLK: u64 = 1 << 1;
/// OSDLR_EL1.DLK: the OS Double Lock is set (with DBGPRCR_EL1.CORENPDRQ = 0 it disables every
/// debug exception, the software step included, where FEAT_DoubleLock is implemented; RAZ/WI
/// where it is not).
const OSDLR_DLK: u64 = 1;
/// MDCR_EL2.TDE: debug exceptions from EL1/EL0 are taken to EL2.
const MDCR_TDE: u64 = 1 << 8;
/// SPSR.SS: the step is active-not-pending on exception return.
const PSTATE_SS: u64 = 1 << 21;
/// SPSR A, I, F: SError, IRQ and FIQ masked for the stepped instruction.
const PSTATE_AIF: u64 = 0b111 << 6;
/// SCTLR_EL1.TCF (bits 41:40) and TCF0 (bits 39:38): tag checks at EL1 / EL0.
const SCTLR_TCF_TCF0: u64 = 0b1111 << 38;
/// Bytes in a page.
const PAGE: usize = PAGE_SIZE as usize;
/// Pages with protected bytes one stepped instruction may write: the widest contiguous store
/// (64 bytes) touches at most two. An instruction that writes a third such page (an SVE
/// scatter store, a store whose stage-1 descriptor update also lands on one) ends the run with a
/// clear line instead of cycling through the two scratch frames (issue 12).
pub const STEP_PAGES: usize = 2;
/// Exits one step may take: a write abort for each further page, then the Software Step
/// exception; more means something else is going on and the run stops.
const MAX_STEP_EXITS: u32 = 2 * STEP_PAGES as u32 + 2;
/// Software-path starts at one PC without a completed step in between before the run stops
/// (an instruction that keeps aborting the path would otherwise restart it forever).
pub const MAX_STEP_RESTARTS: u32 = 8;

/// One page redirected to a scratch frame for a step.
#[derive(Clone, Copy, Debug)]
pub struct StepPage {
    /// Page base (IPA).
    ipa: GuestPhysAddr,
    /// Page base (guest VA), when the fault gave one.
    va: Option<u64>,
    /// The page's Allocation Tags before the step, one per 16-byte granule (all 0 without EL2
    /// tag access).
    tags: [u8; TAGS],
}

/// A software step in progress.
#[derive(Clone, Debug)]
pub struct Step {
    /// The fault that started it.
    fault: MemFault,
    /// The guest's registers before the instruction (restored when the store is refused).
    saved: VcpuRegs,
    pages: [Option<StepPage>; STEP_PAGES],
    /// The guest's own MDSCR_EL1 and Bulwark's MDCR_EL2 before the step.
    mdscr: u64,
    mdcr: u64,
    /// The guest's OS Lock was set (debug exceptions, software step included, are disabled
    /// while it is): unlocked for the step, locked again afterwards.
    os_locked: bool,
    /// The guest's OS Double Lock was set: cleared for the step, set again afterwards.
    double_locked: bool,
    /// The fault was a stage-1 walk's descriptor update: HPFAR names the descriptor's page, but
    /// FAR is the instruction's VA, so neither the byte nor a VA of the page is known.
    s1ptw: bool,
    /// Exits taken while this step was armed (bounded by [`MAX_STEP_EXITS`]).
    exits: u32,
}

/// Clean and invalidate `[addr, addr+len)` to the point of coherency (a guest running with its
/// MMU off reads and writes memory uncached).
fn clean_inval(addr: u64, len: u64) {
    let line = 4u64 << ((read_sysreg!("ctr_el0") >> 16) & 0xf);
    let mut a = addr & !(line - 1);
    let end = addr.saturating_add(len);
    while a < end {
        // SAFETY: `a` lies in a scratch frame or guest RAM (identity-mapped at EL2); DC CIVAC
        // writes dirty lines back and drops them, it changes no data.
        unsafe { core::arch::asm!("dc civac, {}", in(reg) a, options(nostack)) }
        a += line;
    }
    bulwark_aarch64::sysreg::dsb_ish();
}

/// The Allocation Tags of the page at `page` (all 0 without EL2 tag access, see
/// `bulwark_aarch64::mte`).
fn read_tags(page: u64) -> [u8; TAGS] {
    let mut t = [0u8; TAGS];
    if mte::el2_tags() {
        for (g, v) in t.iter_mut().enumerate() {
            *v = mte::granule_tag(page + (g as u64) * mte::GRANULE);
        }
    }
    t
}

/// Set the Allocation Tags of the page at `page` (no-op without EL2 tag access).
fn write_tags(page: u64, tags: &[u8; TAGS]) {
    if mte::el2_tags() {
        for (g, v) in tags.iter().enumerate() {
            mte::set_granule_tag(page + (g as u64) * mte::GRANULE, *v);
        }
    }
}

/// Set the page's tags to `tags`, granules without protected bytes first and those with
/// protected bytes last: on an emulator whose tag storage aliases granules (QEMU 7.2, see
/// docs/aarch64.md) the locked tags are then the ones that stick.
fn write_tags_locked_last(page: u64, tags: &[u8; TAGS], mask: &[u64; 64]) {
    if !mte::el2_tags() {
        return;
    }
    for locked in [false, true] {
        for (g, v) in tags.iter().enumerate() {
            if granule_protected(mask, g) == locked {
                mte::set_granule_tag(page + (g as u64) * mte::GRANULE, *v);
            }
        }
    }
}

impl Vm {
    fn is_ram(&self, gpa: GuestPhysAddr) -> bool {
        let a = gpa.as_u64();
        a >= self.gram.ipa_base && a - self.gram.ipa_base < self.gram.size
    }

    /// A write to a page with protected bytes (chunk or ROE page) that the syndrome cannot
    /// complete: no ISV (pair, SIMD, atomic, exclusive, DC ZVA) or a store crossing the page end.
    pub(super) fn needs_software_store(&self, d: &Decoded, f: &MemFault) -> bool {
        if f.access != Access::Write || !self.is_ram(f.gpa) {
            return false;
        }
        // Chunk pages, and ROE pages too: skipping an unsized store there must keep the
        // instruction's register effects (writeback, the value an atomic loads).
        let st = self.core.store().state(f.gpa.frame());
        if !(st.chunk || st.roe) || !st.allowed.write() {
            return false;
        }
        // A hardware update of a stage-1 descriptor (access flag, dirty state) on such a page
        // (S1PTW): stepped too, so the instruction completes and the update lands unless it
        // touches protected bytes.
        if d.esr.s1ptw() {
            return true;
        }
        // A guest with tag checking on (SCTLR_EL1.TCF or TCF0): a store completed from the
        // syndrome would skip the Allocation Tag check the hardware makes after stage 2, so
        // every such store is stepped against the tagged copy instead.
        if mte::el2_tags() && read_sysreg!("sctlr_el1") & SCTLR_TCF_TCF0 != 0 {
            return true;
        }
        let isv = d.esr.ec() == ec::DABT_LOWER && d.esr.isv();
        match f.size {
            // A store that crosses into this page from the one before faults here with FAR at
            // (or just after) this page's start, not at the store's first byte (QEMU reports the
            // page start): the syndrome then describes bytes the store does not write. Within
            // the first `n` bytes of a page the store may have begun on the previous page, so
            // the software path (which decodes the instruction's own address) completes it.
            Some(n) if isv => {
                let off = f.gpa.page_offset();
                off + u64::from(n) > PAGE_SIZE || off < u64::from(n)
            }
            _ => true,
        }
    }

    /// The instruction word at the guest's PC (through its stage-1 tables).
    fn insn_at_pc(&self) -> Option<u32> {
        let mem = GuestMem::new(self.gram, &self.no_read);
        let walker = Arm64Walker::new(Arm64TranslationRegs {
            sctlr_el1: read_sysreg!("sctlr_el1"),
            tcr_el1: read_sysreg!("tcr_el1"),
            ttbr0_el1: read_sysreg!("ttbr0_el1"),
            ttbr1_el1: read_sysreg!("ttbr1_el1"),
        });
        let mut tr = WalkTranslate::new(walker, &mem);
        let gpa = tr.translate(GuestVirtAddr::new(self.regs.pc)).ok()?;
        mem.read_u32(gpa).ok()
    }

    /// Start the software path for `f` (see the module docs).
    pub(super) fn software_store(&mut self, d: &Decoded, f: &MemFault) -> Action {
        // Bound restarts at one PC (no completed step in between).
        let pc = self.regs.pc;
        self.sw_restarts = match self.sw_restarts {
            (p, n) if p == pc => (p, n.saturating_add(1)),
            _ => (pc, 1),
        };
        if self.sw_restarts.1 > MAX_STEP_RESTARTS {
            log::error!(
                "software store: the store at pc={pc:#x} (ipa={:#x}) restarted the software path {} times without completing a step; stopping",
                f.gpa,
                self.sw_restarts.1 - 1
            );
            return Action::Stop(StopReason {
                status: STATUS_BULWARK_FAILURE,
                reason: reason::UNHANDLED_EXIT,
            });
        }
        let s1ptw = d.esr.s1ptw();
        if !s1ptw {
            if let Some(x) = self.insn_at_pc().and_then(decode_exclusive) {
                let a = self.emulate_exclusive(f, x);
                // An emulated store-exclusive completes without a step: that is progress, so
                // the restart bound starts again (a guest's loop may run the same STXR often).
                if !matches!(a, Action::Stop(_)) {
                    self.sw_restarts = (0, 0);
                }
                return a;
            }
        }
        let mut step = Step {
            fault: *f,
            saved: self.regs.clone(),
            pages: [None; STEP_PAGES],
            mdscr: read_sysreg!("mdscr_el1"),
            mdcr: read_sysreg!("mdcr_el2"),
            os_locked: read_sysreg!("oslsr_el1") & OSLSR_OSLK != 0,
            double_locked: read_sysreg!("osdlr_el1") & OSDLR_DLK != 0,
            s1ptw,
            exits: 0,
        };
        if let Err(a) = self.redirect(&mut step, 0, f, s1ptw) {
            return a;
        }
        // Arm the step: debug exceptions to EL2, the guest's step bit, and the step state on
        // return; the instruction runs with A/I/F masked (an interrupt taken first would be
        // stepped instead of the store).
        write_sysreg!("mdcr_el2", step.mdcr | MDCR_TDE);
        // The guest's own breakpoints and watchpoints (MDE, KDE) are off for the one
        // instruction: with TDE set they would trap to EL2 instead of reaching the guest.
        write_sysreg!(
            "mdscr_el1",
            (step.mdscr | MDSCR_SS) & !(MDSCR_MDE | MDSCR_KDE)
        );
        if step.os_locked {
            write_sysreg!("oslar_el1", 0);
        }
        if step.double_locked {
            write_sysreg!("osdlr_el1", 0);
        }
        bulwark_aarch64::sysreg::isb();
        self.regs.pstate |= PSTATE_SS | PSTATE_AIF;
        self.step = Some(step);
        self.stats.sw_steps += 1;
        let _ = d;
        Action::Retry
    }

    /// Point the page of `f` at scratch frame `slot` (a copy of the page).
    fn redirect(
        &mut self,
        step: &mut Step,
        slot: usize,
        f: &MemFault,
        s1ptw: bool,
    ) -> Result<(), Action> {
        let page = f.gpa.page_base();
        let (Some(&scratch), true) = (self.scratch.get(slot), self.is_ram(page)) else {
            return Err(self.sw_fail(f, "no scratch frame"));
        };
        let st = self.core.store().state(page.frame());
        let host = self.gram.host(page.as_u64());
        // SAFETY: `host` is a guest RAM page (checked), `scratch` a pool frame only this path
        // uses; both identity-mapped at EL2, 4 KiB each, disjoint.
        unsafe { core::ptr::copy_nonoverlapping(host as *const u8, scratch as *mut u8, PAGE) };
        // With MTE the copy carries the page's Allocation Tags too, so the stepped instruction's
        // tag checks see what they would see on the page itself.
        let tags = read_tags(host);
        write_tags(scratch, &tags);
        clean_inval(scratch, PAGE_SIZE);
        let attrs = LeafAttrs::ram(st.allowed.union(Perms::RW));
        if let Err(e) = self.s2.map(
            &mut self.pool,
            page,
            PAGE_SIZE,
            HostPhysAddr::new(scratch),
            attrs,
            &mut Stage2Tlb,
        ) {
            log::error!("software store: redirecting ipa={page:#x} failed: {e:?}");
            return Err(self.sw_fail(f, "stage-2 edit failed"));
        }
        if let Some(p) = step.pages.get_mut(slot) {
            *p = Some(StepPage {
                ipa: page,
                va: f
                    .gva
                    .filter(|_| !s1ptw)
                    .map(|v| v.as_u64() & !(PAGE_SIZE - 1)),
                tags,
            });
        }
        Ok(())
    }

    fn sw_fail(&mut self, f: &MemFault, why: &str) -> Action {
        log::error!(
            "store to a chunk-protected page at ipa={:#x} pc={:#x} cannot be completed safely ({why}); stopping",
            f.gpa,
            f.ip
        );
        Action::Stop(StopReason {
            status: STATUS_BULWARK_FAILURE,
            reason: reason::UNHANDLED_EXIT,
        })
    }

    /// Undo the hardware side of a step: stage 2 re-derived for the redirected pages, the
    /// guest's MDSCR_EL1, MDCR_EL2, OS Lock and OS Double Lock, PSTATE.SS cleared and A/I/F as
    /// before the step. When the instruction took an exception to EL1 instead (PC at a vector),
    /// the exception entry saved the step's masked A/I/F in SPSR_EL1: those three bits are put
    /// back to the guest's own, so its ERET does not return with interrupts masked.
    fn step_teardown(&mut self, step: &Step) -> Option<Action> {
        write_sysreg!("mdscr_el1", step.mdscr);
        write_sysreg!("mdcr_el2", step.mdcr);
        if step.os_locked {
            write_sysreg!("oslar_el1", 1);
        }
        if step.double_locked {
            write_sysreg!("osdlr_el1", OSDLR_DLK);
        }
        bulwark_aarch64::sysreg::isb();
        self.regs.pstate &= !PSTATE_SS;
        if self.regs.pc == step.saved.pc || self.regs.pc == step.saved.pc.wrapping_add(4) {
            self.regs.pstate = (self.regs.pstate & !PSTATE_AIF) | (step.saved.pstate & PSTATE_AIF);
        } else {
            let spsr = read_sysreg!("spsr_el1");
            write_sysreg!("spsr_el1", spsr_with_aif_of(spsr, step.saved.pstate));
        }
        for p in step.pages.iter().flatten() {
            if let Some(r) = GpaRange::new(p.ipa, PAGE_SIZE) {
                if let Some(stop) = self.rederive(r) {
                    return Some(stop);
                }
            }
        }
        None
    }

    /// An exit while a step is in progress.
    pub(super) fn step_exit(&mut self, d: &mut Decoded) -> Action {
        let Some(mut step) = self.step.take() else {
            return self.handle(d);
        };
        step.exits = step.exits.saturating_add(1);
        if d.esr.ec() == EC_SOFTSTEP_LOWER && step.exits <= MAX_STEP_EXITS {
            self.stats.exit_step += 1;
            self.sw_restarts = (0, 0);
            return self.finish_step(d, step);
        }
        if step.exits > MAX_STEP_EXITS {
            log::error!(
                "software store: the step of the store at pc={:#x} (ipa={:#x}) took {} exits (bound {MAX_STEP_EXITS}); scratch mapping removed, stopping",
                step.saved.pc,
                step.fault.gpa,
                step.exits
            );
            let _ = self.step_teardown(&step);
            return Action::Stop(StopReason {
                status: STATUS_BULWARK_FAILURE,
                reason: reason::UNHANDLED_EXIT,
            });
        }
        // The instruction also writes another protected page: give it the second frame and
        // step again (nothing was written: the instruction aborted).
        if let Exit::MemFault(f) = d.exit {
            let page = f.gpa.page_base();
            let st = self.core.store().state(page.frame());
            let free = step.pages.iter().position(|p| p.is_none());
            let known = step.pages.iter().flatten().any(|p| p.ipa == page);
            if f.access == Access::Write
                && self.regs.pc == step.saved.pc
                && self.is_ram(page)
                && (st.chunk || st.roe)
                && st.allowed.write()
                && !known
            {
                if let Some(slot) = free {
                    if let Err(a) = self.redirect(&mut step, slot, &f, d.esr.s1ptw()) {
                        let _ = self.step_teardown(&step);
                        return a;
                    }
                    self.regs.pstate |= PSTATE_SS | PSTATE_AIF;
                    self.step = Some(step);
                    return Action::Retry;
                }
                // A third page with protected bytes: the instruction cannot be completed with
                // two scratch frames, and abandoning the step would restart it forever.
                let mut held = alloc::string::String::new();
                for p in step.pages.iter().flatten() {
                    let _ = core::fmt::Write::write_fmt(&mut held, format_args!(" {:#x}", p.ipa));
                }
                log::error!(
                    "software store: the store at pc={:#x} writes a third page with protected bytes (ipa={page:#x}) besides{held}; the software path holds {STEP_PAGES} scratch pages, so it cannot complete this instruction: scratch mapping removed, stopping",
                    step.saved.pc
                );
                let _ = self.step_teardown(&step);
                return Action::Stop(StopReason {
                    status: STATUS_BULWARK_FAILURE,
                    reason: reason::UNHANDLED_EXIT,
                });
            }
        }
        // A write abort at the same PC: the instruction did not run (nothing escaped); abandon
        // the step and handle the exit as usual.
        let aborted_here = matches!(d.exit, Exit::MemFault(f) if f.access == Access::Write)
            && self.regs.pc == step.saved.pc;
        if !aborted_here {
            // Anything else ran with the step armed and did not end in a Software Step
            // exception (debug exceptions disabled some other way, or an exit the one stepped
            // store cannot cause): the guest may have run untraced against the writable copy.
            // Undo the redirection and stop.
            log::error!(
                "software store: the step of the store at pc={:#x} (ipa={:#x}) escaped: exit ESR {:#x} ({}) at pc={:#x} instead of a software step; scratch mapping removed, stopping",
                step.saved.pc,
                step.fault.gpa,
                d.esr.0,
                bulwark_aarch64::esr::ec_name(d.esr.ec()),
                self.regs.pc
            );
            let _ = self.step_teardown(&step);
            return Action::Stop(StopReason {
                status: STATUS_BULWARK_FAILURE,
                reason: reason::UNHANDLED_EXIT,
            });
        }
        if let Some(stop) = self.step_teardown(&step) {
            return stop;
        }
        self.handle(d)
    }

    /// The step completed: compare, merge, decide (the core's shadow-step contract:
    /// `protected_page`, `shadow::{first_changed_protected, merge_unprotected}`,
    /// `shadow_step_done`).
    fn finish_step(&mut self, d: &mut Decoded, step: Step) -> Action {
        // The first protected byte the instruction changed, or the protected faulting byte.
        let mut hit: Option<(GuestPhysAddr, Option<u64>)> = None;
        if !step.s1ptw && self.core.store().byte_locked(step.fault.gpa) {
            hit = Some((step.fault.gpa, step.fault.gva.map(|v| v.as_u64())));
        }
        let mut masks = [[0u64; 64]; STEP_PAGES];
        for (i, p) in step.pages.iter().enumerate() {
            let (Some(p), Some(&scratch), Some(mask)) = (p, self.scratch.get(i), masks.get_mut(i))
            else {
                continue;
            };
            *mask = self.core.protected_page(p.ipa.frame());
            clean_inval(scratch, PAGE_SIZE);
            let host = self.gram.host(p.ipa.as_u64());
            // SAFETY: a guest RAM page and a scratch frame, identity-mapped, 4 KiB each, read
            // only here.
            let (page, copy) = unsafe {
                (
                    &*(host as *const [u8; PAGE]),
                    &*(scratch as *const [u8; PAGE]),
                )
            };
            if hit.is_none() {
                if let Some(j) = shadow::first_changed_protected(page, copy, mask) {
                    hit = Some((
                        GuestPhysAddr::new(p.ipa.as_u64() + j as u64),
                        p.va.map(|v| v + j as u64),
                    ));
                }
            }
            if hit.is_none() {
                let after = read_tags(scratch);
                if let Some(first) = first_changed_protected_tag(&p.tags, &after, mask) {
                    log::warn!(
                        "software store: pc={:#x} changes the Allocation Tag of a granule with protected bytes at ipa={:#x}",
                        step.saved.pc,
                        p.ipa.as_u64() + (first as u64 & !(mte::GRANULE - 1))
                    );
                    hit = Some((
                        GuestPhysAddr::new(p.ipa.as_u64() + first as u64),
                        p.va.map(|v| v + first as u64),
                    ));
                }
            }
        }
        let merge = |vm: &mut Vm| {
            for (i, p) in step.pages.iter().enumerate() {
                let (Some(p), Some(&scratch), Some(mask)) = (p, vm.scratch.get(i), masks.get(i))
                else {
                    continue;
                };
                let host = vm.gram.host(p.ipa.as_u64());
                // SAFETY: as above; the guest RAM page is written from EL2 (the guest cannot
                // write it: its stage-2 leaf is read-only or points at the scratch frame).
                let (page, copy) = unsafe {
                    (
                        &mut *(host as *mut [u8; PAGE]),
                        &*(scratch as *const [u8; PAGE]),
                    )
                };
                shadow::merge_unprotected(page, copy, mask);
                if mte::el2_tags() {
                    let tags = merged_tags(&p.tags, &read_tags(scratch), mask);
                    write_tags_locked_last(host, &tags, mask);
                }
                clean_inval(host, PAGE_SIZE);
            }
        };
        // The core decides and logs: no hit -> an emulated store (Advance); a hit -> a `roe` or
        // `roe-chunk` violation at that byte with the policy's action.
        let at = match hit {
            Some((gpa, gva)) => MemFault {
                gpa,
                gva: gva.map(GuestVirtAddr::new),
                ..step.fault
            },
            None => step.fault,
        };
        let action = match self.core.shadow_step_done(0, &at, hit.map(|h| h.0)).action {
            // No protected byte hit, or `skip`: the instruction stands (the hardware moved the
            // PC), unprotected bytes land, protected ones are dropped.
            Action::Advance | Action::EmulateStore(_) => {
                merge(self);
                self.stats.sw_writes += 1;
                Action::Retry
            }
            Action::InjectFault => {
                // The page keeps its tags (the step only touched the scratch frame's; written
                // back for emulators whose tag storage aliases the two).
                for (i, p) in step.pages.iter().enumerate() {
                    if let (Some(p), Some(mask)) = (p, masks.get(i)) {
                        write_tags_locked_last(self.gram.host(p.ipa.as_u64()), &p.tags, mask);
                    }
                }
                let s = &step.saved;
                self.regs.x = s.x;
                self.regs.pc = s.pc;
                self.regs.pstate = s.pstate;
                self.regs.v = s.v;
                self.regs.fpsr = s.fpsr;
                self.regs.fpcr = s.fpcr;
                d.exit = Exit::MemFault(step.fault);
                Action::InjectFault
            }
            other => other,
        };
        if let Some(stop) = self.step_teardown(&step) {
            return stop;
        }
        if action == Action::InjectFault {
            return self.inject_or_stop(&step.fault);
        }
        action
    }

    /// Complete a store-exclusive to a chunk page as a successful one, minus protected bytes.
    fn emulate_exclusive(&mut self, f: &MemFault, x: Exclusive) -> Action {
        let size = x.size();
        if f.gpa.page_offset() + u64::from(size) > PAGE_SIZE {
            return self.sw_fail(f, "store-exclusive crossing a page");
        }
        let mut bytes = [0u8; 16];
        let lo = self.regs.reg(x.rt).to_le_bytes();
        let hi = x.rt2.map_or(0, |r| self.regs.reg(r)).to_le_bytes();
        let e = usize::from(x.elem);
        for (i, b) in bytes.iter_mut().enumerate().take(usize::from(size)) {
            *b = if i < e {
                lo.get(i).copied().unwrap_or(0)
            } else {
                hi.get(i - e).copied().unwrap_or(0)
            };
        }
        let mask = self.core.protected_mask(f.gpa, size);
        let action = if mask == 0 {
            Action::Advance
        } else {
            let first = u64::from(mask.trailing_zeros());
            let at = MemFault {
                gpa: GuestPhysAddr::new(f.gpa.as_u64() + first),
                gva: f
                    .gva
                    .map(|v| GuestVirtAddr::new(v.as_u64().wrapping_add(first))),
                size: Some(1),
                ..*f
            };
            self.core.handle_fault(0, &at).action
        };
        match action {
            Action::Advance | Action::EmulateStore(_) => {
                let host = self.gram.host(f.gpa.as_u64());
                for (i, b) in bytes.iter().enumerate().take(usize::from(size)) {
                    if mask & (1 << i) == 0 {
                        // SAFETY: inside the guest RAM page of the fault (no page crossing,
                        // checked above), identity-mapped at EL2.
                        unsafe { core::ptr::write_volatile((host + i as u64) as *mut u8, *b) };
                    }
                }
                clean_inval(host, u64::from(size));
                self.regs.set_reg(x.rs, 0);
                self.stats.sw_exclusive += 1;
                Action::Advance
            }
            Action::InjectFault => self.inject_or_stop(f),
            other => other,
        }
    }
}
