//! Range validation: host attributes, chunk pieces, table edits (body: `bulwark_core::fuzz::ranges`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = bulwark_core::fuzz::ranges(data) {
        panic!("invariant broken: {e}");
    }
});
