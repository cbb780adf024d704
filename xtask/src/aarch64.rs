//! arm64 side of xtask: build Bulwark and the test guest as arm64 Images, run them in QEMU
//! (`-M virt,virtualization=on,gic-version=3`, Bulwark entered at EL2), and the test scenarios.
//!
//! How a guest reaches Bulwark: QEMU `-kernel bulwark.img -initrd GUEST`; Bulwark's own command
//! line and the guest's travel together in `-append "BULWARK_ARGS -- GUEST_ARGS"`. A guest with
//! an initrd of its own is wrapped in a bundle (see `arch/aarch64/src/image.rs`, [`bundle`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bulwark_abi::console::{reason, STATUS_BULWARK_FAILURE};

use crate::util::{self, Emulator, Outcome, RunOpts, Scenario, Serial};

const TARGET: &str = "aarch64-unknown-none";
const QEMU: &str = "qemu-system-aarch64";
const DEFAULT_TIMEOUT_S: u64 = 30;
const MEMORY: &str = "512M";
/// Status Bulwark reports for a guest stuck in an exception loop (hypervisor/src/aarch64/guest.rs).
const STATUS_GUEST_CRASH: u32 = 0xB3;

fn out() -> Result<PathBuf, String> {
    util::out_dir("aarch64")
}

/// ELF -> flat binary (the ELF's first loadable byte is the Image header).
fn objcopy(elf: &Path, img: &Path) -> Result<(), String> {
    util::need_tool("llvm-objcopy", "llvm")?;
    util::run_checked(
        Command::new("llvm-objcopy")
            .args(["-O", "binary"])
            .arg(elf)
            .arg(img),
        "llvm-objcopy -O binary",
    )
}

/// Build Bulwark and the test guest as arm64 Images. Returns Bulwark's Image.
pub fn build(release: bool) -> Result<PathBuf, String> {
    let elf = util::cargo_build("bulwark", "bulwark", TARGET, release)?;
    let img = out()?.join("bulwark.img");
    objcopy(&elf, &img)?;
    let gelf = util::cargo_build("aarch64-testguest", "aarch64-testguest", TARGET, release)?;
    objcopy(&gelf, &test_guest_path()?)?;
    Ok(img)
}

/// Where `build` puts the test guest Image.
pub fn test_guest_path() -> Result<PathBuf, String> {
    Ok(out()?.join("aarch64-testguest.img"))
}

/// Wrap a guest kernel and an initrd into one payload for Bulwark: a 64-byte header
/// `b"BWBUNDL1"`, then kernel offset/length and initrd offset/length (u64 little endian), zero
/// padding; the kernel at offset 64, the initrd after it (page aligned).
pub fn bundle(kernel: &Path, initrd: &Path, dest: &Path) -> Result<(), String> {
    let k = std::fs::read(kernel).map_err(|e| format!("{}: {e}", kernel.display()))?;
    let i = std::fs::read(initrd).map_err(|e| format!("{}: {e}", initrd.display()))?;
    let koff = 64u64;
    let ioff = (koff + k.len() as u64).div_ceil(4096) * 4096;
    let mut out = Vec::with_capacity(ioff as usize + i.len());
    out.extend_from_slice(b"BWBUNDL1");
    for v in [koff, k.len() as u64, ioff, i.len() as u64] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.resize(64, 0);
    out.extend_from_slice(&k);
    out.resize(ioff as usize, 0);
    out.extend_from_slice(&i);
    std::fs::write(dest, out).map_err(|e| format!("{}: {e}", dest.display()))
}

/// Extra knobs the scenarios need beyond [`RunOpts`].
#[derive(Default, Clone)]
pub struct Extra {
    /// Run QEMU without `virtualization=on` (Bulwark entered at EL1).
    pub no_el2: bool,
    /// Payload to pass instead of `--guest` / the test guest (e.g. a bundle).
    pub payload: Option<PathBuf>,
    /// Run without any guest.
    pub no_guest: bool,
}

/// `cargo xtask run --arch aarch64`: Bulwark with `--guest` (default: the test guest).
pub fn run(o: &RunOpts) -> Result<Outcome, String> {
    run_with(o, &Extra::default())
}

