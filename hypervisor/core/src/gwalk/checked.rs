//! Guest memory as the guest itself may read it (issue 12, breach 3).
//!
//! A hypervisor page walk done on the guest's behalf (hypercall address translation, emulated
//! string I/O) reads the guest's paging structures. The CPU's own walk needs EPT / stage-2 read
//! permission for every paging-structure page it reads, so Bulwark's walk must as well:
//! otherwise a guest points a page-directory entry at a page it may not read (`attr=---`,
//! execute-only) and learns its contents from what Bulwark's walker does with them.
//! [`AttrChecked`] wraps a back end's raw reader and refuses every read from a frame whose
//! effective permission (the core's attribute store) lacks R. The refusal looks like "not guest
//! RAM" to the walker (`WalkError::TableNotInGuestMemory`); the first refused address is kept
//! so that the caller can report it as the read fault it is.

use core::cell::Cell;

use super::{GuestMemRead, NotGuestRam};
use crate::addr::{GpaRange, GuestPhysAddr};
use crate::store::AttrStore;

/// A reader that obeys the guest's read permission per frame (see the module docs).
pub struct AttrChecked<'a, M: ?Sized> {
    mem: &'a M,
    store: &'a AttrStore,
    denied: Cell<Option<GuestPhysAddr>>,
}

impl<'a, M: GuestMemRead + ?Sized> AttrChecked<'a, M> {
    pub fn new(mem: &'a M, store: &'a AttrStore) -> Self {
        Self {
            mem,
            store,
            denied: Cell::new(None),
        }
    }

    /// The first guest-physical address a read was refused at (the guest may not read it).
    pub fn denied(&self) -> Option<GuestPhysAddr> {
        self.denied.get()
    }

    fn check(&self, gpa: GuestPhysAddr) -> Result<(), NotGuestRam> {
        if self.store.state(gpa.frame()).allowed.read() {
            return Ok(());
        }
        if self.denied.get().is_none() {
            self.denied.set(Some(gpa));
        }
        Err(NotGuestRam)
    }
}

impl<M: GuestMemRead + ?Sized> GuestMemRead for AttrChecked<'_, M> {
    fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64, NotGuestRam> {
        self.check(gpa)?;
        self.mem.read_u64(gpa)
    }
    fn read_u32(&self, gpa: GuestPhysAddr) -> Result<u32, NotGuestRam> {
        self.check(gpa)?;
        self.mem.read_u32(gpa)
    }
    /// Whether a range is guest RAM (what a walk's *result* must be); the data access itself
    /// is checked by the caller with the access it makes.
    fn contains_ram(&self, range: GpaRange) -> bool {
        self.mem.contains_ram(range)
    }
}
