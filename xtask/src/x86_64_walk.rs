//! Issue 12 (x86) scenarios of `cargo xtask test`: Bulwark's own page walks obey the guest's
//! permissions (breach 3), A/D updates into locked page tables (breach 4), a stepped PUSHF is
//! invisible, INS never writes part of an element, and a hardware task switch is refused with
//! one clear line. The guest side is `scenario=walk` (guest-images/x86_64-test/src/walk.rs);
//! docs/x86_64.md describes what each check proves.

use bulwark_abi::console::{reason, STATUS_BULWARK_FAILURE, VIOLATION_PREFIX};

use crate::util::{self, Arch, Outcome, RunOpts, Scenario};

const MODELS: [&str; 2] = ["tigerlake", "corei7_skylake_x"];
const TIMEOUT_S: u64 = 180;
/// The guest's window for its locked page table (walk.rs `VA_AD`: PML4 slot 1 + 6 MiB).
const VA_AD: u64 = 0x0000_0080_0060_0000;

fn fail<T>(out: &Outcome, why: String) -> Result<T, String> {
    Err(format!("{why}\n--- console tail ---\n{}", out.tail(40)))
}

/// Guest-physical addresses of the guest's secret page and of its lockable page table.
fn pages() -> Result<(u64, u64), String> {
    crate::x86_64::build(false)?;
    let elf = crate::attr_tests::guest_elf(Arch::X86_64);
    let a = crate::attr_tests::symbols(&elf, &["WALK_SECRET", "WALK_AD_PT"])?;
    match a[..] {
        [s, t] if s % 4096 == 0 && t % 4096 == 0 => Ok((s, t)),
        _ => Err(format!(
            "the walk scenario's pages are not page aligned: {a:x?}"
        )),
    }
}

fn walk(model: &str, policy: &'static str) -> Result<(), String> {
    let (secret, ad_pt) = pages()?;
    let out = crate::x86_64::run(&RunOpts {
        arch: Some(Arch::X86_64),
        emulator: Some("bochs".into()),
        cpu: Some(model.into()),
        timeout: Some(TIMEOUT_S),
        cmdline: format!("violation={policy} attr={secret:#x}+4K:---"),
        guest_cmdline: "scenario=walk".into(),
        quiet: true,
        ..RunOpts::default()
    })?;
    out.expect(0, reason::GUEST_EXIT)?;
    for needle in [
        "EPT A/D: on",
        "guest| PASS walk-outsb-present",
        "guest| PASS walk-outsb-absent",
        "guest| PASS walk-insb-secret",
        "guest| PASS walk-chunk-present",
        "guest| PASS walk-chunk-absent",
        "guest| PASS walk-mprotect-secret",
        "guest| PASS walk-outsb-secret-data",
        "guest| PASS walk-insd-straddle",
        "guest| PASS walk-pushf-image",
        "guest| PASS walk-popf-no-trap",
        "guest| PASS walk-ad-preset-access",
        "guest| PASS walk-ad-clear-access",
        "guest| PASS walk-ad-locked-unchanged",
        "guest| walk: 0 check(s) failed",
    ] {
        if !out.has(needle) {
            return fail(&out, format!("no line containing '{needle}'"));
        }
    }
    let line = |kind: &str, access: &str, gpa: u64| {
        format!("{VIOLATION_PREFIX}kind={kind} access={access} gpa={gpa:#x} ")
    };
    let has_line = |head: &str, action: &str| {
        out.lines
            .iter()
            .any(|l| l.starts_with(head) && l.contains(" gva=") && l.ends_with(action))
    };
    // The secret page's entries 0, 1 (OUTSB) and 2 (INSB): refused reads of the walk, whatever
    // the entry holds (0 is present, 1 is not); then OUTSB's data read at offset 0x800.
    for gpa in [secret, secret + 8, secret + 16, secret + 0x800] {
        let head = line("attr", "read", gpa);
        if !has_line(&head, "action=inject") {
            return fail(&out, format!("no violation line '{head}... action=inject'"));
        }
    }
    // The A/D update into the locked PTE (entry 2, at offset 0x10), reported with the linear
    // address whose walk wrote it; nothing for the preset entry 1.
    let action = if policy == "inject" {
        "action=inject"
    } else {
        "action=skip"
    };
    let head = line("roe", "write", ad_pt + 16);
    let gva = format!(" gva={:#x} ", VA_AD + 2 * 4096);
    let ok = out
        .lines
        .iter()
        .any(|l| l.starts_with(&head) && l.contains(&gva) && l.ends_with(action));
    if !ok {
        return fail(
            &out,
            format!("no violation line '{head}{}... {action}'", gva.trim()),
        );
    }
    let preset = line("roe", "write", ad_pt + 8);
    if out.lines.iter().any(|l| l.starts_with(&preset)) {
        return fail(
            &out,
            "a violation for the PTE whose A/D bits were already set".into(),
        );
    }
    Ok(())
}

