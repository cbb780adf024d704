//! Issue 16 (x86 platform) scenarios of `cargo xtask test`: the pass-through platform model
//! (docs/x86_64.md, "Platform model"). The guest side is `scenario=platform`
//! (guest-images/x86_64-test/src/platform.rs): it reads the local APIC (the access every
//! kvm-unit-tests test makes first), writes APIC registers through Bulwark's write emulation,
//! sends INIT and Start-up IPIs that Bulwark must swallow and log, reaches the I/O APIC by MMIO,
//! programs the PIC through passed-through ports and waits in HLT for timer interrupts that
//! reach it without Bulwark. On the code before the platform model the first APIC read stopped
//! the guest.

use bulwark_abi::console::reason;

use crate::util::{self, Arch, Outcome, RunOpts, Scenario};

const MODELS: [&str; 2] = ["tigerlake", "corei7_skylake_x"];
const TIMEOUT_S: u64 = 180;

fn fail<T>(out: &Outcome, why: String) -> Result<T, String> {
    Err(format!("{why}\n--- console tail ---\n{}", out.tail(40)))
}

fn platform(model: &str) -> Result<(), String> {
    let out = crate::x86_64::run(&RunOpts {
        arch: Some(Arch::X86_64),
        emulator: Some("bochs".into()),
        cpu: Some(model.into()),
        timeout: Some(TIMEOUT_S),
        guest_cmdline: "scenario=platform".into(),
        quiet: true,
        ..RunOpts::default()
    })?;
    out.expect(0, reason::GUEST_EXIT)?;
    for needle in [
        "guest| PASS lapic-read",
        "guest| PASS lapic-write-forwarded",
        "guest| PASS lapic-icr-forwarded",
        "guest| PASS lapic-init-sipi-refused",
        "guest| PASS ioapic-mmio",
        "guest| PASS port-passthrough",
        "guest| PASS interrupts-to-guest",
        "guest| 0 check(s) failed",
        "platform: local APIC at 0xfee00000 (writes trapped",
        "lapic: refused IPI mode=init icr_low=0xc4500 icr_high=0x1000000 ",
        "lapic: refused IPI mode=startup icr_low=0xc4608 icr_high=0x1000000 ",
        " 2 INIT/SIPI IPI(s) refused",
    ] {
        if !out.has(needle) {
            return fail(&out, format!("no line containing '{needle}'"));
        }
    }
    Ok(())
}

/// Issue 16 item 6: with the LAPIC reachable and a second CPU present (Bochs `count=2`), the
/// guest locks a low page, places real-mode code that writes it and sends INIT-SIPI-SIPI. The
/// second CPU would run outside VMX (no EPT): Bulwark must refuse all three IPIs, so the CPU's
/// marker stays 0 and the page unchanged.
fn smp() -> Result<(), String> {
    let out = crate::x86_64::run(&RunOpts {
        arch: Some(Arch::X86_64),
        emulator: Some("bochs".into()),
        cpu: Some("tigerlake".into()),
        timeout: Some(TIMEOUT_S),
        guest_cmdline: "scenario=platform-smp".into(),
        bochs_cpus: Some(2),
        quiet: true,
        ..RunOpts::default()
    })?;
    out.expect(0, reason::GUEST_EXIT)?;
    for needle in [
        "acpi: 2 CPU(s) in the MADT",
        "guest| PASS smp-lock",
        "guest| PASS smp-ap-not-started",
        "guest| PASS smp-locked-page-unchanged",
        "lapic: refused IPI mode=init icr_low=0xc4500 ",
        "lapic: refused IPI mode=startup icr_low=0xc4608 ",
        " 3 INIT/SIPI IPI(s) refused",
    ] {
        if !out.has(needle) {
            return fail(&out, format!("no line containing '{needle}'"));
        }
    }
    Ok(())
}

