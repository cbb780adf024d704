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
pub(crate) const STATUS_GUEST_CRASH: u32 = 0xB3;
/// Status of a run that ended at a PSCI SYSTEM_RESET Bulwark did not reboot (past `maxresets=`,
/// or no room for the pristine payload copy; hypervisor/src/aarch64/guest.rs).
const STATUS_GUEST_RESET: u32 = 0xB2;

pub(crate) fn out() -> Result<PathBuf, String> {
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
    /// More QEMU arguments (e.g. `-icount shift=0`).
    pub qemu_args: Vec<String>,
    /// Boot Bulwark as firmware (`-bios`, `secure=on`): entered at EL3 at address 0.
    pub as_firmware: bool,
    /// QEMU virt with `iommu=smmuv3`: the PCI host bridge behind an SMMUv3.
    pub iommu: bool,
    /// More `-M virt` options, comma-separated (e.g. `mte=on`).
    pub machine_opts: Option<&'static str>,
}

/// Guest command line of the demo (`cargo xtask run --arch aarch64` without `--guest`).
pub const DEMO_CMDLINE: &str = "scenario=demo";

/// `cargo xtask run --arch aarch64`: Bulwark with `--guest`. Without `--guest` and without a
/// guest command line it runs the demo (the test guest with `scenario=demo`: MMIO guard, ROE, an
/// attacker refused twice); with `--guest-cmdline` the test guest gets that command line.
pub fn run(o: &RunOpts) -> Result<Outcome, String> {
    match o.firmware.as_deref() {
        None => {}
        Some("uboot") => return crate::uboot::run(o),
        Some(f) => {
            return Err(format!(
                "--firmware {f}: arm64 boots through QEMU -kernel (default) or U-Boot (--firmware uboot)"
            ))
        }
    }
    if o.guest.is_none() && o.guest_cmdline.trim().is_empty() {
        let demo = RunOpts {
            guest_cmdline: DEMO_CMDLINE.into(),
            ..o.clone()
        };
        return run_with(&demo, &Extra::default());
    }
    run_with(o, &Extra::default())
}

/// The test guest (or `o.guest`) with exactly the command lines in `o` (scenarios).
fn run_guest(o: &RunOpts) -> Result<Outcome, String> {
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
    } else if x.as_firmware {
        "virt,secure=on,virtualization=on,gic-version=3"
    } else if x.iommu {
        "virt,virtualization=on,gic-version=3,iommu=smmuv3"
    } else {
        "virt,virtualization=on,gic-version=3"
    };
    let machine = match x.machine_opts {
        Some(opts) => format!("{machine},{opts}"),
        None => machine.to_string(),
    };
    let mut cmd = Command::new(QEMU);
    cmd.args(["-M", &machine])
        .args(["-cpu", o.cpu.as_deref().unwrap_or("max")])
        .args(["-m", MEMORY])
        // No emulator backdoor in a run with a guest (no `-semihosting`: an EL1 guest's
        // `hlt #0xf000` would be served by QEMU past Bulwark), and no default NIC (QEMU virt
        // would add a virtio-net PCI device, a DMA master). The verdict is Bulwark's console line.
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg(if x.as_firmware { "-bios" } else { "-kernel" })
        .arg(&bulwark);
    if let Some(g) = &guest {
        cmd.arg("-initrd").arg(g);
    }
    if !append.trim().is_empty() {
        cmd.args(["-append", append.trim()]);
    }
    cmd.args(&x.qemu_args);
    let log = out()?.join("qemu.log");
    util::run_emulator(Emulator {
        cmd,
        serial: Serial::Stdout,
        timeout: Duration::from_secs(o.timeout.unwrap_or(DEFAULT_TIMEOUT_S)),
        echo: !o.quiet,
        log,
    })
}

pub(crate) fn quiet() -> RunOpts {
    RunOpts {
        quiet: true,
        ..RunOpts::default()
    }
}

/// The value of `key` in Bulwark's end-of-run counters line is at least `min`.
pub(crate) fn counter_at_least(out: &Outcome, key: &str, min: u64) -> Result<(), String> {
    let line = out
        .lines
        .iter()
        .find(|l| l.contains("bulwark: INFO counters "))
        .ok_or("no counters line")?;
    let v = line
        .split_ascii_whitespace()
        .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("counters line lacks {key}: {line}"))?;
    if v < min {
        return Err(format!(
            "counter {key}={v}, expected at least {min}: {line}"
        ));
    }
    Ok(())
}

