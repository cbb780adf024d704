//! `cargo xtask bench`: deterministic path-length and footprint benchmarks (docs/bench.md).

pub fn main(_args: &[String]) -> Result<u8, String> {
    Err("cargo xtask bench is being written (issue 9); not available yet".into())
}
