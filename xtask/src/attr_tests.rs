//! Per-page attribute scenarios of `cargo xtask test` (issue 7), both architectures:
//!
//! * the test guests' `scenario=attr-<policy>` under `violation=skip|inject|halt`, with Bulwark
//!   started with `attr=` ranges on the guests' own pages: a code page `r-x`, a data page `rw-`,
//!   a page `---`, and on x86 a second code page `--x` (EPT execute-only). The pages' addresses
//!   come from the guest ELF's symbol table (`llvm-nm`), so they follow the guest's layout;
//! * rejected command lines, one run per rule: the error must name the token as typed and the
//!   reason, the run must end with `reason=refused`, and no guest output may appear.
//!
//! docs/attributes.md describes what each scenario checks.

use std::path::{Path, PathBuf};
use std::process::Command;

use bulwark_abi::console::{reason, GUEST_PREFIX, STATUS_BULWARK_FAILURE, VIOLATION_PREFIX};

use crate::util::{self, Arch, Outcome, RunOpts, Scenario};

/// Bochs model for the x86 runs: EPT with execute-only translations (and SPP).
const X86_MODEL: &str = "tigerlake";
/// A second Bochs model (no SPP, other VMCS revision), for one `skip` run.
const X86_MODEL_2: &str = "corei7_skylake_x";
const X86_TIMEOUT_S: u64 = 120;
const ARM_TIMEOUT_S: u64 = 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Policy {
    Skip,
    Inject,
    Halt,
}

impl Policy {
    fn as_str(self) -> &'static str {
        match self {
            Policy::Skip => "skip",
            Policy::Inject => "inject",
            Policy::Halt => "halt",
        }
    }
    /// The action a violation line must carry for an access under this policy
    /// (docs/protection-engine.md: under `skip` reads and fetches are injected).
    fn action(self, access: &str) -> &'static str {
        match (self, access) {
            (Policy::Skip, "write") => "skip",
            (Policy::Skip, _) | (Policy::Inject, _) => "inject",
            (Policy::Halt, _) => "halt",
        }
    }
}

/// The guest pages the scenarios protect (guest-physical = the guest's identity-mapped address).
#[derive(Clone, Copy, Debug)]
struct Pages {
    code: u64,
    data: u64,
    none: u64,
    /// x86 only: the execute-only code page.
    xo: Option<u64>,
}

impl Pages {
    /// Bulwark's `attr=` token for these pages.
    fn attr_token(&self) -> String {
        let mut s = format!(
            "attr={:#x}+4K:r-x,{:#x}+4K:rw-,{:#x}+4K:---",
            self.code, self.data, self.none
        );
        if let Some(xo) = self.xo {
            s.push_str(&format!(",{xo:#x}+4K:--x"));
        }
        s
    }
}

