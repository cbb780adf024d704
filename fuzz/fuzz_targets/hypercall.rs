//! Hypercall argument decoder + dispatcher (body: `bulwark_core::fuzz::hypercall`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = bulwark_core::fuzz::hypercall(data) {
        panic!("invariant broken: {e}");
    }
});
