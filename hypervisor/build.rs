//! Selects the linker script of the target architecture (`linker/<arch>.ld`) for the Bulwark binary.
//! A missing script is not an error here, so each arch can land its own independently.

use std::path::PathBuf;

fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let script = manifest
        .join("..")
        .join("linker")
        .join(format!("{arch}.ld"));
    println!("cargo:rerun-if-changed={}", script.display());
    if os == "none" && script.exists() {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
        if arch == "x86_64" {
            // The 32-bit entry uses absolute addresses: link at the fixed address, not as a PIE.
            println!("cargo:rustc-link-arg-bins=--no-pie");
        }
    }
}
