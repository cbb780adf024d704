//! `cargo xtask`: the one driver for Bulwark — build, images, emulators, tests, benchmarks.
//!
//! Commands (see `cargo xtask help`):
//!   build --arch A [--release]
//!   iso [--guest FILE] [--guest-cmdline S] [--initrd FILE] [--cmdline S] [--release]
//!   run --arch A [--emulator bochs|qemu] [--cpu MODEL] [--timeout S] [--cmdline S]
//!       [--guest FILE] [--guest-cmdline S] [--initrd FILE] [--release]
//!   qemu [--arch A] [same options as run]
//!   test [FILTER...] [--list] [--no-host]
//!   bench [--arch A]
//!   log FILE [--json]

mod aarch64;
mod attr_tests;
mod bench;
mod console_tests;
mod cpu_tests;
mod dma_tests;
mod header;
mod logtool;
mod matrix_tests;
mod pkvm_linux;
mod smccc_tests;
mod test;
mod uboot;
mod util;
mod x86_64;
mod x86_64_roe;
mod x86_64_spp;
mod x86_64_walk;
mod x86_platform;

use std::process::ExitCode;
use util::{Arch, RunOpts};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  build --arch {x86_64,aarch64} [--release]
        build Bulwark (and the test guests) for one architecture
  iso   [--cmdline S] [--guest FILE] [--guest-cmdline S] [--initrd FILE] [--release]
        build a GRUB rescue ISO for x86_64 that boots on BIOS and UEFI machines
        (grub.cfg inside is a template for real hardware)
  run   --arch A [--emulator bochs|qemu] [--cpu MODEL] [--timeout S] [--cmdline S]
        [--guest FILE] [--guest-cmdline S] [--initrd FILE] [--release] [--firmware F]
        boot Bulwark in an emulator, stream the serial console, exit with the run's status
        (defaults: x86_64 -> Bochs tigerlake, aarch64 -> QEMU -kernel)
        --firmware bios|uefi|uboot: x86_64 uefi = QEMU with OVMF (boot path only, QEMU has no
        VMX); aarch64 uboot = Debian's U-Boot loads Bulwark and the guest from a disk (booti)
  qemu  [--arch A] [run options]
        x86_64: QEMU/KVM with nested VMX (only where /dev/kvm offers it); aarch64: run --emulator qemu
  test  [FILTER...] [--list] [--no-host]
        host tests, lint, then every emulator scenario; prints a result table
  bench [--arch A]
        deterministic path-length and footprint benchmarks
  log   FILE [--json]
        summarise a saved serial log (runs save theirs under target/xtask/console/): violations
        by kind, access, page, address and action, counters, the verdict, and every line that
        fails verification (docs/console.md); exit 0 only for a clean, verified status 0
  header [--check]
        write (or check) guest-images/include/bulwark.h, the C header of the guest ABI,
        from the bulwark-abi crate

exit status: the guest's (or Bulwark's) status from the final console line; 124 on timeout;
2 on usage or build errors.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match real_main(&args) {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            eprintln!("xtask: error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn real_main(args: &[String]) -> Result<u8, String> {
    let Some((cmd, rest)) = args.split_first() else {
        println!("{USAGE}");
        return Ok(2);
    };
    match cmd.as_str() {
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(0)
        }
        "build" => {
            let o = RunOpts::parse(rest, None)?;
            let arch = o.arch.ok_or("build needs --arch x86_64|aarch64")?;
            let path = match arch {
                Arch::X86_64 => x86_64::build(o.release)?,
                Arch::Aarch64 => aarch64::build(o.release)?,
            };
            println!("xtask: built {}", path.display());
            Ok(0)
        }
        "iso" => {
            let o = RunOpts::parse(rest, Some(Arch::X86_64))?;
            let iso = x86_64::iso(&o)?;
            println!("xtask: wrote {}", iso.display());
            Ok(0)
        }
        "run" => {
            let o = RunOpts::parse(rest, None)?;
            let arch = o.arch.ok_or("run needs --arch x86_64|aarch64")?;
            let out = match arch {
                Arch::X86_64 => x86_64::run(&with_x86_demo(o))?,
                Arch::Aarch64 => aarch64::run(&o)?,
            };
            Ok(out.report())
        }
        "qemu" => {
            let mut o = RunOpts::parse(rest, Some(Arch::X86_64))?;
            let out = match o.arch.unwrap_or(Arch::X86_64) {
                Arch::X86_64 => x86_64::qemu(&with_x86_demo(o.clone()))?,
                Arch::Aarch64 => {
                    o.emulator = Some("qemu".into());
                    aarch64::run(&o)?
                }
            };
            Ok(out.report())
        }
        "test" => test::main(rest),
        "bench" => bench::main(rest),
        "log" => logtool::main(rest),
        "header" => header::main(rest),
        other => Err(format!("unknown command '{other}'\n{USAGE}")),
    }
}

/// With no `--guest` and no `--guest-cmdline`, x86 runs the demo: the test guest locks its "syscall
/// table" page and IDT bytes with ROE, then plays a root attacker (the arm64 default does the same
/// with its own demo).
fn with_x86_demo(mut o: RunOpts) -> RunOpts {
    if o.guest.is_none() && o.guest_cmdline.is_empty() {
        o.guest_cmdline = "scenario=demo".into();
    }
    o
}
