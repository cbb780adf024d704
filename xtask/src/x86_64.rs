//! x86_64 side of xtask: build Bulwark and the test guest, make a GRUB ISO, run it in Bochs (VMX
//! with EPT), QEMU TCG (boot only: no VMX) or QEMU/KVM with nested VMX, and the test scenarios.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bulwark_abi::console::{reason, STATUS_BULWARK_FAILURE};

use crate::util::{self, Emulator, Outcome, RunOpts, Scenario, Serial};

const TARGET: &str = "x86_64-unknown-none";
const DEFAULT_BOCHS_CPU: &str = "tigerlake";
const BOCHS_TIMEOUT_S: u64 = 60;
const QEMU_TIMEOUT_S: u64 = 30;
/// OVMF under TCG takes about 10 s to reach GRUB on 2 cores.
const QEMU_UEFI_TIMEOUT_S: u64 = 120;
const MEMORY_MIB: u32 = 256;

fn out() -> Result<PathBuf, String> {
    util::out_dir("x86_64")
}

/// Build Bulwark and the test guest. Returns Bulwark's ELF; the guest (converted to the ELF32
/// that Multiboot v1 loaders expect) is at [`test_guest_path`].
pub fn build(release: bool) -> Result<PathBuf, String> {
    let bulwark = util::cargo_build("bulwark", "bulwark", TARGET, release)?;
    build_test_guest(release)?;
    Ok(bulwark)
}

/// Where `build` puts the Multiboot v1 test guest.
pub fn test_guest_path() -> Result<PathBuf, String> {
    Ok(out()?.join("x86_64-testguest.elf32"))
}

fn build_test_guest(release: bool) -> Result<PathBuf, String> {
    let elf64 = util::cargo_build("x86_64-testguest", "x86_64-testguest", TARGET, release)?;
    util::need_tool("llvm-objcopy", "llvm")?;
    let elf32 = test_guest_path()?;
    // Multiboot v1 loaders (GRUB, QEMU -kernel, Bulwark) take ELF32; kvm-unit-tests converts the
    // same way. The guest's 64-bit code is only reached after its own switch to long mode.
    util::run_checked(
        Command::new("llvm-objcopy")
            .args(["-O", "elf32-i386"])
            .arg(&elf64)
            .arg(&elf32),
        "llvm-objcopy -O elf32-i386 (test guest)",
    )?;
    Ok(elf32)
}

fn grub_cfg(cmdline: &str, guest: bool, guest_cmdline: &str, initrd: bool) -> String {
    let mut s = String::from(
        "# Bulwark boot entry. For real hardware, copy /boot/bulwark and /boot/guest to your boot\n\
         # partition and this menu entry to your grub.cfg.\n\
         set timeout=0\nset default=0\n\n\
         menuentry \"Bulwark\" {\n",
    );
    s.push_str(&format!("    multiboot2 /boot/bulwark {cmdline}\n"));
    if guest {
        s.push_str(&format!("    module2 /boot/guest {guest_cmdline}\n"));
    }
    if guest && initrd {
        s.push_str("    module2 /boot/initrd\n");
    }
    s.push_str("    boot\n}\n");
    s
}

/// Build a GRUB rescue ISO: Bulwark plus the guest (`--guest`, default the test guest).
pub fn iso(o: &RunOpts) -> Result<PathBuf, String> {
    iso_named(o, "bulwark")
}

/// Runs use a private ISO (several xtask processes may share the target directory).
fn run_iso(o: &RunOpts) -> Result<PathBuf, String> {
    iso_named(o, &format!("run-{}", std::process::id()))
}

fn remove_run_files(iso: &Path) {
    let _ = std::fs::remove_file(iso);
    if let Some(stem) = iso.file_stem() {
        let _ =
            std::fs::remove_dir_all(iso.with_file_name(format!("{}-root", stem.to_string_lossy())));
    }
}

