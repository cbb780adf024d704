//! Console line formats live in the ABI crate (`bulwark_abi::console`) because xtask parses them.
pub use bulwark_abi::console::*;
