//! Bulwark's arch-independent core. `no_std` + `alloc`; builds and is tested on the host.
#![cfg_attr(not(test), no_std)]
#![deny(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
// Tests may unwrap and index; the production build above is checked without this allowance.
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)
)]

extern crate alloc;

pub mod addr;
pub mod console;
pub mod exit;
pub mod fuzz;
pub mod guest;
pub mod gwalk;
pub mod physmem;
pub mod pt;
pub mod shadow;
pub mod store;
pub mod violation;