/// Addresses of `names` in the ELF `elf` (`llvm-nm`), in order.
pub(crate) fn symbols(elf: &Path, names: &[&str]) -> Result<Vec<u64>, String> {
    util::need_tool("llvm-nm", "llvm")?;
    let out = Command::new("llvm-nm")
        .arg(elf)
        .output()
        .map_err(|e| format!("llvm-nm {}: {e}", elf.display()))?;
    if !out.status.success() {
        return Err(format!(
            "llvm-nm {} failed: {}",
            elf.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    names
        .iter()
        .map(|name| {
            text.lines()
                .find_map(|l| {
                    let mut f = l.split_whitespace();
                    let (addr, _kind, sym) = (f.next()?, f.next()?, f.next()?);
                    (sym == *name)
                        .then(|| u64::from_str_radix(addr, 16).ok())
                        .flatten()
                })
                .ok_or_else(|| format!("symbol {name} not found in {}", elf.display()))
        })
        .collect()
}

pub(crate) fn guest_elf(arch: Arch) -> PathBuf {
    let (target, bin) = match arch {
        Arch::X86_64 => ("x86_64-unknown-none", "x86_64-testguest"),
        Arch::Aarch64 => ("aarch64-unknown-none", "aarch64-testguest"),
    };
    util::target_dir().join(target).join("debug").join(bin)
}

/// Build Bulwark and the test guest for `arch`, then find the guest's attribute pages.
fn pages(arch: Arch) -> Result<Pages, String> {
    match arch {
        Arch::X86_64 => {
            crate::x86_64::build(false)?;
        }
        Arch::Aarch64 => {
            crate::aarch64::build(false)?;
        }
    }
    let elf = guest_elf(arch);
    let mut names = vec!["attr_code_page", "ATTR_DATA", "ATTR_NONE"];
    if arch == Arch::X86_64 {
        names.push("attr_xo_page");
    }
    let a = symbols(&elf, &names)?;
    let p = Pages {
        code: a[0],
        data: a[1],
        none: a[2],
        xo: a.get(3).copied(),
    };
    let all = [Some(p.code), Some(p.data), Some(p.none), p.xo];
    if all.iter().flatten().any(|a| a % 4096 != 0) {
        return Err(format!(
            "the guest's attribute pages are not page aligned: {p:x?}"
        ));
    }
    Ok(p)
}

fn run(arch: Arch, cmdline: String, guest_cmdline: String) -> Result<Outcome, String> {
    run_on(arch, X86_MODEL, cmdline, guest_cmdline)
}

/// `model`: the Bochs CPU model (x86 only).
fn run_on(
    arch: Arch,
    model: &str,
    cmdline: String,
    guest_cmdline: String,
) -> Result<Outcome, String> {
    match arch {
        Arch::X86_64 => crate::x86_64::run(&RunOpts {
            arch: Some(arch),
            emulator: Some("bochs".into()),
            cpu: Some(model.into()),
            timeout: Some(X86_TIMEOUT_S),
            cmdline,
            guest_cmdline,
            quiet: true,
            ..RunOpts::default()
        }),
        Arch::Aarch64 => crate::aarch64::run(&RunOpts {
            arch: Some(arch),
            timeout: Some(ARM_TIMEOUT_S),
            cmdline,
            guest_cmdline,
            quiet: true,
            ..RunOpts::default()
        }),
    }
}

fn fail<T>(out: &Outcome, why: String) -> Result<T, String> {
    Err(format!("{why}\n--- console tail ---\n{}", out.tail(40)))
}

/// Lines the guest printed (x86: relayed with `guest| `; arm64: the PL011 is passed through and
/// the test guest's lines start with `testguest:`).
fn guest_lines(arch: Arch, out: &Outcome) -> Vec<&str> {
    out.lines
        .iter()
        .filter(|l| match arch {
            Arch::X86_64 => l.starts_with(GUEST_PREFIX),
            Arch::Aarch64 => l.contains("testguest:"),
        })
        .map(String::as_str)
        .collect()
}

/// One guest run under `policy`; checks status, guest verdict and every violation line.
fn guest_scenario(arch: Arch, model: &str, policy: Policy) -> Result<(), String> {
    let p = pages(arch)?;
    let mut guest_cmdline = format!("scenario=attr-{}", policy.as_str());
    if p.xo.is_some() {
        guest_cmdline.push_str(" attr-xo");
    }
    let cmdline = format!("violation={} {}", policy.as_str(), p.attr_token());
    let out = run_on(arch, model, cmdline, guest_cmdline)?;

    // (access, gpa) of every violation, in the guest's order.
    let mut want: Vec<(&str, u64)> = vec![("write", p.code)];
    if policy != Policy::Halt {
        want.push(("exec", p.data));
        if let Some(xo) = p.xo {
            want.extend([("read", xo), ("write", xo)]);
        }
        want.extend([("read", p.none), ("write", p.none), ("exec", p.none)]);
    }

    let lines: Vec<&String> = out
        .lines
        .iter()
        .filter(|l| l.starts_with(&format!("{VIOLATION_PREFIX}kind=attr ")))
        .collect();
    if policy == Policy::Halt {
        out.expect(STATUS_BULWARK_FAILURE, reason::VIOLATION_HALT)?;
        if out.has("FAIL halted") {
            return fail(
                &out,
                "the guest continued after the write under violation=halt".into(),
            );
        }
        if !out.has("Bulwark must stop the run here") {
            return fail(
                &out,
                "the guest never reached the write to its code page".into(),
            );
        }
    } else {
        out.expect(0, reason::GUEST_EXIT)?;
        let verdict = match arch {
            Arch::X86_64 => "guest| attr: 0 check(s) failed",
            Arch::Aarch64 => "testguest: attr: 0 check(s) failed",
        };
        if !out.has(verdict) {
            return fail(&out, format!("no '{verdict}' line"));
        }
    }
    for (access, gpa) in &want {
        let head = format!("{VIOLATION_PREFIX}kind=attr access={access} gpa={gpa:#x} ");
        let action = format!(" action={}", policy.action(access));
        let ok = lines.iter().any(|l| {
            l.starts_with(&head)
                && l.contains(" gva=")
                && l.contains(" ip=")
                && l.contains(" vcpu=")
                && l.contains(&action)
        });
        if !ok {
            return fail(&out, format!("no violation line '{head}...{action}'"));
        }
    }
    if lines.len() != want.len() {
        return fail(
            &out,
            format!(
                "{} kind=attr violation lines, expected {} ({want:x?})",
                lines.len(),
                want.len()
            ),
        );
    }
    Ok(())
}

/// One rejected command line: `cmdline` must be refused naming `token` (as typed) and saying
/// `why`, and the guest must never start.
fn rejected(arch: Arch, cmdline: &str, token: &str, why: &str) -> Result<(), String> {
    let out = run(arch, cmdline.into(), "scenario=attr-skip".into())?;
    out.expect(STATUS_BULWARK_FAILURE, reason::REFUSED)?;
    let named = format!("bad command-line token '{token}': ");
    let ok = out
        .lines
        .iter()
        .any(|l| l.starts_with("bulwark: ERROR ") && l.contains(&named) && l.contains(why));
    if !ok {
        return fail(&out, format!("no 'bulwark: ERROR {named}...{why}...' line"));
    }
    let g = guest_lines(arch, &out);
    if !g.is_empty() || out.has("entering the guest") {
        return fail(&out, format!("the guest started: {g:?}"));
    }
    Ok(())
}

/// (name, command line, token the error must name, text the reason must contain).
type Rule = (&'static str, &'static str, &'static str, &'static str);

/// Every rule, on arm64 (QEMU runs take a fraction of a second). Guest RAM is IPA
/// 0x40000000..0x5e000000; the UART at 0x9000000 is a device.
const ARM_RULES: [Rule; 14] = [
    (
        "non-zero flags",
        "attr=0x40000000+4K:r--:1",
        "attr=0x40000000+4K:r--:1",
        "flags 0x1 must be 0",
    ),
    (
        "unknown attribute bits",
        "attr=0x40000000+4K:0xf",
        "attr=0x40000000+4K:0xf",
        "unknown attribute bits 0x8",
    ),
    (
        "size 0",
        "attr=0x40000000+0:r--",
        "attr=0x40000000+0:r--",
        "size is 0",
    ),
    (
        "wrap-around",
        "attr=0xfffffffffffff000+8K:r--",
        "attr=0xfffffffffffff000+8K:r--",
        "wraps around the address space",
    ),
    (
        "unaligned start",
        "attr=0x40000800+4K:r--",
        "attr=0x40000800+4K:r--",
        "is not 4 KiB aligned",
    ),
    (
        "unaligned size",
        "attr=0x40000000+0x1800:r--",
        "attr=0x40000000+0x1800:r--",
        "is not a multiple of 4 KiB",
    ),
    (
        "overlap",
        "attr=0x40000000+8K:r-- attr=0x40001000+4K:rw-",
        "attr=0x40001000+4K:rw-",
        "overlaps 0x40000000..0x40002000 from 'attr=0x40000000+8K:r--'",
    ),
    (
        "unknown key",
        "atr=0x40000000+4K:r--",
        "atr=0x40000000+4K:r--",
        "unknown key",
    ),
    (
        "bad permission letters",
        "attr=0x40000000+4K:wr-",
        "attr=0x40000000+4K:wr-",
        "must be r, w, x in that order",
    ),
    (
        "range outside guest RAM",
        "attr=0x5e000000+4K:r--",
        "attr=0x5e000000+4K:r--",
        "0x5e000000..0x5e001000 is not guest RAM",
    ),
    (
        "range on a device (UART)",
        "attr=0x9000000+4K:r--",
        "attr=0x9000000+4K:r--",
        "0x9000000..0x9001000 is not guest RAM",
    ),
    (
        "write without read (-w-)",
        "violation=inject attr=0x40000000+4K:r-x,0x40001000+4K:-w-",
        "attr=0x40000000+4K:r-x,0x40001000+4K:-w-",
        "'0x40001000+4K:-w-': -w-: write without read cannot be expressed",
    ),
    (
        "write+exec without read (-wx)",
        "attr=0x40000000+4K:6",
        "attr=0x40000000+4K:6",
        "write without read cannot be expressed",
    ),
    (
        "execute-only (--x) on stage 2",
        "attr=0x40000000+4K:--x",
        "attr=0x40000000+4K:--x",
        "execute-only cannot be expressed",
    ),
];

/// A representative few on x86 (Bochs runs take seconds): one parse-time rule and the two
/// rules only the back end can decide. Guest RAM excludes Bulwark's region at 64..96 MiB.
const X86_RULES: [Rule; 3] = [
    (
        "overlap",
        "attr=0x200000+8K:r--,0x201000+4K:rw-",
        "attr=0x200000+8K:r--,0x201000+4K:rw-",
        "overlaps 0x200000..0x202000",
    ),
    (
        "write without read (-w-)",
        "attr=0x200000+4K:-w-",
        "attr=0x200000+4K:-w-",
        "write without read cannot be expressed",
    ),
    (
        "range in Bulwark's memory",
        "attr=0x4000000+2M:r--",
        "attr=0x4000000+2M:r--",
        "0x4000000..0x4200000 is not guest RAM",
    ),
];

/// The attribute rows of `cargo xtask test`.
pub fn scenarios() -> Vec<Scenario> {
    let mut v = Vec::new();
    for (arch, emu) in [
        (Arch::Aarch64, "qemu virt el2".to_string()),
        (Arch::X86_64, format!("bochs {X86_MODEL}")),
    ] {
        let tag = match arch {
            Arch::X86_64 => "x86",
            Arch::Aarch64 => "aarch64",
        };
        for policy in [Policy::Skip, Policy::Inject, Policy::Halt] {
            v.push(Scenario::new(
                format!(
                    "{tag} attr: r-x code, rw- data, ---{} under violation={}",
                    if arch == Arch::X86_64 { ", --x" } else { "" },
                    policy.as_str()
                ),
                emu.clone(),
                move || guest_scenario(arch, X86_MODEL, policy),
            ));
        }
        let rules: &'static [Rule] = match arch {
            Arch::X86_64 => &X86_RULES,
            Arch::Aarch64 => &ARM_RULES,
        };
        for &(name, cmdline, token, why) in rules {
            v.push(Scenario::new(
                format!("{tag} attr refused: {name}"),
                emu.clone(),
                move || rejected(arch, cmdline, token, why),
            ));
        }
    }
    v.push(Scenario::new(
        "x86 attr: r-x code, rw- data, ---, --x under violation=skip",
        format!("bochs {X86_MODEL_2}"),
        || guest_scenario(Arch::X86_64, X86_MODEL_2, Policy::Skip),
    ));
    v
}
