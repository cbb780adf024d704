//! SMCCC discovery and the two vendor-hyp ABIs (issues 17 and 18; docs/smccc.md): the arm64 test
//! guest's `scenario=smccc-linux` replays a stock Linux kernel's own probes and then uses the
//! ABI Bulwark was told to serve (`hyp-abi=seed`, the default, or `hyp-abi=upstream`).

use bulwark_abi::console::{reason, STATUS_BULWARK_FAILURE};

use crate::util::{Outcome, RunOpts, Scenario};

const TIMEOUT_S: u64 = 30;

fn run(cmdline: &str, guest_cmdline: &str) -> Result<Outcome, String> {
    crate::aarch64::run(&RunOpts {
        arch: Some(crate::util::Arch::Aarch64),
        timeout: Some(TIMEOUT_S),
        cmdline: cmdline.into(),
        guest_cmdline: guest_cmdline.into(),
        quiet: true,
        ..RunOpts::default()
    })
}

fn need(out: &Outcome, needle: &str) -> Result<(), String> {
    if out.has(needle) {
        Ok(())
    } else {
        Err(format!(
            "console lacks {needle:?}\n--- console tail ---\n{}",
            out.tail(40)
        ))
    }
}

fn refute(out: &Outcome, needle: &str) -> Result<(), String> {
    if out.has(needle) {
        Err(format!(
            "console has {needle:?}\n--- console tail ---\n{}",
            out.tail(40)
        ))
    } else {
        Ok(())
    }
}

/// The guest's answers to SMCCC_ARCH_FEATURES of the workarounds must be what Bulwark's boot
/// line says it tells the guest (from the firmware probe).
fn workarounds_agree(out: &Outcome) -> Result<(), String> {
    let line = out
        .lines
        .iter()
        .find(|l| l.contains("Spectre workarounds to the guest:"))
        .ok_or("no SMCCC boot line")?;
    for n in 1..=3 {
        let said = line
            .split_ascii_whitespace()
            .find_map(|t| t.strip_prefix(&format!("WA{n}=")))
            .ok_or_else(|| format!("boot line lacks WA{n}: {line}"))?;
        need(
            out,
            &format!("smccc: SMCCC_ARCH_FEATURES(ARCH_WORKAROUND_{n}) -> {said}"),
        )?;
    }
    Ok(())
}

/// Checks common to both ABIs: Linux's probes find SMCCC 1.1 over HVC and KVM's services with
/// ROE at function 64 (x2 bit 0).
fn linux_probes(out: &Outcome) -> Result<(), String> {
    out.expect(0, reason::GUEST_EXIT)?;
    need(out, "testguest: smccc: all checks passed")?;
    refute(out, "testguest: FAIL")?;
    need(
        out,
        "testguest: ok   smccc: PSCI_FEATURES(SMCCC_VERSION) -> 0",
    )?;
    need(
        out,
        "testguest: ok   smccc: SMCCC_VERSION -> 0x10001: the kernel prints 'SMC Calling Convention v1.1', conduit HVC",
    )?;
    need(out, "smccc: VENDOR_HYP_CALL_UID is KVM's")?;
    need(
        out,
        "testguest: ok   smccc: kvm_arm_hyp_service_available(64) (ROE) and (65) (GUEST_EXIT) are true",
    )?;
    need(
        out,
        "testguest: ok   smccc: ROE through the SMCCC 1.1 conduit",
    )?;
    workarounds_agree(out)
}

/// Debian's stock arm64 kernel under `hyp-abi=upstream`: its own probes print SMCCC 1.1 and the
/// upstream bitmap (0x9d in x0, ROE and GUEST_EXIT in x2), and an unmodified kernel boots to
/// userspace (the default-ABI run is `aarch64: Debian arm64 kernel boots ...` in aarch64.rs).
fn debian_upstream() -> Result<(), String> {
    use crate::aarch64::{self as a};
    let (kernel, busybox) = a::debian_kernel_and_busybox()?;
    let dir = crate::util::out_dir("aarch64/smccc")?;
    let initramfs = dir.join("initramfs.cpio");
    std::fs::write(&initramfs, a::busybox_initramfs(&busybox)?).map_err(|e| e.to_string())?;
    let payload = dir.join("linux-bundle.bin");
    a::bundle(&kernel, &initramfs, &payload)?;
    let out = a::run_with(
        &RunOpts {
            cpu: Some(a::LINUX_CPU.into()),
            cmdline: "hyp-abi=upstream".into(),
            guest_cmdline: a::LINUX_CMDLINE.into(),
            timeout: Some(120),
            quiet: true,
            ..RunOpts::default()
        },
        &a::Extra {
            payload: Some(payload),
            ..a::Extra::default()
        },
    )?;
    out.expect(0, reason::GUEST_EXIT)?;
    need(&out, "psci: SMC Calling Convention v1.1")?;
    need(
        &out,
        "smccc: KVM: hypervisor services detected (0x00000000 0x00000003 0x00000000 0x0000009d)",
    )?;
    need(&out, "BULWARK-INIT-MARKER: userspace reached")?;
    refute(&out, "bulwark: violation")
}