/// A hand-assembled Multiboot guest (a.out kludge, loaded at 0x10000) that drops to real mode
/// and uses the BIOS as a real-mode OS does (issue 16 item 5): `INT 1Ah` (BIOS code at
/// F000:xxxx must be executable), a WRMSR that Bulwark refuses (the #GP it injects must carry
/// no error code in real mode: with one, VM entry fails with error 7) caught by its own IVT
/// handler, and the BIOS timer interrupt (IRQ0 through the BIOS handler) while waiting in HLT.
/// Status 0 = all three; 0x71 = no timer tick; 0x72 = no #GP seen. Source (GNU as, `--32`):
///
/// ```text
/// .set BASE, 0x10000
/// .code32
/// hdr:   .long 0x1badb002, 0x00010003, -(0x1badb002 + 0x00010003)
///        .long BASE, BASE, 0, 0, BASE + entry
/// entry: cli; lgdt BASE + gdtr; ljmp $0x08, $pm16
/// .code16
/// pm16:  mov $0x10, %ax; mov %ax, %ds; mov %ax, %es; mov %ax, %ss
///        mov %cr0, %eax; and $0xfe, %al; mov %eax, %cr0; ljmp $0x1000, $rm
/// rm:    lidt %cs:idtr_rm                                   # IVT: base 0, limit 0x3ff
///        xor %ax, %ax; mov %ax, %ds; mov %ax, %es; mov %ax, %ss; mov $0x7000, %sp
///        xor %bx, %bx; mov $0, %ah; int $0x1a
///        movw $gp, 13*4; movw $0x1000, 13*4+2
///        mov $0x3a, %ecx; mov $5, %eax; xor %edx, %edx; wrmsr
///        mov $0xfe, %al; out %al, $0x21; mov 0x46c, %si; mov $200, %cx; sti
/// wait:  hlt; cmp 0x46c, %si; jne ticked; loop wait
///        mov $0x71, %al; out %al, $0xf4; jmp .
/// ticked: cli; mov $0x72, %al; cmp $0x5a, %bl; jne fin; xor %al, %al
/// fin:   out %al, $0xf4; jmp .
/// gp:    push %bp; mov %sp, %bp; addw $2, 2(%bp); pop %bp; mov $0x5a, %bl; iret
/// .balign 8
/// gdt:   .quad 0, 0x00009b010000ffff, 0x000093000000ffff
/// gdtr:  .word 23; .long BASE + gdt
/// idtr_rm: .word 0x3ff; .long 0
/// ```
const REAL_MODE_GUEST: [u8; 212] = [
    0x02, 0xb0, 0xad, 0x1b, 0x03, 0x00, 0x01, 0x00, 0xfb, 0x4f, 0x51, 0xe4, 0x00, 0x00, 0x01, 0x00,
    0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00, 0x01, 0x00,
    0xfa, 0x0f, 0x01, 0x15, 0xc8, 0x00, 0x01, 0x00, 0xea, 0x2f, 0x00, 0x00, 0x00, 0x08, 0x00, 0xb8,
    0x10, 0x00, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0x0f, 0x20, 0xc0, 0x24, 0xfe, 0x0f, 0x22, 0xc0,
    0xea, 0x45, 0x00, 0x00, 0x10, 0x2e, 0x0f, 0x01, 0x1e, 0xce, 0x00, 0x31, 0xc0, 0x8e, 0xd8, 0x8e,
    0xc0, 0x8e, 0xd0, 0xbc, 0x00, 0x70, 0x31, 0xdb, 0xb4, 0x00, 0xcd, 0x1a, 0xc7, 0x06, 0x34, 0x00,
    0xa2, 0x00, 0xc7, 0x06, 0x36, 0x00, 0x00, 0x10, 0x66, 0xb9, 0x3a, 0x00, 0x00, 0x00, 0x66, 0xb8,
    0x05, 0x00, 0x00, 0x00, 0x66, 0x31, 0xd2, 0x0f, 0x30, 0xb0, 0xfe, 0xe6, 0x21, 0x8b, 0x36, 0x6c,
    0x04, 0xb9, 0xc8, 0x00, 0xfb, 0xf4, 0x3b, 0x36, 0x6c, 0x04, 0x75, 0x08, 0xe2, 0xf7, 0xb0, 0x71,
    0xe6, 0xf4, 0xeb, 0xfe, 0xfa, 0xb0, 0x72, 0x80, 0xfb, 0x5a, 0x75, 0x02, 0x30, 0xc0, 0xe6, 0xf4,
    0xeb, 0xfe, 0x55, 0x89, 0xe5, 0x83, 0x46, 0x02, 0x02, 0x5d, 0xb3, 0x5a, 0xcf, 0x8d, 0x74, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x01, 0x9b, 0x00, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x93, 0x00, 0x00, 0x17, 0x00, 0xb0, 0x00, 0x01, 0x00, 0xff, 0x03,
    0x00, 0x00, 0x00, 0x00,
];

