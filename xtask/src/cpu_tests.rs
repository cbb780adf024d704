//! arm64 CPU features a stock kernel uses (issue 17 item 5): memory tagging (QEMU
//! `-M virt,mte=on`) and SVE state across exits. The test guest's `scenario=mte` and
//! `scenario=sve` (guest-images/aarch64-test/src/{mte,sve}.rs), and Debian's arm64 kernel booted
//! with `mte=on`. Decisions: docs/aarch64.md ("Memory tagging", "FP/SIMD and SVE state").

use bulwark_abi::console::reason;

use crate::aarch64::{self, need, quiet, Extra};
use crate::util::{Outcome, RunOpts, Scenario};

/// The hex address after `key` in the guest line containing `key`.
fn guest_addr(out: &Outcome, key: &str) -> Result<u64, String> {
    out.lines
        .iter()
        .find_map(|l| {
            let rest = l.split_once(key)?.1.trim_start();
            let hex = rest.strip_prefix("0x")?;
            let end = hex
                .find(|c: char| !c.is_ascii_hexdigit())
                .unwrap_or(hex.len());
            u64::from_str_radix(&hex[..end], 16).ok()
        })
        .ok_or_else(|| format!("no {key:?} line\n--- console tail ---\n{}", out.tail(25)))
}

fn mte_guest() -> Result<(), String> {
    let o = RunOpts {
        guest_cmdline: "scenario=mte".into(),
        ..quiet()
    };
    let x = Extra {
        machine_opts: Some("mte=on"),
        ..Extra::default()
    };
    let out = aarch64::run_with(&o, &x)?;
    out.expect(0, reason::GUEST_EXIT)?;
    for needle in [
        "testguest: ok   mte: ID_AA64PFR1_EL1.MTE = ",
        "testguest: ok   mte: TFSR_EL1=0x0 TFSRE0_EL1=0x0 GCR_EL1=0x1 RGSR_EL1=0xabcd00 written and read back",
        "testguest: ok   mte: STG/LDG",
        "testguest: ok   mte: tags still",
        "testguest: ok   mte: sync checks: right tag loads, wrong tag -> Tag Check fault",
        "testguest: ok   mte: async checks",
        "testguest: ok   mte: STG to the locked page skipped (tag 3, want 3)",
        "testguest: ok   mte: STG to the protected granule skipped (tag 7, want 7)",
        "testguest: ok   mte: ST2G across into the protected granule: unprotected tag 9 (9), protected tag 7 (7)",
        "testguest: ok   mte: STG to an unprotected granule of the chunk page lands (tag 4)",
        "testguest: ok   mte: wrong-tag store to the chunk page -> Tag Check fault",
        "testguest: ok   mte: right-tag store to the chunk page lands (0x7777)",
        "testguest: mte: all checks passed",
    ] {
        need(&out, needle)?;
    }
    // The two refused tag writes are violations at the locked bytes.
    let lp = guest_addr(&out, "locked page")?;
    let cp = guest_addr(&out, "chunk page")?;
    need(
        &out,
        &format!("bulwark: violation kind=roe access=write gpa={lp:#x}"),
    )?;
    need(
        &out,
        &format!(
            "bulwark: violation kind=roe-chunk access=write gpa={:#x}",
            cp + 0x800
        ),
    )?;
    need(
        &out,
        "changes the Allocation Tag of a granule with protected bytes",
    )
}

fn mte_linux() -> Result<(), String> {
    let p = aarch64::linux_payload()?;
    let o = RunOpts {
        cpu: Some(aarch64::LINUX_CPU.into()),
        guest_cmdline: aarch64::LINUX_CMDLINE.into(),
        timeout: Some(120),
        ..quiet()
    };
    let x = Extra {
        payload: Some(p.bundle),
        machine_opts: Some("mte=on"),
        ..Extra::default()
    };
    let out = aarch64::run_with(&o, &x)?;
    out.expect(0, reason::GUEST_EXIT)?;
    // The kernel found MTE and turned it on (it wrote its MTE registers at boot), then ran
    // /init and powered off.
    need(&out, "CPU features: detected: Memory Tagging Extension")?;
    aarch64::need_init_then_power_off(&out)
}

/// The test guest's `scenario=sve` on `cpu` (QEMU `-cpu`); `vl_bits`: the vector length the
/// guest must report.
fn sve_guest(cpu: &str, vl_bits: u32) -> Result<(), String> {
    let o = RunOpts {
        cpu: Some(cpu.into()),
        guest_cmdline: "scenario=sve".into(),
        ..quiet()
    };
    let out = aarch64::run_with(&o, &Extra::default())?;
    out.expect(0, reason::GUEST_EXIT)?;
    for needle in [
        format!("testguest: ok   sve: vector length {vl_bits} bits"),
        format!("testguest: ok   sve: non-streaming: Z0-Z31 ({vl_bits} bits each), P0-P15, FFR intact across 5 exits"),
        "testguest: ok   sve: the two chunk-page stores landed".into(),
        "testguest: sve: all checks passed".into(),
    ] {
        need(&out, &needle)?;
    }
    // The exits really happened: three HVCs, a syndrome store, a software step.
    aarch64::counter_at_least(&out, "exit_hvc", 4)?;
    aarch64::counter_at_least(&out, "emulated_stores", 2)?;
    aarch64::counter_at_least(&out, "sw_steps", 1)?;
    // SME, where QEMU offers it, in streaming mode with ZA.
    if out.has("ID_AA64PFR1_EL1.SME = 0") {
        need(&out, "no SME on this CPU")
    } else {
        if out.has("testguest: sve: SME FA64 = 1") {
            need(
                &out,
                "testguest: ok   sve: streaming: Z0-Z31 (2048 bits each), P0-P15, FFR intact",
            )?;
        } else {
            need(&out, "testguest: ok   sve: streaming: Z0-Z31")?;
        }
        need(&out, "testguest: ok   sve: ZA rows 0-3 intact")
    }
}

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::new(
            "aarch64 cpu: SVE state intact across exits, longest vectors (-cpu max)",
            "qemu virt el2 sve",
            || sve_guest("max", 2048),
        ),
        Scenario::new(
            "aarch64 cpu: SVE state intact across exits, 256-bit vectors (sve-max-vq=2)",
            "qemu virt el2 sve",
            || sve_guest("max,sve-max-vq=2", 256),
        ),
        Scenario::new(
            "aarch64 cpu: MTE registers, tags, tag checks and tag locks (mte=on)",
            "qemu virt el2 mte",
            mte_guest,
        ),
        Scenario::new(
            "aarch64 cpu: Debian's arm64 kernel with MTE to /init (mte=on)",
            "qemu virt el2 mte",
            mte_linux,
        ),
    ]
}
