//! Glue to the protection engine: a walker plus guest memory, as the engine's per-page
//! [`GuestTranslate`](crate::guest::GuestTranslate) interface. A back end builds one per
//! hypercall from the calling vCPU's registers:
//!
//! ```ignore
//! let walker = X86Walker::new(X86PagingState::new(cr0, cr3, cr4, efer).with_pdptes(pdptes));
//! let mut tr = WalkTranslate::new(walker, &guest_mem);
//! guest.handle_hypercall(..., &mut tr);
//! ```

use alloc::vec::Vec;

use super::{translate_range, GuestMemRead, GuestWalker, RangePiece, WalkError};
use crate::addr::{GuestPhysAddr, GuestVirtAddr};
use crate::guest::GuestTranslate;

/// A walker and the memory it reads, usable where the engine wants a [`GuestTranslate`].
pub struct WalkTranslate<'m, W, M: ?Sized> {
    pub walker: W,
    pub mem: &'m M,
    /// The error of the most recent failed translation (for logs; the engine only sees `Err(())`).
    pub last_error: Option<WalkError>,
}

impl<'m, W: GuestWalker, M: GuestMemRead + ?Sized> WalkTranslate<'m, W, M> {
    pub fn new(walker: W, mem: &'m M) -> Self {
        Self {
            walker,
            mem,
            last_error: None,
        }
    }
}

impl<W: GuestWalker, M: GuestMemRead + ?Sized> GuestTranslate for WalkTranslate<'_, W, M> {
    fn translate(&mut self, gva: GuestVirtAddr) -> Result<GuestPhysAddr, ()> {
        match self.walker.translate(self.mem, gva) {
            Ok(t) => Ok(t.gpa),
            Err(e) => {
                self.last_error = Some(e);
                Err(())
            }
        }
    }

    /// One walk per guest leaf ([`translate_range`]).
    fn translate_range(
        &mut self,
        gva: GuestVirtAddr,
        len: u64,
    ) -> Option<Result<Vec<RangePiece>, WalkError>> {
        let r = translate_range(&self.walker, self.mem, gva, len);
        if let Err(e) = r {
            self.last_error = Some(e);
        }
        Some(r)
    }
}