pub(crate) fn need(out: &Outcome, needle: &str) -> Result<(), String> {
    if out.has(needle) {
        Ok(())
    } else {
        Err(format!(
            "console lacks {needle:?}\n--- console tail ---\n{}",
            out.tail(25)
        ))
    }
}

// ---- Debian's arm64 kernel with a busybox initramfs -------------------------------------------

/// Marker the initramfs's /init prints before powering off.
pub(crate) const INIT_MARKER: &str = "BULWARK-INIT-MARKER: userspace reached";
/// CPU for the Linux runs: QEMU's IMP DEF pointer-authentication algorithm is much faster in TCG.
pub(crate) const LINUX_CPU: &str = "max,pauth-impdef=on";
pub(crate) const LINUX_CMDLINE: &str = "console=ttyAMA0 panic=-1";

pub(crate) fn debian_dir() -> Result<PathBuf, String> {
    util::out_dir("aarch64/debian")
}

/// Debian's stock arm64 kernel Image and a static busybox, fetched with apt from Debian's
/// package archive on first use (a private apt state under target/, the machine's apt
/// configuration and dpkg architecture list untouched) and cached.
pub fn debian_kernel_and_busybox() -> Result<(PathBuf, PathBuf), String> {
    debian_fetch("arm64", &debian_dir()?)
}