pub fn run_with(o: &RunOpts, x: &Extra) -> Result<Outcome, String> {
    if let Some(e) = &o.emulator {
        if e != "qemu" {
            return Err(format!("--emulator {e}: arm64 runs in QEMU only"));
        }
    }
    util::need_tool(QEMU, "qemu-system-arm")?;
    let bulwark = build(o.release)?;
    let guest = match (&x.payload, &o.guest) {
        _ if x.no_guest => None,
        (Some(p), _) => Some(p.clone()),
        (None, Some(g)) => Some(g.clone()),
        (None, None) => Some(test_guest_path()?),
    };
    let append = if o.guest_cmdline.is_empty() {
        o.cmdline.clone()
    } else {
        format!("{} -- {}", o.cmdline, o.guest_cmdline)
    };
    let machine = if x.no_el2 {
        "virt,gic-version=3"
    } else {
        "virt,virtualization=on,gic-version=3"
    };
    let mut cmd = Command::new(QEMU);
    cmd.args(["-M", machine])
        .args(["-cpu", o.cpu.as_deref().unwrap_or("max")])
        .args(["-m", MEMORY])
        .args(["-nographic", "-no-reboot", "-semihosting"])
        .arg("-kernel")
        .arg(&bulwark);
    if let Some(g) = &guest {
        cmd.arg("-initrd").arg(g);
    }
    if !append.trim().is_empty() {
        cmd.args(["-append", append.trim()]);
    }
    let log = out()?.join("qemu.log");
    util::run_emulator(Emulator {
        cmd,
        serial: Serial::Stdout,
        timeout: Duration::from_secs(o.timeout.unwrap_or(DEFAULT_TIMEOUT_S)),
        echo: !o.quiet,
        log,
    })
}

fn quiet() -> RunOpts {
    RunOpts {
        quiet: true,
        ..RunOpts::default()
    }
}

fn need(out: &Outcome, needle: &str) -> Result<(), String> {
    if out.has(needle) {
        Ok(())
    } else {
        Err(format!(
            "console lacks {needle:?}\n--- console tail ---\n{}",
            out.tail(25)
        ))
    }
}

/// The arm64 rows of `cargo xtask test`.
pub fn scenarios() -> Vec<Scenario> {
    let emu = "qemu virt el2";
    vec![
        Scenario::new("aarch64: banner without a guest", emu, || {
            let out = run_with(
                &quiet(),
                &Extra {
                    no_guest: true,
                    ..Extra::default()
                },
            )?;
            out.expect(0, reason::NO_GUEST)?;
            need(&out, "bulwark: INFO EL2, MIDR")?;
            need(&out, "bulwark: INFO memory: 0x40000000..0x60000000")?;
            need(&out, "bulwark: INFO cpus: 1")
        }),
        Scenario::new(
            "aarch64: entered at EL1 is refused",
            "qemu virt el1",
            || {
                let out = run_with(
                    &quiet(),
                    &Extra {
                        no_el2: true,
                        ..Extra::default()
                    },
                )?;
                out.expect(STATUS_BULWARK_FAILURE, reason::REFUSED)?;
                need(&out, "entered at EL1")
            },
        ),
        Scenario::new("aarch64: bad Bulwark command line is refused", emu, || {
            let o = RunOpts {
                cmdline: "violation=sometimes".into(),
                ..quiet()
            };
            let out = run(&o)?;
            out.expect(STATUS_BULWARK_FAILURE, reason::REFUSED)?;
            need(&out, "violation=sometimes")
        }),
        Scenario::new("aarch64: test guest passes under stage 2", emu, || {
            let o = RunOpts {
                guest_cmdline: "from-xtask".into(),
                ..quiet()
            };
            let out = run(&o)?;
            out.expect(0, reason::GUEST_EXIT)?;
            need(&out, "testguest: bootargs \"from-xtask\"")?;
            need(&out, "testguest: all checks passed")?;
            need(&out, "bulwark: WARN stage-2 abort: ipa=0x5e000000")
        }),
        Scenario::new("aarch64: guest status via GUEST_EXIT", emu, || {
            let o = RunOpts {
                guest_cmdline: "exit=42".into(),
                ..quiet()
            };
            let out = run(&o)?;
            out.expect(42, reason::GUEST_EXIT)?;
            if out.exit_code() != 42 {
                return Err(format!("exit code {} instead of 42", out.exit_code()));
            }
            Ok(())
        }),
        Scenario::new("aarch64: raw binary guest (no Image header)", emu, || {
            build(false)?;
            let mut img = std::fs::read(test_guest_path()?).map_err(|e| e.to_string())?;
            let magic = img.get_mut(56..60).ok_or("test guest too short")?;
            magic.copy_from_slice(&[0; 4]);
            let raw = out()?.join("aarch64-testguest.raw");
            std::fs::write(&raw, img).map_err(|e| e.to_string())?;
            let o = RunOpts {
                guest: Some(raw),
                ..quiet()
            };
            let out = run(&o)?;
            out.expect(0, reason::GUEST_EXIT)?;
            need(&out, "raw binary")?;
            need(&out, "testguest: all checks passed")
        }),
        Scenario::new("aarch64: guest exception loop ends the run", emu, || {
            let o = RunOpts {
                guest_cmdline: "crash=loop".into(),
                ..quiet()
            };
            let out = run(&o)?;
            out.expect(STATUS_GUEST_CRASH, reason::GUEST_CRASH)?;
            need(&out, "exception loop")
        }),
        Scenario::new(
            "aarch64: abort the guest never gets past ends the run",
            emu,
            || {
                let o = RunOpts {
                    guest_cmdline: "crash=unhandled".into(),
                    ..quiet()
                };
                let out = run(&o)?;
                out.expect(STATUS_GUEST_CRASH, reason::GUEST_CRASH)?;
                need(&out, "aborts in a row")
            },
        ),
    ]
}