/// GRUB's platform directories: grub-mkrescue puts every installed one into the image, so with
/// both the ISO boots on BIOS (El Torito) and on UEFI (an EFI system partition image).
const GRUB_BIOS_DIR: &str = "/usr/lib/grub/i386-pc";
const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";
/// Debian's OVMF (package `ovmf`): code and a template of the variable store.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

fn iso_named(o: &RunOpts, stem: &str) -> Result<PathBuf, String> {
    util::need_tool("grub-mkrescue", "grub-common grub-pc-bin")?;
    // One hybrid image for BIOS and UEFI machines: refuse to make a half one.
    util::need_file(GRUB_BIOS_DIR, "grub-pc-bin")?;
    util::need_file(GRUB_EFI_DIR, "grub-efi-amd64-bin")?;
    util::need_tool("xorriso", "xorriso")?;
    util::need_tool("mformat", "mtools")?;
    let bulwark = build(o.release)?;
    let guest = match &o.guest {
        Some(g) => g.clone(),
        None => test_guest_path()?,
    };
    for (what, s) in [
        ("--cmdline", &o.cmdline),
        ("--guest-cmdline", &o.guest_cmdline),
    ] {
        if s.contains(['\n', '"', '\'', '\\', '$', ';']) {
            return Err(format!(
                "{what} {s:?}: newlines, quotes, backslashes, '$' and ';' cannot be passed through grub.cfg"
            ));
        }
    }
    let dir = out()?;
    let stage = dir.join(format!("{stem}-root"));
    let _ = std::fs::remove_dir_all(&stage);
    let bootdir = stage.join("boot");
    std::fs::create_dir_all(bootdir.join("grub"))
        .map_err(|e| format!("{}: {e}", stage.display()))?;
    copy(&bulwark, &bootdir.join("bulwark"))?;
    copy(&guest, &bootdir.join("guest"))?;
    if let Some(i) = &o.initrd {
        copy(i, &bootdir.join("initrd"))?;
    }
    std::fs::write(
        bootdir.join("grub").join("grub.cfg"),
        grub_cfg(&o.cmdline, true, &o.guest_cmdline, o.initrd.is_some()),
    )
    .map_err(|e| format!("writing grub.cfg: {e}"))?;
    let iso = dir.join(format!("{stem}.iso"));
    util::progress("grub-mkrescue");
    util::run_checked(
        Command::new("grub-mkrescue")
            .arg("-o")
            .arg(&iso)
            .arg(&stage),
        "grub-mkrescue",
    )?;
    Ok(iso)
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

/// Boot Bulwark: Bochs (default, VMX with EPT) or `--emulator qemu` (QEMU TCG: no VMX, so Bulwark
/// boots, reports VMX absent and refuses; useful for the boot path).
pub fn run(o: &RunOpts) -> Result<Outcome, String> {
    let uefi = o.firmware.as_deref() == Some("uefi");
    match o.emulator.as_deref() {
        None | Some("bochs") if uefi => Err(
            "--firmware uefi needs --emulator qemu: Bochs runs only its own BIOS (it cannot run \
             OVMF), and QEMU does not emulate VMX, so a UEFI run shows the boot path and ends in \
             Bulwark's clean refusal"
                .into(),
        ),
        _ if o.firmware.as_deref() == Some("uboot") => {
            Err("--firmware uboot is for aarch64; x86_64 boots through GRUB (bios or uefi)".into())
        }
        None | Some("bochs") => run_bochs(o),
        Some("qemu") => run_qemu(o, false),
        Some(e) => Err(format!("unknown emulator {e}")),
    }
}

fn bochsrc(model: &str, ips: u64, cpus: u32, iso: &Path, serial: &Path, log: &Path) -> String {
    format!(
        "# Generated by cargo xtask (x86_64). See docs/x86_64.md.\n\
         memory: guest={MEMORY_MIB}, host={MEMORY_MIB}\n\
         cpu: model={model}, count={cpus}, ips={ips}, reset_on_triple_fault=0\n\
         romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
         vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest\n\
         display_library: rfb, options=\"timeout=0\"\n\
         sound: driver=dummy\n\
         clock: sync=none, time0=local\n\
         boot: cdrom\n\
         ata0-master: type=cdrom, path={iso}, status=inserted\n\
         com1: enabled=1, mode=file, dev={serial}\n\
         log: {log}\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=report\n\
         debug: action=ignore\n",
        iso = iso.display(),
        serial = serial.display(),
        log = log.display(),
    )
}

fn run_bochs(o: &RunOpts) -> Result<Outcome, String> {
    util::need_tool("bochs", "bochs bochsbios vgabios")?;
    let iso = run_iso(o)?;
    let dir = out()?;
    let model = o.cpu.as_deref().unwrap_or(DEFAULT_BOCHS_CPU);
    let tag = model.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "-");
    // Per-process names while running (other xtask processes may share this directory); the
    // files are renamed to `<name>-<model>.log` afterwards for people to read.
    let pid = std::process::id();
    let serial = dir.join(format!("serial-{tag}-{pid}.log"));
    let blog = dir.join(format!("bochs-{tag}-{pid}.log"));
    let rc = dir.join(format!("bochsrc-{tag}"));
    std::fs::write(
        &rc,
        bochsrc(
            model,
            o.bochs_ips.unwrap_or(4_000_000),
            o.bochs_cpus.unwrap_or(1),
            &iso,
            &serial,
            &blog,
        ),
    )
    .map_err(|e| format!("writing {}: {e}", rc.display()))?;
    let cont = dir.join("bochs-continue.rc");
    std::fs::write(&cont, "c\n").map_err(|e| format!("writing {}: {e}", cont.display()))?;
    let rc_run = dir.join(format!("bochsrc-{tag}-{pid}"));
    std::fs::copy(&rc, &rc_run).map_err(|e| format!("writing {}: {e}", rc_run.display()))?;
    let mut cmd = Command::new("bochs");
    cmd.current_dir(&dir)
        .arg("-q")
        .arg("-f")
        // The per-process copy: another xtask process may rewrite `bochsrc-<model>` (the copy
        // kept for people to read) with its own serial path while this Bochs starts.
        .arg(&rc_run)
        .arg("-rc")
        .arg(&cont);
    util::progress(&format!(
        "bochs cpu={model} (console: {})",
        serial.display()
    ));
    let r = util::run_emulator(Emulator {
        cmd,
        serial: Serial::File(serial),
        timeout: Duration::from_secs(o.timeout.unwrap_or(BOCHS_TIMEOUT_S)),
        echo: !o.quiet,
        log: dir.join(format!("bochs-stdout-{tag}.log")),
    });
    let _ = std::fs::remove_file(&rc_run);
    r
}

