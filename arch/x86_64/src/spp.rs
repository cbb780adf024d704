//! EPT sub-page write permissions (SPP) on x86: turning it on in the VMCS, keeping the SPPT in
//! step with the core's attribute store, the invalidation rule, and the SPP-event exit (66).
//! See docs/x86_64-spp.md.
//!
//! Bulwark never writes an SPPT or EPT entry itself: the core's [`Guest::sync_ept`] derives both
//! (chunk-protected 4 KiB leaves get R=1 W=0 + bit 61, their vectors come from
//! [`Guest::spp_vectors`]); this module only adds the x86 invalidation rule around it.

use bulwark_core::addr::GpaRange;
use bulwark_core::guest::Guest;
use bulwark_core::physmem::PhysMem;
use bulwark_core::pt::ept::Ept;
use bulwark_core::pt::sppt::Sppt;
use bulwark_core::pt::{Invalidation, PtError, TlbFlush};

use crate::cpu::VmxCaps;
use crate::vmcs::{self, proc2};
use crate::vmx::{vmread, vmwrite, VmxError};

/// Exit qualification bit 11 of exit 66: 1 = SPPT miss, 0 = SPPT misconfiguration.
pub const QUAL_SPPT_MISS: u64 = 1 << 11;

/// Does this CPU let Bulwark turn SPP on? (IA32_VMX_PROCBASED_CTLS2 allowed-1 bit 23.)
pub fn available(caps: &VmxCaps) -> bool {
    caps.secondary_allowed1() & proc2::ENABLE_SPP != 0 && caps.ept()
}

/// SPP could not be turned on in the current VMCS.
#[derive(Clone, Copy, Debug)]
pub enum EnableError {
    /// The CPU does not allow secondary control bit 23 (allowed-1 clear).
    NotAllowed,
    Vmx(VmxError),
}

impl From<VmxError> for EnableError {
    fn from(e: VmxError) -> Self {
        EnableError::Vmx(e)
    }
}

/// Turn SPP on in the **current** VMCS (already set up by `Vcpu::new`): SPPTP (field 0x2030) =
/// the SPPT root, then secondary control bit 23 on top of the controls already chosen (which
/// carry the allowed-0 bits).
pub fn enable_in_vmcs(caps: &VmxCaps, sppt: &Sppt) -> Result<(), EnableError> {
    if !available(caps) {
        return Err(EnableError::NotAllowed);
    }
    let sec = vmread(vmcs::SECONDARY_PROC_CONTROLS)?;
    vmwrite(vmcs::SPPT_POINTER, sppt.spptp())?;
    let want = (sec | u64::from(proc2::ENABLE_SPP)) & u64::from(caps.secondary_allowed1());
    vmwrite(vmcs::SECONDARY_PROC_CONTROLS, want)?;
    Ok(())
}

/// Would re-deriving `range` change any SPP vector already in the SPPT (or create one)?
fn vectors_change(
    guest: &Guest,
    mem: &dyn PhysMem,
    sppt: &Sppt,
    range: GpaRange,
) -> Result<bool, PtError> {
    Ok(guest
        .spp_vectors(range)?
        .iter()
        .any(|(gpa, v)| sppt.get(mem, *gpa) != Some(*v)))
}

/// Re-derive `range` into the EPT and (with SPP) the SPPT through the core.
///
/// Invalidation rule: the CPU may cache sub-page permissions together with the EPT-derived
/// (guest-physical and combined) mappings, and INVEPT is what drops them. The core's EPT engine
/// flushes when an EPT entry changes; an SPPT vector can change while the EPT leaf stays the
/// same (a second CHUNK call on a page that already has the SPP bit), so when a vector changes
/// and the engine did not flush, this flushes `range` through the same `TlbFlush` (the one
/// INVEPT function) before the guest runs again.
pub fn sync_ept<const XO: bool>(
    guest: &Guest,
    mem: &mut dyn PhysMem,
    ept: &mut Ept<XO>,
    sppt: Option<&mut Sppt>,
    range: GpaRange,
    tlb: &mut dyn TlbFlush,
) -> Result<Invalidation, PtError> {
    let changed = match sppt.as_deref() {
        Some(s) => vectors_change(guest, mem, s, range)?,
        None => false,
    };
    let inv = guest.sync_ept(mem, ept, sppt, range, tlb)?;
    if changed && !inv.is_needed() {
        tlb.flush(range);
        return Ok(Invalidation { range: Some(range) });
    }
    Ok(inv)
}

/// What an SPP-event exit (66) reports.
pub fn event_kind(qualification: u64) -> &'static str {
    if qualification & QUAL_SPPT_MISS != 0 {
        "SPPT miss"
    } else {
        "SPPT misconfiguration"
    }
}