fn real_mode(model: &str) -> Result<(), String> {
    let path = util::target_dir()
        .join("xtask")
        .join("x86_64")
        .join(format!("real-mode-guest-{}.bin", std::process::id()));
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::fs::write(&path, REAL_MODE_GUEST)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    let out = crate::x86_64::run(&RunOpts {
        arch: Some(Arch::X86_64),
        emulator: Some("bochs".into()),
        cpu: Some(model.into()),
        timeout: Some(TIMEOUT_S),
        guest: Some(path.clone()),
        quiet: true,
        ..RunOpts::default()
    });
    let _ = std::fs::remove_file(&path);
    let out = out?;
    out.expect(0, reason::GUEST_EXIT)?;
    if out.has("VM entry failed") || out.has("violation kind=") {
        return fail(&out, "a VM-entry failure or a violation line".into());
    }
    Ok(())
}

/// A hand-assembled Multiboot guest (a.out kludge) whose BSS covers `[0x100000, 0x3000000)`:
/// GRUB puts its modules inside that range (around 12 MiB), so Bulwark must move the extra
/// module before it loads the kernel (issue 16 item 5; before, the run was refused with
/// "module ... overlaps the guest kernel"). The guest checks the module it is told about: one
/// module, 8 KiB, outside its own range, first dword "1dom", last "!end". Status 0 = all;
/// 0x61..0x65 name the first failed check. Source (GNU as, `--32`):
///
/// ```text
/// .set BASE, 0x100000
/// hdr:   .long 0x1badb002, 0x00010003, -(0x1badb002 + 0x00010003)
///        .long BASE, BASE, 0, 0x3000000, BASE + entry
/// entry: cli
///        mov $0x61, %al; cmpl $1, 20(%ebx); jne fin          # mods_count
///        mov 24(%ebx), %esi; mov 0(%esi), %edi; mov 4(%esi), %ecx
///        mov $0x62, %al; mov %ecx, %edx; sub %edi, %edx; cmp $8192, %edx; jne fin
///        mov $0x63, %al; cmp $BASE, %edi; jb 1f; cmp $0x3000000, %edi; jb fin
/// 1:     mov $0x64, %al; cmpl $0x6d6f6431, (%edi); jne fin
///        mov $0x65, %al; cmpl $0x646e6521, -4(%ecx); jne fin
///        xor %al, %al
/// fin:   out %al, $0xf4
/// 2:     hlt; jmp 2b
/// ```
const MODULE_GUEST: [u8; 109] = [
    0x02, 0xb0, 0xad, 0x1b, 0x03, 0x00, 0x01, 0x00, 0xfb, 0x4f, 0x51, 0xe4, 0x00, 0x00, 0x10, 0x00,
    0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x20, 0x00, 0x10, 0x00,
    0xfa, 0xb0, 0x61, 0x83, 0x7b, 0x14, 0x01, 0x75, 0x3f, 0x8b, 0x73, 0x18, 0x8b, 0x3e, 0x8b, 0x4e,
    0x04, 0xb0, 0x62, 0x89, 0xca, 0x29, 0xfa, 0x81, 0xfa, 0x00, 0x20, 0x00, 0x00, 0x75, 0x29, 0xb0,
    0x63, 0x81, 0xff, 0x00, 0x00, 0x10, 0x00, 0x72, 0x08, 0x81, 0xff, 0x00, 0x00, 0x00, 0x03, 0x72,
    0x17, 0xb0, 0x64, 0x81, 0x3f, 0x31, 0x64, 0x6f, 0x6d, 0x75, 0x0d, 0xb0, 0x65, 0x81, 0x79, 0xfc,
    0x21, 0x65, 0x6e, 0x64, 0x75, 0x02, 0x30, 0xc0, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd,
];