pub fn scenarios() -> Vec<Scenario> {
    let emu = "qemu virt el2";
    vec![
        Scenario::new(
            "aarch64 smccc: Linux's SMCCC 1.1 and KVM-services probes find Bulwark; seed ABI (default) served exactly",
            emu,
            || {
                let out = run("", "scenario=smccc-linux abi=seed")?;
                linux_probes(&out)?;
                need(&out, "SMCCC: v1.1 to the guest; hyp-abi=seed (vendor-hyp FEATURES x0..x3 = 0x3d 0x0 0x3 0x0)")?;
                need(
                    &out,
                    "smccc: hypervisor services detected (0x00000000 0x00000003 0x00000000 0x0000003d)",
                )?;
                need(&out, "testguest: ok   smccc: upstream MMIO_GUARD (7) -> 0xffffffffffffffff (NOT_SUPPORTED), nothing enrolled")?;
                need(&out, "testguest: ok   smccc: INFO -> 4096, ENROLL -> 0, MAP(UART) -> 0")?;
                need(&out, "bulwark: violation kind=mmio-guard access=read gpa=0x9010000")
            },
        ),
        Scenario::new(
            "aarch64 smccc: hyp-abi=upstream serves Linux's pKVM guest ABI; MEM_SHARE never enrols, MMIO_GUARD registers",
            emu,
            || {
                let out = run("hyp-abi=upstream", "scenario=smccc-linux abi=upstream")?;
                linux_probes(&out)?;
                need(&out, "SMCCC: v1.1 to the guest; hyp-abi=upstream (vendor-hyp FEATURES x0..x3 = 0x9d 0x0 0x3 0x0)")?;
                need(
                    &out,
                    "smccc: hypervisor services detected (0x00000000 0x00000003 0x00000000 0x0000009d)",
                )?;
                // The measured breach of issue 18, now refused: MEM_SHARE(RAM) does not enrol,
                // MEM_UNSHARE(RAM) does not land on MAP.
                need(&out, "guard not enrolled (the unregistered RTC still reads)")?;
                need(&out, "testguest: ok   smccc: MEM_UNSHARE(RAM page) -> 0")?;
                need(&out, "testguest: ok   smccc: the seed's UNMAP number (5) -> 0xffffffffffffffff (NOT_SUPPORTED)")?;
                need(&out, "testguest: ok   smccc: MMIO_GUARD(UART) -> 0: enrolled")?;
                need(&out, "testguest: ok   smccc: read of the never-registered RTC -> external abort")?;
                need(&out, "bulwark: violation kind=mmio-guard access=read gpa=0x9010000")?;
                need(&out, "testguest: ok   smccc: MMIO_GUARD(RTC) -> 0; the RTC reads again")
            },
        ),
        Scenario::new(
            "aarch64 smccc: a seed-ABI guest under hyp-abi=upstream is told by FEATURES and served no seed function",
            emu,
            || {
                // A seed-ABI client on the wrong setting: discovery says so (bit 5 clear), ENROLL
                // (3, no argument) is upstream MEM_SHARE of IPA 0 (not RAM): refused, nothing
                // enrolled, no guard violation ever; its checks fail and the run fails.
                let out = run("hyp-abi=upstream", "from-xtask")?;
                need(&out, "testguest: FAIL vendor-hyp FEATURES 0x9d: FEATURES and MMIO guard 2..5 present")?;
                need(&out, "testguest: FAIL ENROLL -> 18446744073709551613")?;
                refute(&out, "kind=mmio-guard")?;
                if out.status == Some(0) {
                    return Err("the seed-ABI guest passed under hyp-abi=upstream".into());
                }
                Ok(())
            },
        ),
        Scenario::new(
            "aarch64 smccc: Debian's arm64 kernel under hyp-abi=upstream: its own probes see SMCCC 1.1 and the upstream bitmap",
            emu,
            debian_upstream,
        ),
        Scenario::new("aarch64 smccc: a bad hyp-abi= is refused", emu, || {
            let out = run("hyp-abi=pkvm", "scenario=smccc-linux")?;
            out.expect(STATUS_BULWARK_FAILURE, reason::REFUSED)?;
            need(&out, "bad command-line token 'hyp-abi=pkvm'")?;
            refute(&out, "testguest:")
        }),
    ]
}
