//! Guest memory: the plan (`bulwark_boot::multiboot_plan`, host-tested), page-table frames from Bulwark's heap for
//! the core's EPT engine, the EPT flush hook, and guest-physical reads/writes.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};

use bulwark_core::addr::{GpaRange, GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use bulwark_core::gwalk::{AttrChecked, GuestMemRead, NotGuestRam};
use bulwark_core::physmem::{OutOfFrames, PhysMem};
use bulwark_core::pt::TlbFlush;
use bulwark_core::store::AttrStore;

use crate::cpu::VmxCaps;
use crate::layout;
use crate::vmx::VmxError;

/// Page-table frames from Bulwark's heap (inside Bulwark's region, so never guest-reachable).
pub struct HeapFrames {
    pub allocated: usize,
}

fn frame_layout() -> Layout {
    // 4096 is a power of two and non-zero: this cannot fail.
    Layout::from_size_align(4096, 4096).unwrap_or(Layout::new::<[u64; 512]>())
}

impl PhysMem for HeapFrames {
    fn alloc_frame(&mut self) -> Result<HostPhysAddr, OutOfFrames> {
        // SAFETY: non-zero size layout.
        let p = unsafe { alloc_zeroed(frame_layout()) };
        if p.is_null() {
            return Err(OutOfFrames);
        }
        self.allocated += 1;
        Ok(layout::hpa_of(p))
    }

    fn free_frame(&mut self, frame: HostPhysAddr) {
        if layout::overlaps_bulwark(frame.as_u64(), frame.as_u64() + PAGE_SIZE) {
            // SAFETY: frames come from `alloc_frame` with the same layout (identity mapped).
            unsafe { dealloc(frame.as_u64() as *mut u8, frame_layout()) };
            self.allocated = self.allocated.saturating_sub(1);
        }
    }

    fn read_u64(&self, addr: HostPhysAddr) -> u64 {
        if !layout::overlaps_bulwark(addr.as_u64(), addr.as_u64() + 8)
            || !addr.as_u64().is_multiple_of(8)
        {
            return 0;
        }
        // SAFETY: an aligned word inside Bulwark's identity-mapped region (a table frame).
        unsafe { core::ptr::read_volatile(addr.as_u64() as *const u64) }
    }

    fn write_u64(&mut self, addr: HostPhysAddr, value: u64) {
        if !layout::overlaps_bulwark(addr.as_u64(), addr.as_u64() + 8)
            || !addr.as_u64().is_multiple_of(8)
        {
            return;
        }
        // SAFETY: as above; one aligned 64-bit store is single-copy atomic.
        unsafe { core::ptr::write_volatile(addr.as_u64() as *mut u64, value) }
    }
}

/// The engine's TLB hook: every EPT edit that changes or removes a valid entry ends in
/// [`crate::vmx::invalidate_ept`]. The hook cannot return an error to the engine, so the first
/// failed INVEPT is kept in `failed`: whoever ran the edit checks it and stops the run (a stale
/// translation could keep a revoked permission).
pub struct EptFlush<'a> {
    pub caps: &'a VmxCaps,
    pub eptp: u64,
    pub flushes: u64,
    pub failed: Option<VmxError>,
}

impl TlbFlush for EptFlush<'_> {
    fn flush(&mut self, _range: GpaRange) {
        self.flushes += 1;
        if let Err(e) = crate::vmx::invalidate_ept(self.caps, self.eptp) {
            self.failed.get_or_insert(e);
        }
    }
}

pub use bulwark_boot::multiboot_plan::{Plan, LEGACY_HOLE};

/// Guest RAM as Bulwark reads it (identity: guest-physical = host-physical outside Bulwark).
pub struct GuestRam<'a> {
    pub plan: &'a Plan,
}

impl GuestRam<'_> {
    /// Copy bytes into guest RAM. Fails (nothing written) unless the whole range is guest RAM.
    pub fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), NotGuestRam> {
        let end = gpa.checked_add(bytes.len() as u64).ok_or(NotGuestRam)?;
        if bytes.is_empty() {
            return Ok(());
        }
        if !self.plan.is_ram(gpa, end) || end > 1 << 32 {
            return Err(NotGuestRam);
        }
        // SAFETY: the range is guest RAM (never Bulwark's region), identity mapped below 4 GiB,
        // and no vCPU runs while Bulwark loads the guest.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), gpa as *mut u8, bytes.len());
        }
        Ok(())
    }

    /// Zero-fill guest RAM.
    pub fn zero(&self, gpa: u64, len: u64) -> Result<(), NotGuestRam> {
        let end = gpa.checked_add(len).ok_or(NotGuestRam)?;
        if len == 0 {
            return Ok(());
        }
        if !self.plan.is_ram(gpa, end) || end > 1 << 32 {
            return Err(NotGuestRam);
        }
        // SAFETY: as in `write`.
        unsafe { core::ptr::write_bytes(gpa as *mut u8, 0, len as usize) };
        Ok(())
    }

    /// One byte of guest RAM.
    pub fn read_byte(&self, gpa: u64) -> Result<u8, NotGuestRam> {
        let end = gpa.checked_add(1).ok_or(NotGuestRam)?;
        if !self.plan.is_ram(gpa, end) || end > 1 << 32 {
            return Err(NotGuestRam);
        }
        // SAFETY: one byte of guest RAM below 4 GiB (identity mapped), never Bulwark's.
        Ok(unsafe { core::ptr::read_volatile(gpa as *const u8) })
    }

    /// Store one byte into guest RAM (the caller checked the guest may write it).
    pub fn write_byte(&self, gpa: u64, v: u8) -> Result<(), NotGuestRam> {
        self.write(gpa, &[v])
    }

    /// This memory as a page walk on the guest's behalf must read it (issue 12): a paging
    /// structure on a frame the guest may not read (host attribute without R) is refused, as
    /// the CPU's own walk would be by EPT. Every walker use in the exit handlers goes through
    /// this; the raw [`GuestMemRead`] impl below is only its inner reader.
    pub fn checked<'s>(&'s self, store: &'s AttrStore) -> AttrChecked<'s, Self> {
        AttrChecked::new(self, store)
    }

    fn read<const N: usize>(&self, gpa: GuestPhysAddr) -> Result<[u8; N], NotGuestRam> {
        let a = gpa.as_u64();
        let end = a.checked_add(N as u64).ok_or(NotGuestRam)?;
        if !self.plan.is_ram(a, end) || end > 1 << 32 || !a.is_multiple_of(N as u64) {
            return Err(NotGuestRam);
        }
        let mut out = [0u8; N];
        // SAFETY: aligned read of guest RAM below 4 GiB (identity mapped), never Bulwark's.
        unsafe {
            core::ptr::copy_nonoverlapping(a as *const u8, out.as_mut_ptr(), N);
        }
        Ok(out)
    }
}

/// Raw reads: wrap with [`GuestRam::checked`] before walking guest tables for the guest.
impl GuestMemRead for GuestRam<'_> {
    fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64, NotGuestRam> {
        self.read::<8>(gpa).map(u64::from_le_bytes)
    }
    fn read_u32(&self, gpa: GuestPhysAddr) -> Result<u32, NotGuestRam> {
        self.read::<4>(gpa).map(u32::from_le_bytes)
    }
    fn contains_ram(&self, range: GpaRange) -> bool {
        self.plan
            .is_ram(range.start().as_u64(), range.end().as_u64())
    }
}