fn run_qemu(o: &RunOpts, kvm: bool) -> Result<Outcome, String> {
    util::need_tool("qemu-system-x86_64", "qemu-system-x86")?;
    let iso = run_iso(o)?;
    let dir = out()?;
    let mut cmd = Command::new("qemu-system-x86_64");
    if kvm {
        cmd.args(["-enable-kvm", "-cpu", o.cpu.as_deref().unwrap_or("host")]);
    } else {
        cmd.args(["-accel", "tcg", "-cpu", o.cpu.as_deref().unwrap_or("max")]);
    }
    let uefi = o.firmware.as_deref() == Some("uefi");
    let mut vars_copy = None;
    if uefi {
        util::need_file(OVMF_CODE, "ovmf")?;
        util::need_file(OVMF_VARS, "ovmf")?;
        // A private copy of the variable store: OVMF writes to it.
        let vars = dir.join(format!("ovmf-vars-{}.fd", std::process::id()));
        std::fs::copy(OVMF_VARS, &vars).map_err(|e| format!("copying {OVMF_VARS}: {e}"))?;
        cmd.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
        vars_copy = Some(vars);
    }
    cmd.args(["-m", &format!("{MEMORY_MIB}M")])
        .arg("-cdrom")
        .arg(&iso)
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]);
    util::progress(if kvm { "qemu (kvm)" } else { "qemu (tcg)" });
    let r = util::run_emulator(Emulator {
        cmd,
        serial: Serial::Stdout,
        timeout: Duration::from_secs(o.timeout.unwrap_or(if uefi {
            QEMU_UEFI_TIMEOUT_S
        } else {
            QEMU_TIMEOUT_S
        })),
        echo: !o.quiet,
        log: dir.join(match (kvm, uefi) {
            (true, _) => "qemu-kvm.log",
            (false, true) => "qemu-tcg-uefi.log",
            (false, false) => "qemu-tcg.log",
        }),
    });
    remove_run_files(&iso);
    if let Some(v) = vars_copy {
        let _ = std::fs::remove_file(v);
    }
    r
}