fn module_moved() -> Result<(), String> {
    let dir = util::target_dir().join("xtask").join("x86_64");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let pid = std::process::id();
    let guest = dir.join(format!("module-guest-{pid}.bin"));
    let module = dir.join(format!("module-{pid}.bin"));
    let mut m = vec![0x5au8; 8192];
    m[..4].copy_from_slice(b"1dom");
    m[8188..].copy_from_slice(b"!end");
    std::fs::write(&guest, MODULE_GUEST).map_err(|e| format!("{}: {e}", guest.display()))?;
    std::fs::write(&module, &m).map_err(|e| format!("{}: {e}", module.display()))?;
    let out = crate::x86_64::run(&RunOpts {
        arch: Some(Arch::X86_64),
        emulator: Some("bochs".into()),
        cpu: Some("tigerlake".into()),
        timeout: Some(TIMEOUT_S),
        guest: Some(guest.clone()),
        initrd: Some(module.clone()),
        quiet: true,
        ..RunOpts::default()
    });
    let _ = std::fs::remove_file(&guest);
    let _ = std::fs::remove_file(&module);
    let out = out?;
    out.expect(0, reason::GUEST_EXIT)?;
    if !out.has("overlaps the guest kernel's load range: moved to [") {
        return fail(&out, "no line saying the module was moved".into());
    }
    Ok(())
}

/// Marker the amd64 initramfs's /init prints first.
const LINUX_MARKER: &str = "BULWARK-INIT-MARKER: userspace reached (amd64)";
/// Kernel command line for Debian's amd64 kernel under Bochs: the serial console (Bulwark's
/// emulated COM1, polled), early output, no reboot loop; Bochs 2.7's tigerlake lacks a working
/// FSRM (`clearcpuid=fsrm`).
const LINUX_CMDLINE: &str =
    "console=ttyS0,115200 earlyprintk=serial,ttyS0,115200 panic=-1 clearcpuid=fsrm nokaslr";
const LINUX_TIMEOUT_S: u64 = 900;
/// Bochs instructions per emulated second for the Linux run. At the default 4 M, one emulated
/// instruction is 250 ns, so the few tens of thousands of instructions an emulated VM exit plus
/// Bulwark's APIC-write emulation take (the EOI after every interrupt) last longer than the
/// kernel's 4 ms timer period and the guest livelocks in its timer interrupt (measured: stuck
/// after `..TIMER: vector=0x30`, one EOI exit every 32 k instructions). 40 M (25 ns per
/// instruction) is still far slower than a real CPU, where that exit costs about a microsecond.
const LINUX_IPS: u64 = 40_000_000;

/// The /init of the amd64 initramfs: marker, then CPUID leaf 0x40000000 through the cpuid
/// driver (Debian's cpuid.ko, loaded from the initramfs) must say "BulwarkBulwa", then the
/// verdict goes to port 0xf4 through /dev/port (0 = under Bulwark, 1 = not), which ends the run
/// with that status; `poweroff -f` (ACPI) only if the port write did not end it.
fn linux_init() -> String {
    // Lines go to /dev/kmsg: the kernel prints them through its polled console. A tty write to
    // /dev/console waits for the UART's transmit interrupt, which Bulwark's emulated COM1 never
    // raises (docs/x86_64.md, "Platform model": console).
    format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox echo '{LINUX_MARKER}' > /dev/kmsg\n\
         /bin/busybox insmod /lib/cpuid.ko\n\
         sig=$(/bin/busybox dd if=/dev/cpu/0/cpuid bs=16 count=1 skip=67108864 2>/dev/null | /bin/busybox dd bs=1 skip=4 count=12 2>/dev/null)\n\
         /bin/busybox echo \"cpuid 0x40000000: $sig\" > /dev/kmsg\n\
         if [ \"$sig\" = BulwarkBulwa ]; then /bin/busybox echo 'PASS linux-cpuid-bulwark' > /dev/kmsg; st='\\000'; else /bin/busybox echo 'FAIL linux-cpuid-bulwark' > /dev/kmsg; st='\\001'; fi\n\
         printf \"$st\" | /bin/busybox dd of=/dev/port bs=1 seek=244 2>/dev/null\n\
         /bin/busybox poweroff -f\n"
    )
}