/// Load address of the task-switch guest.
const TS_BASE: u32 = 0x20_0000;

/// A hand-assembled 32-bit Multiboot guest (header load addresses, flag 16): LGDT of a GDT with
/// a 32-bit TSS descriptor at selector 0x18, then `jmp far 0x18:0`, a hardware task switch.
/// Should the jump ever return, it writes 0x63 to port 0xf4.
fn task_switch_guest() -> Vec<u8> {
    let flags: u32 = (1 << 16) | 0b11;
    let magic: u32 = 0x1bad_b002;
    let mut b = Vec::new();
    for w in [
        magic,
        flags,
        0u32.wrapping_sub(magic.wrapping_add(flags)),
        TS_BASE,
        TS_BASE,
        0,
        0,
        TS_BASE + 32,
    ] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    let gdtr = TS_BASE + 64;
    let gdt = TS_BASE + 72;
    let tss = TS_BASE + 104;
    b.extend_from_slice(&[0x0f, 0x01, 0x15]); // lgdt [gdtr]
    b.extend_from_slice(&gdtr.to_le_bytes());
    b.push(0xea); // jmp far 0x18:0
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0x18u16.to_le_bytes());
    b.extend_from_slice(&[0xb0, 0x63, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]); // status 0x63; hlt loop
    b.resize(64, 0x90);
    b.extend_from_slice(&31u16.to_le_bytes()); // GDT limit (4 entries)
    b.extend_from_slice(&gdt.to_le_bytes());
    b.resize(72, 0);
    let limit: u64 = 103;
    let base = u64::from(tss);
    let tss_desc = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    for d in [0, 0x00cf_9a00_0000_ffffu64, 0x00cf_9200_0000_ffff, tss_desc] {
        b.extend_from_slice(&d.to_le_bytes());
    }
    debug_assert_eq!(b.len(), 104);
    b.resize(104 + 104, 0);
    b
}

fn task_switch() -> Result<(), String> {
    let path = util::target_dir()
        .join("xtask")
        .join("x86_64")
        .join(format!("task-switch-guest-{}.bin", std::process::id()));
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::fs::write(&path, task_switch_guest())
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    let out = crate::x86_64::run(&RunOpts {
        arch: Some(Arch::X86_64),
        emulator: Some("bochs".into()),
        cpu: Some("tigerlake".into()),
        timeout: Some(60),
        guest: Some(path),
        quiet: true,
        ..RunOpts::default()
    })?;
    out.expect(STATUS_BULWARK_FAILURE, reason::UNHANDLED_EXIT)?;
    let want = "guest hardware task switch to TSS selector 0x18 by JMP at ip=";
    if !out.has(want) || !out.has("not emulated (docs/x86_64.md), stopping the guest") {
        return fail(&out, format!("no line '{want}... not emulated ...'"));
    }
    if !out.has("guest state: rip=") {
        return fail(&out, "no state dump".into());
    }
    Ok(())
}

/// The entries of `cargo xtask test`.
pub fn scenarios() -> Vec<Scenario> {
    let mut v = Vec::new();
    for model in MODELS {
        v.push(Scenario::new(
            "x86 walk: Bulwark's walks obey the guest's permissions, A/D into locked PTEs, PUSHF, INS (violation=skip)",
            format!("bochs {model}"),
            move || walk(model, "skip"),
        ));
    }
    v.push(Scenario::new(
        "x86 walk: the same under violation=inject",
        "bochs tigerlake",
        || walk("tigerlake", "inject"),
    ));
    v.push(Scenario::new(
        "x86 walk: a hardware task switch is refused with one clear line",
        "bochs tigerlake",
        task_switch,
    ));
    v
}