/// Why QEMU/KVM cannot run Bulwark's guests here, or None when it can.
fn kvm_nested_vmx_missing() -> Option<String> {
    if !Path::new("/dev/kvm").exists() {
        return Some("there is no /dev/kvm".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let vmx = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx"));
    if !vmx {
        return Some("the host CPU does not expose VMX (no 'vmx' flag in /proc/cpuinfo)".into());
    }
    let nested = std::fs::read_to_string("/sys/module/kvm_intel/parameters/nested")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if nested != "Y" && nested != "1" {
        return Some(
            "kvm_intel is not loaded with nested=1 (/sys/module/kvm_intel/parameters/nested)"
                .into(),
        );
    }
    None
}

/// QEMU with KVM and nested VMX, `-cpu host`: only where the host offers nested VMX.
pub fn qemu(o: &RunOpts) -> Result<Outcome, String> {
    if let Some(why) = kvm_nested_vmx_missing() {
        return Err(format!(
            "cannot run Bulwark under QEMU/KVM here: {why}. Bulwark needs VMX with EPT and \
             unrestricted guest, and QEMU's TCG does not emulate VMX, so QEMU only helps on an \
             Intel host whose KVM offers nested VMX. Run `cargo xtask run --arch x86_64` instead: \
             Bochs emulates VMX with EPT (add `--cpu corei7_skylake_x` for a CPU without SPP), or \
             `cargo xtask run --arch x86_64 --emulator qemu` to check only the boot path."
        ));
    }
    run_qemu(o, true)
}

fn opts(cpu: Option<&str>, emulator: &str, guest_cmdline: &str) -> RunOpts {
    RunOpts {
        arch: Some(util::Arch::X86_64),
        emulator: Some(emulator.into()),
        cpu: cpu.map(str::to_string),
        guest_cmdline: guest_cmdline.into(),
        quiet: true,
        ..RunOpts::default()
    }
}

/// Load address of the generated guest (2 MiB).
const TINY_BASE: u32 = 0x20_0000;

/// A Multiboot v1 guest that is not built from this repository: 56 bytes of hand-assembled
/// 32-bit code using the header's load addresses (flag 16, no ELF). It prints `message` on COM1
/// and writes `status` to port 0xf4, then halts. Layout: [0, 32) Multiboot header with
/// addresses; [32, 56) code; [56, ..) the NUL-terminated message.
pub fn tiny_guest(message: &str, status: u8) -> Vec<u8> {
    let flags: u32 = (1 << 16) | 0b11;
    let magic: u32 = 0x1bad_b002;
    let mut b = Vec::new();
    for w in [
        magic,
        flags,
        0u32.wrapping_sub(magic.wrapping_add(flags)),
        TINY_BASE, // header_addr (header at file offset 0)
        TINY_BASE, // load_addr
        0,         // load_end_addr: the whole file
        0,         // bss_end_addr: no bss
        TINY_BASE + 32,
    ] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    let msg = TINY_BASE + 56;
    b.push(0xbe); // mov esi, msg
    b.extend_from_slice(&msg.to_le_bytes());
    b.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    b.push(0xac); // 41: lodsb
    b.extend_from_slice(&[0x84, 0xc0]); // test al, al
    b.extend_from_slice(&[0x74, 0x03]); // jz 49
    b.push(0xee); // out dx, al
    b.extend_from_slice(&[0xeb, 0xf8]); // jmp 41
    b.extend_from_slice(&[0xb0, status]); // 49: mov al, status
    b.extend_from_slice(&[0xe6, 0xf4]); // out 0xf4, al
    b.push(0xf4); // 53: hlt
    b.extend_from_slice(&[0xeb, 0xfd]); // jmp 53
    debug_assert_eq!(b.len(), 56);
    b.extend_from_slice(message.as_bytes());
    b.push(0);
    b
}

fn expect_lines(out: &Outcome, needles: &[&str]) -> Result<(), String> {
    for n in needles {
        if !out.has(n) {
            return Err(format!(
                "no line containing '{n}'\n--- console tail ---\n{}",
                out.tail(25)
            ));
        }
    }
    Ok(())
}

/// The x86 entries of `cargo xtask test`.
pub fn scenarios() -> Vec<Scenario> {
    let mut v = vec![
        Scenario::new(
            "x86 boot: banner, VMX absent, clean refusal",
            "qemu tcg",
            || {
                let out = run(&opts(None, "qemu", ""))?;
                out.expect(STATUS_BULWARK_FAILURE, reason::REFUSED)?;
                expect_lines(
                    &out,
                    &[
                        "cpu: vendor=",
                        "vmx: absent",
                        "boot: firmware=bios",
                        "memory: [",
                        "acpi: 1 CPU(s) in the MADT",
                        "dma: unconfined: the platform reports no IOMMU",
                        "VMX is not available",
                    ],
                )
            },
        ),
        Scenario::new(
            "x86 UEFI boot: OVMF, GRUB EFI, EFI tags, banner, clean refusal",
            "qemu tcg ovmf",
            || {
                let mut o = opts(None, "qemu", "");
                o.firmware = Some("uefi".into());
                let out = run(&o)?;
                out.expect(STATUS_BULWARK_FAILURE, reason::REFUSED)?;
                expect_lines(
                    &out,
                    &[
                        "boot: firmware=uefi efi-system-table=0x",
                        "memory: [",
                        "acpi: rsdp revision=2",
                        "acpi: 1 CPU(s) in the MADT",
                        "dma: unconfined: the platform reports no IOMMU",
                        "VMX is not available",
                    ],
                )?;
                if out.lines.iter().any(|l| l.contains("firmware=bios")) {
                    return Err("a UEFI boot reported firmware=bios".into());
                }
                Ok(())
            },
        ),
        Scenario::new(
            "x86 bad Bulwark command line is refused",
            "qemu tcg",
            || {
                let mut o = opts(None, "qemu", "");
                o.cmdline = "violation=sometimes".into();
                let out = run(&o)?;
                out.expect(STATUS_BULWARK_FAILURE, reason::REFUSED)?;
                expect_lines(&out, &["bad command-line token 'violation=sometimes'"])
            },
        ),
    ];
    for model in ["tigerlake", "corei7_skylake_x"] {
        v.push(Scenario::new(
            "x86 test guest: environment checks",
            format!("bochs {model}"),
            move || {
                // log=debug: Bulwark's VMX self-check line proves on this CPU model that a
                // failing VMREAD/VMWRITE is detected (docs/x86_64.md, "Fail closed").
                let out = run(&RunOpts {
                    cmdline: "log=debug".into(),
                    ..opts(Some(model), "bochs", "")
                })?;
                out.expect(0, reason::GUEST_EXIT)?;
                expect_lines(
                    &out,
                    &[
                        "bulwark: DEBUG VMX self-check: failing VMREAD/VMWRITE detected (unsupported field: error 12",
                        "guest| PASS vmcall-unknown",
                        "guest| PASS emulator-shutdown-port",
                        "guest| 0 check(s) failed",
                    ],
                )
            },
        ));
    }
    v.push(Scenario::new(
        "x86 ROE MPROTECT: page locked, write skipped, bad arguments -EINVAL",
        "bochs corei7_skylake_x",
        || {
            let out = run(&opts(Some("corei7_skylake_x"), "bochs", "scenario=roe"))?;
            out.expect(0, reason::GUEST_EXIT)?;
            expect_lines(
                &out,
                &[
                    "bulwark: violation kind=roe access=write",
                    "guest| 0 check(s) failed",
                ],
            )
        },
    ));
    v.push(Scenario::new(
        "x86 ROE with violation=inject: the write raises #GP(0)",
        "bochs tigerlake",
        || {
            let mut o = opts(None, "bochs", "scenario=roe");
            o.cmdline = "violation=inject".into();
            let out = run(&o)?;
            out.expect(0, reason::GUEST_EXIT)?;
            expect_lines(&out, &["action=inject", "guest| PASS roe-write-inject"])
        },
    ));
    v.push(Scenario::new(
        "x86 ROE with violation=halt: the run stops",
        "bochs tigerlake",
        || {
            let mut o = opts(None, "bochs", "scenario=roe");
            o.cmdline = "violation=halt".into();
            let out = run(&o)?;
            out.expect(STATUS_BULWARK_FAILURE, reason::VIOLATION_HALT)?;
            expect_lines(&out, &["action=halt"])
        },
    ));
    v.push(Scenario::new(
        "x86 guest reading Bulwark's memory is stopped",
        "bochs tigerlake",
        || {
            let out = run(&opts(None, "bochs", "scenario=read-bulwark"))?;
            out.expect(STATUS_BULWARK_FAILURE, reason::GUEST_CRASH)?;
            expect_lines(
                &out,
                &["guest access outside guest memory: access=read gpa=0x4000010"],
            )
        },
    ));
    v.push(Scenario::new(
        "x86 guest triple fault ends the run",
        "bochs tigerlake",
        || {
            let out = run(&opts(None, "bochs", "scenario=triple-fault"))?;
            out.expect(STATUS_BULWARK_FAILURE, reason::GUEST_CRASH)?;
            expect_lines(&out, &["guest crashed: triple fault", "guest state: rip="])
        },
    ));
    v.push(Scenario::new(
        "x86 unhandled exit (INVD) ends the run",
        "bochs tigerlake",
        || {
            let out = run(&opts(None, "bochs", "scenario=unhandled-exit"))?;
            out.expect(STATUS_BULWARK_FAILURE, reason::UNHANDLED_EXIT)?;
            expect_lines(
                &out,
                &["unhandled VM exit: reason 13 (invd)", "guest state: rip="],
            )
        },
    ));
    v.push(Scenario::new(
        "x86 guest status becomes the exit code",
        "bochs tigerlake",
        || {
            let out = run(&opts(None, "bochs", "scenario=status:42"))?;
            out.expect(42, reason::GUEST_EXIT)?;
            if out.exit_code() != 42 {
                return Err(format!("exit code {} instead of 42", out.exit_code()));
            }
            Ok(())
        },
    ));
    v.push(Scenario::new(
        "x86 --guest: a Multiboot guest not from this repo (a.out kludge, 32-bit)",
        "bochs tigerlake",
        || {
            let path = out()?.join("tiny-guest.bin");
            std::fs::write(&path, tiny_guest("hello from a hand-assembled guest\n", 7))
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            let mut o = opts(None, "bochs", "");
            o.guest = Some(path);
            let out = run(&o)?;
            out.expect(7, reason::GUEST_EXIT)?;
            expect_lines(&out, &["guest| hello from a hand-assembled guest"])
        },
    ));
    v.push(Scenario::new(
        "x86 --guest: a file that is not a Multiboot kernel is refused",
        "bochs tigerlake",
        || {
            let mut o = opts(None, "bochs", "");
            o.guest = Some(util::root().join("Cargo.toml"));
            let out = run(&o)?;
            out.expect(STATUS_BULWARK_FAILURE, reason::REFUSED)?;
            expect_lines(&out, &["guest image rejected: no Multiboot (v1) header"])
        },
    ));
    v
}