/// `linux-image-*-<arch>`'s kernel and busybox-static for Debian architecture `arch` (arm64,
/// amd64), fetched into `dir` with a private apt state and cached there.
pub(crate) fn debian_fetch(arch: &str, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let dir = dir.to_path_buf();
    let kernel = dir.join("vmlinuz");
    let busybox = dir.join("busybox");
    if kernel.is_file() && busybox.is_file() {
        return Ok((kernel, busybox));
    }
    util::need_tool("apt-get", "apt")?;
    util::need_tool("dpkg-deb", "dpkg")?;
    let apt = dir.join("apt");
    for d in ["lists/partial", "cache/archives/partial", "debs"] {
        std::fs::create_dir_all(apt.join(d)).map_err(|e| format!("{}: {e}", apt.display()))?;
    }
    let opts: Vec<String> = vec![
        "-q".into(),
        "-o".into(),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        "-o".into(),
        format!("Dir::Cache={}", apt.join("cache").display()),
        "-o".into(),
        format!("APT::Architecture={arch}"),
        "-o".into(),
        format!("APT::Architectures::={arch}"),
    ];
    util::progress(&format!(
        "fetching Debian's {arch} package lists (private apt state under target/)"
    ));
    util::run_checked(
        Command::new("apt-get").args(&opts).arg("update"),
        "apt-get update",
    )?;
    // The versioned image package the metapackage points at.
    let dep = Command::new("apt-cache")
        .args(&opts)
        .args(["depends", &format!("linux-image-{arch}")])
        .output()
        .map_err(|e| format!("apt-cache: {e}"))?;
    let text = String::from_utf8_lossy(&dep.stdout);
    let pkg = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with(&format!("-{arch}")))
        .ok_or_else(|| format!("no linux-image-*-{arch} dependency in:\n{text}"))?
        .to_string();
    util::progress(&format!("downloading {pkg} and busybox-static ({arch})"));
    let debs = apt.join("debs");
    util::run_checked(
        Command::new("apt-get")
            .current_dir(&debs)
            .args(&opts)
            .args(["download", &pkg, "busybox-static"]),
        "apt-get download",
    )?;
    let x = dir.join("extracted");
    let _ = std::fs::remove_dir_all(&x);
    for entry in std::fs::read_dir(&debs).map_err(|e| e.to_string())? {
        let p = entry.map_err(|e| e.to_string())?.path();
        if p.extension().is_some_and(|e| e == "deb") {
            util::run_checked(
                Command::new("dpkg-deb").arg("-x").arg(&p).arg(&x),
                "dpkg-deb -x",
            )?;
        }
    }
    let boot = x.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .map_err(|e| format!("{}: {e}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or("the kernel package has no /boot/vmlinuz-*")?;
    std::fs::copy(&vmlinuz, &kernel).map_err(|e| e.to_string())?;
    std::fs::copy(x.join("bin/busybox"), &busybox).map_err(|e| e.to_string())?;
    Ok((kernel, busybox))
}

/// An initramfs (cpio "newc") with /bin/busybox, /dev/console and an /init script that prints
/// [`INIT_MARKER`] and powers off.
pub fn busybox_initramfs(busybox: &Path) -> Result<Vec<u8>, String> {
    let init =
        format!("#!/bin/busybox sh\n/bin/busybox echo {INIT_MARKER}\n/bin/busybox poweroff -f\n");
    busybox_initramfs_with(busybox, &init, &[])
}

/// An initramfs with /bin/busybox, /dev/console, `/init` = `init` and `files` (`(path, bytes)`,
/// regular files under existing directories: `bin`, `dev`, `proc`, `lib`).
pub(crate) fn busybox_initramfs_with(
    busybox: &Path,
    init: &str,
    files: &[(&str, Vec<u8>)],
) -> Result<Vec<u8>, String> {
    let bb = std::fs::read(busybox).map_err(|e| format!("{}: {e}", busybox.display()))?;
    let mut out = Vec::new();
    let mut ino = 0u32;
    let mut add = |name: &str, mode: u32, data: &[u8], rdev: (u32, u32)| {
        ino += 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    add("bin", 0o040755, &[], (0, 0));
    add("dev", 0o040755, &[], (0, 0));
    add("proc", 0o040755, &[], (0, 0));
    add("dev/console", 0o020600, &[], (5, 1));
    add("lib", 0o040755, &[], (0, 0));
    add("bin/busybox", 0o100755, &bb, (0, 0));
    for (name, data) in files {
        add(name, 0o100644, data, (0, 0));
    }
    add("init", 0o100755, init.as_bytes(), (0, 0));
    add("TRAILER!!!", 0, &[], (0, 0));
    while out.len() % 512 != 0 {
        out.push(0);
    }
    Ok(out)
}

/// The kernel's own timestamp of "Run /init" (seconds), from its console.
fn init_timestamp(out: &Outcome) -> Option<f64> {
    let line = out
        .lines
        .iter()
        .find(|l| l.contains("Run /init as init process"))?;
    let inner = line.split_once('[')?.1.split_once(']')?.0;
    inner.trim().parse().ok()
}

/// Debian's kernel bare under QEMU (no Bulwark), for the timing comparison.
fn run_linux_bare(kernel: &Path, initrd: &Path, icount: bool) -> Result<Outcome, String> {
    let mut cmd = Command::new(QEMU);
    cmd.args(["-M", "virt,gic-version=3", "-cpu", LINUX_CPU, "-m", MEMORY])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", LINUX_CMDLINE]);
    if icount {
        cmd.args(["-icount", "shift=0"]);
    }
    util::run_emulator(Emulator {
        cmd,
        serial: Serial::Stdout,
        timeout: Duration::from_secs(120),
        echo: false,
        log: out()?.join("qemu-linux-bare.log"),
    })
}

/// Debian's kernel, the busybox initramfs and the bundle of both Bulwark boots (built on demand).
pub(crate) struct LinuxPayload {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub bundle: PathBuf,
}

pub(crate) fn linux_payload() -> Result<LinuxPayload, String> {
    let (kernel, busybox) = debian_kernel_and_busybox()?;
    let dir = debian_dir()?;
    let initramfs = dir.join("initramfs.cpio");
    std::fs::write(&initramfs, busybox_initramfs(&busybox)?).map_err(|e| e.to_string())?;
    let payload = dir.join("linux-bundle.bin");
    bundle(&kernel, &initramfs, &payload)?;
    Ok(LinuxPayload {
        kernel,
        initramfs,
        bundle: payload,
    })
}

/// The console shows the /init marker, then the kernel's power-off.
pub(crate) fn need_init_then_power_off(out: &Outcome) -> Result<(), String> {
    let marker = out.lines.iter().position(|l| l.contains(INIT_MARKER));
    let off = out
        .lines
        .iter()
        .position(|l| l.contains("reboot: Power down"));
    match (marker, off) {
        (Some(m), Some(p)) if m < p => Ok(()),
        _ => Err(format!(
            "expected the /init marker, then a power-off\n--- console tail ---\n{}",
            out.tail(25)
        )),
    }
}

fn linux_scenario() -> Result<(), String> {
    let LinuxPayload {
        kernel,
        initramfs,
        bundle: payload,
    } = linux_payload()?;
    let o = RunOpts {
        cpu: Some(LINUX_CPU.into()),
        guest_cmdline: LINUX_CMDLINE.into(),
        timeout: Some(120),
        ..quiet()
    };
    let x = Extra {
        payload: Some(payload),
        ..Extra::default()
    };
    let out = run_with(&o, &x)?;
    out.expect(0, reason::GUEST_EXIT)?;
    // The ~34 MiB bundle does not fit the room left in Bulwark's 32 MiB for a pristine copy:
    // Bulwark says so, and a SYSTEM_RESET of this guest would end the run (docs/aarch64.md).
    need(&out, "does not fit the")?;
    // The kernel's own SMCCC probes find SMCCC 1.1 and KVM's services with ROE at function 64
    // (docs/smccc.md; xtask/src/smccc_tests.rs has the upstream-ABI run).
    need(&out, "psci: SMC Calling Convention v1.1")?;
    need(
        &out,
        "smccc: KVM: hypervisor services detected (0x00000000 0x00000003 0x00000000 0x0000003d)",
    )?;
    need_init_then_power_off(&out)?;
    // Cost of running under Bulwark: the kernel's time to /init with QEMU's clock tied to
    // executed instructions (-icount shift=0), bare vs under Bulwark: repeatable, unlike wall time.
    let bare = run_linux_bare(&kernel, &initramfs, true)?;
    let under = run_with(
        &o,
        &Extra {
            qemu_args: vec!["-icount".into(), "shift=0".into()],
            ..x
        },
    )?;
    let (Some(tb), Some(tu)) = (init_timestamp(&bare), init_timestamp(&under)) else {
        return Err("no 'Run /init' timestamp in the icount runs".into());
    };
    let ratio = tu / tb;
    util::progress(&format!(
        "    Linux to /init (icount): bare {tb:.6} s, under Bulwark {tu:.6} s ({:+.2}%); wall: under Bulwark {:.2} s",
        (ratio - 1.0) * 100.0,
        out.seconds
    ));
    if ratio > 1.05 {
        return Err(format!(
            "Linux under Bulwark took {:.1}% longer to reach /init than bare (limit 5%)",
            (ratio - 1.0) * 100.0
        ));
    }
    Ok(())
}

/// The host-physical address of `needle` in Bulwark's Image (linked and loaded at 0x40080000;
/// the flat Image's first byte is that address).
fn bulwark_string_addr(needle: &[u8]) -> Result<u64, String> {
    let img = out()?.join("bulwark.img");
    let bytes = std::fs::read(&img).map_err(|e| format!("{}: {e}", img.display()))?;
    let off = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .ok_or_else(|| {
            format!(
                "{:?} not found in {}",
                String::from_utf8_lossy(needle),
                img.display()
            )
        })?;
    Ok(0x4008_0000 + off as u64)
}

pub(crate) fn refute(out: &Outcome, needle: &str, why: &str) -> Result<(), String> {
    if out.has(needle) {
        return Err(format!(
            "{why}: console has {needle:?}\n--- console tail ---\n{}",
            out.tail(25)
        ));
    }
    Ok(())
}

/// The breach scenarios of issue 12 and the device-policy ones of issue 13 (arm64).
fn breach_scenarios(emu: &'static str) -> Vec<Scenario> {
    vec![
        Scenario::new(
            "aarch64: fw_cfg DMA (issue 12.1): device hidden, locked page and Bulwark's memory unchanged",
            emu,
            || {
                build(false)?;
                // DMA aimed at the text of Bulwark's own counters line: were it performed, the
                // line would read "QEMUters exits=".
                let target = bulwark_string_addr(b"counters exits=")?;
                let o = RunOpts {
                    guest_cmdline: format!("scenario=fwcfg fwcfg-target={target:#x}"),
                    ..quiet()
                };
                let out = run_guest(&o)?;
                out.expect(0, reason::GUEST_EXIT)?;
                need(&out, "testguest: fwcfg: all checks passed")?;
                need(&out, "bulwark: INFO device /fw-cfg@9020000: hidden from the guest (DMA master: fw_cfg")?;
                need(&out, "(32 nodes): hidden from the guest (DMA master: virtio-mmio")?;
                need(&out, "device /pcie@10000000: hidden from the guest (DMA master: PCI host bridge")?;
                need(&out, "bulwark: WARN stage-2 abort: ipa=0x9020010")?;
                need(&out, "hidden device /fw-cfg@9020000 (DMA master")?;
                need(&out, "bulwark: INFO counters exits=")?;
                refute(&out, "QEMUters", "fw_cfg DMA wrote into Bulwark's memory")?;
                refute(&out, "testguest: FAIL", "a guest check failed")
            },
        ),
        Scenario::new(
            "aarch64: passthrough=fw-cfg@9020000 hands the device over with a warning; unknown names refused",
            emu,
            || {
                let o = RunOpts {
                    cmdline: "passthrough=fw-cfg@9020000".into(),
                    guest_cmdline: "scenario=fwcfg-pass".into(),
                    ..quiet()
                };
                let out = run_guest(&o)?;
                out.expect(0, reason::GUEST_EXIT)?;
                need(&out, "testguest: fwcfg-pass: all checks passed")?;
                need(&out, "bulwark: WARN device /fw-cfg@9020000: passed through because passthrough= names it")?;
                need(&out, "no longer hold against this device")?;
                need(&out, "1 passed through on request (WARNING above)")?;
                let o = RunOpts {
                    cmdline: "passthrough=fw-cfg@9020001".into(),
                    guest_cmdline: "scenario=fwcfg-pass".into(),
                    ..quiet()
                };
                let out = run_guest(&o)?;
                out.expect(STATUS_BULWARK_FAILURE, reason::REFUSED)?;
                need(&out, "bad command-line token 'passthrough=fw-cfg@9020001': 'fw-cfg@9020001': no device of that name")
            },
        ),
        Scenario::new(
            "aarch64: semihosting (issue 12.2): hlt #0xf000 is undefined at EL1, the verdict is Bulwark's",
            emu,
            || {
                let file = std::path::Path::new("bulwark-semihosting-breach.txt");
                let _ = std::fs::remove_file(file);
                let o = RunOpts {
                    guest_cmdline: "scenario=semihost".into(),
                    ..quiet()
                };
                let out = run_guest(&o)?;
                // A served SYS_EXIT would end QEMU without Bulwark's result line.
                out.expect(0, reason::GUEST_EXIT)?;
                need(&out, "testguest: semihost: all checks passed")?;
                need(&out, "bulwark: INFO guest: PSCI SYSTEM_OFF")?;
                refute(&out, "SEMIHOSTING-BREACH", "a semihosting SYS_WRITE0 was served")?;
                if file.exists() {
                    return Err(format!("a semihosting SYS_OPEN created {}", file.display()));
                }
                Ok(())
            },
        ),
        Scenario::new(
            "aarch64: ROE walk through a page table in an attr=--- page (issue 12.3) is refused",
            emu,
            || {
                build(false)?;
                let elf = util::target_dir()
                    .join(TARGET)
                    .join("debug")
                    .join("aarch64-testguest");
                let a = crate::attr_tests::symbols(&elf, &["NOREAD_TABLE"])?[0];
                let o = RunOpts {
                    cmdline: format!("attr={a:#x}+4K:---"),
                    guest_cmdline: "scenario=walk-noread".into(),
                    ..quiet()
                };
                let out = run_guest(&o)?;
                out.expect(0, reason::GUEST_EXIT)?;
                need(&out, "testguest: walk-noread: all checks passed")?;
                need(
                    &out,
                    &format!("needed a page-table entry at ipa={a:#x}, in a page the guest may not read"),
                )
            },
        ),
        Scenario::new(
            "aarch64: a store writing a third protected page (issue 12) ends the run with a clear line",
            emu,
            || {
                let o = RunOpts {
                    guest_cmdline: "scenario=third-page".into(),
                    timeout: Some(20),
                    ..quiet()
                };
                let out = run_guest(&o)?;
                out.expect(STATUS_BULWARK_FAILURE, reason::UNHANDLED_EXIT)?;
                need(&out, "software store: the store at pc=")?;
                need(&out, "writes a third page with protected bytes")?;
                refute(&out, "still running after the scatter store", "the guest continued")
            },
        ),
    ]
}

/// The arm64 rows of `cargo xtask test`.
pub fn scenarios() -> Vec<Scenario> {
    let emu = "qemu virt el2";
    let mut v = breach_scenarios(emu);
    v.splice(0..0, base_scenarios(emu));
    v.extend(crate::dma_tests::scenarios(emu));
    v
}

fn base_scenarios(emu: &'static str) -> Vec<Scenario> {
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
        Scenario::new(
            "aarch64: loaded as firmware (EL3, address 0) is refused",
            "qemu virt el3",
            || {
                let out = run_with(
                    &RunOpts {
                        timeout: Some(10),
                        ..quiet()
                    },
                    &Extra {
                        as_firmware: true,
                        no_guest: true,
                        ..Extra::default()
                    },
                )?;
                out.expect(STATUS_BULWARK_FAILURE, reason::REFUSED)?;
                need(&out, "not running at its link address")
            },
        ),
        Scenario::new("aarch64: bad Bulwark command line is refused", emu, || {
            let o = RunOpts {
                cmdline: "violation=sometimes".into(),
                ..quiet()
            };
            let out = run_guest(&o)?;
            out.expect(STATUS_BULWARK_FAILURE, reason::REFUSED)?;
            need(&out, "violation=sometimes")
        }),
        Scenario::new("aarch64: test guest passes under stage 2", emu, || {
            let o = RunOpts {
                guest_cmdline: "from-xtask".into(),
                ..quiet()
            };
            let out = run_guest(&o)?;
            out.expect(0, reason::GUEST_EXIT)?;
            need(&out, "testguest: bootargs \"from-xtask\"")?;
            need(&out, "testguest: all checks passed")?;
            need(&out, "bulwark: WARN stage-2 abort: ipa=0x5e000000")?;
            need(&out, "bulwark: violation kind=roe access=write")?;
            need(&out, "bulwark: violation kind=roe-chunk access=write")?;
            need(
                &out,
                "bulwark: violation kind=mmio-guard access=read gpa=0x9010000",
            )?;
            need(&out, "bulwark: violation kind=mmio-guard access=read gpa=0x8001000")?;
            need(&out, "testguest: ok   LDXR/STXR onto protected bytes")?;
            need(&out, "testguest: ok   ROE from EL0")?;
            need(&out, "bulwark: INFO counters exits=")?;
            counter_at_least(&out, "sw_steps", 10)?;
            counter_at_least(&out, "sw_exclusive", 3)?;
            counter_at_least(&out, "violations_mmio_guard", 5)
        }),
        Scenario::new(
            "aarch64: violation=inject: every store form refused with an external abort, registers as before",
            emu,
            || {
                let o = RunOpts {
                    cmdline: "violation=inject".into(),
                    guest_cmdline: "policy=inject".into(),
                    ..quiet()
                };
                let out = run_guest(&o)?;
                out.expect(0, reason::GUEST_EXIT)?;
                need(&out, "testguest: all checks passed")?;
                need(&out, "bulwark: violation kind=roe access=write")?;
                need(&out, "bulwark: violation kind=roe-chunk access=write")?;
                need(&out, "action=inject")?;
                if out.has("action=skip") {
                    return Err("a violation was skipped under violation=inject".into());
                }
                counter_at_least(&out, "sw_steps", 10)
            },
        ),
        Scenario::new(
            "aarch64: violation=halt stops at a store without syndrome (STP onto a chunk)",
            emu,
            || {
                let o = RunOpts {
                    cmdline: "violation=halt".into(),
                    guest_cmdline: "scenario=roe-stp".into(),
                    ..quiet()
                };
                let out = run_guest(&o)?;
                out.expect(STATUS_BULWARK_FAILURE, reason::VIOLATION_HALT)?;
                need(&out, "bulwark: violation kind=roe-chunk access=write")?;
                need(&out, "action=halt")?;
                if out.has("still running after the STP") {
                    return Err("the guest ran past the halting STP".into());
                }
                Ok(())
            },
        ),
        Scenario::new(
            "aarch64: SYSTEM_RESET reboots the guest; MMIO guard and ROE state do not survive it",
            emu,
            || {
                // The guest checks on both boots that this boot-time attribute holds.
                let o = RunOpts {
                    cmdline: "attr=0x40030000+4K:r--".into(),
                    guest_cmdline: "scenario=mmio-reset".into(),
                    ..quiet()
                };
                let out = run_guest(&o)?;
                out.expect(0, reason::GUEST_EXIT)?;
                let boots = out
                    .lines
                    .iter()
                    .filter(|l| l.contains("testguest: started"))
                    .count();
                if boots != 2 {
                    return Err(format!("{boots} guest boots, want 2\n{}", out.tail(30)));
                }
                need(&out, "testguest: ok   first boot: enrolled (0), UART mapped (0)")?;
                need(&out, "bulwark: violation kind=mmio-guard access=read gpa=0x9010000")?;
                need(&out, "MMIO guard enrolment on with 1 mapped granule(s)")?;
                need(&out, "bulwark: INFO guest reset: reboot 1")?;
                need(&out, "testguest: second boot: marker")?;
                need(&out, "testguest: reboot checks passed")?;
                need(&out, "second boot: a store to the attr= read-only page")?;
                need(&out, "bulwark: violation kind=attr access=write gpa=0x40030000")?;
                if out.has("testguest: FAIL") || out.has("guest reset: reboot 2") {
                    return Err(format!("unexpected FAIL or second reboot\n{}", out.tail(30)));
                }
                Ok(())
            },
        ),
        Scenario::new(
            "aarch64: maxresets=1 bounds the reboots (a guest that resets twice ends with 178)",
            emu,
            || {
                let o = RunOpts {
                    cmdline: "maxresets=1".into(),
                    guest_cmdline: "scenario=reset-loop".into(),
                    ..quiet()
                };
                let out = run_guest(&o)?;
                out.expect(STATUS_GUEST_RESET, "guest-reset")?;
                need(&out, "testguest: reset-loop boot 1")?;
                need(&out, "bulwark: INFO guest reset: reboot 1")?;
                need(&out, "testguest: reset-loop boot 2")?;
                need(&out, "guest reset: reboot limit reached (1 reboot(s), maxresets=1)")?;
                if out.has("reset-loop boot 3") {
                    return Err("the guest booted a third time under maxresets=1".into());
                }
                Ok(())
            },
        ),
        Scenario::new(
            "aarch64: the demo (xtask run without --guest): both attacks refused, guest survives",
            emu,
            || {
                let out = run(&quiet())?;
                out.expect(0, reason::GUEST_EXIT)?;
                need(&out, "demo: enrolled in MMIO guard (0), mapped only the UART (0)")?;
                need(&out, "bulwark: violation kind=mmio-guard access=read gpa=0x9010000")?;
                need(&out, "attacker: refused: synchronous external abort")?;
                need(&out, "bulwark: violation kind=roe access=write")?;
                need(&out, "unchanged")?;
                need(&out, "demo: both attacks refused; the guest survived")?;
                need(&out, "bulwark: INFO counters exits=")
            },
        ),
        Scenario::new(
            "aarch64: violation=halt stops at the first ROE write",
            emu,
            || {
                let o = RunOpts {
                    cmdline: "violation=halt".into(),
                    ..quiet()
                };
                let out = run_guest(&o)?;
                out.expect(STATUS_BULWARK_FAILURE, reason::VIOLATION_HALT)?;
                need(&out, "bulwark: violation kind=roe access=write")?;
                need(&out, "action=halt")
            },
        ),
        Scenario::new("aarch64: guest status via GUEST_EXIT", emu, || {
            let o = RunOpts {
                guest_cmdline: "exit=42".into(),
                ..quiet()
            };
            let out = run_guest(&o)?;
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
            let out = run_guest(&o)?;
            out.expect(0, reason::GUEST_EXIT)?;
            need(&out, "raw binary")?;
            need(&out, "testguest: all checks passed")
        }),
        Scenario::new("aarch64: guest exception loop ends the run", emu, || {
            let o = RunOpts {
                guest_cmdline: "crash=loop".into(),
                ..quiet()
            };
            let out = run_guest(&o)?;
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
                let out = run_guest(&o)?;
                out.expect(STATUS_GUEST_CRASH, reason::GUEST_CRASH)?;
                need(&out, "aborts in a row")
            },
        ),
        Scenario::new(
            "aarch64: Debian arm64 kernel boots to /init and powers off",
            "qemu virt el2",
            linux_scenario,
        ),
    ]
}