/// Debian's stock amd64 kernel (bzImage, boot protocol 2.15) and busybox under Bulwark in
/// Bochs: the kernel boots through Bulwark's Linux loader onto the pass-through platform, runs
/// /init from the initramfs (second module), which proves it runs under Bulwark (CPUID leaf
/// 0x40000000) and ends the run through port 0xf4.
fn debian_amd64(model: &str) -> Result<(), String> {
    let dir = util::out_dir("x86_64/debian")?;
    let (kernel, busybox) = crate::aarch64::debian_fetch("amd64", &dir)?;
    let x = dir.join("extracted");
    let cpuid =
        walk(&x.join("lib/modules"), "cpuid.ko").ok_or("the kernel package has no cpuid.ko")?;
    let ko = std::fs::read(&cpuid).map_err(|e| format!("{}: {e}", cpuid.display()))?;
    let cpio =
        crate::aarch64::busybox_initramfs_with(&busybox, &linux_init(), &[("lib/cpuid.ko", ko)])?;
    let initrd = dir.join(format!("initramfs-{}.cpio", std::process::id()));
    std::fs::write(&initrd, cpio).map_err(|e| format!("{}: {e}", initrd.display()))?;
    let out = crate::x86_64::run(&RunOpts {
        arch: Some(Arch::X86_64),
        emulator: Some("bochs".into()),
        cpu: Some(model.into()),
        timeout: Some(LINUX_TIMEOUT_S),
        guest: Some(kernel),
        initrd: Some(initrd.clone()),
        guest_cmdline: LINUX_CMDLINE.into(),
        bochs_ips: Some(LINUX_IPS),
        quiet: true,
        ..RunOpts::default()
    });
    let _ = std::fs::remove_file(&initrd);
    let out = out?;
    for needle in [
        "guest image: Linux bzImage, boot protocol 2.",
        LINUX_MARKER,
        "PASS linux-cpuid-bulwark",
    ] {
        if !out.has(needle) {
            return fail(&out, format!("no line containing '{needle}'"));
        }
    }
    out.expect(0, reason::GUEST_EXIT)
}

/// The first file named `name` under `dir` (depth-first).
fn walk(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = walk(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

pub fn scenarios() -> Vec<Scenario> {
    let mut v: Vec<Scenario> = MODELS
        .into_iter()
        .map(|model| {
            Scenario::new(
                "x86 platform: LAPIC read, APIC writes emulated, INIT/SIPI refused, I/O APIC MMIO, ports and interrupts pass through, HLT waits",
                format!("bochs {model}"),
                move || platform(model),
            )
        })
        .collect();
    v.push(Scenario::new(
        "x86 platform SMP: INIT/SIPI to a second CPU refused, the page it would write stays locked",
        "bochs tigerlake 2 CPUs",
        smp,
    ));
    v.push(Scenario::new(
        "x86 real mode: BIOS INT 1Ah runs, #GP injected without error code, BIOS timer IRQ in HLT",
        "bochs tigerlake",
        || real_mode("tigerlake"),
    ));
    v.push(Scenario::new(
        "x86 loader: a module GRUB placed inside the kernel's load range is moved, not refused",
        "bochs tigerlake",
        module_moved,
    ));
    v.push(Scenario::new(
        "x86 Linux: Debian's stock amd64 kernel boots under Bulwark to its /init, sees CPUID 0x40000000 BulwarkBulwa",
        "bochs tigerlake",
        || debian_amd64("tigerlake"),
    ));
    v
}
