//! Forgery scenarios (docs/console.md): a guest prints lines that pass for Bulwark's — a fake key
//! line, fake violation, counters and error lines, a fake `result status=0` — then crashes. The
//! run's verdict must still be the crash Bulwark reported, every fake must be called out as
//! forged and left out of what scenarios check, and Bulwark's own violation line among them must
//! verify. `cargo xtask log`'s analysis of the saved console must agree.

use bulwark_abi::console::{reason, STATUS_BULWARK_FAILURE};

use crate::util::{Outcome, RunOpts, Scenario};

/// arm64's status for a guest crash (docs/aarch64.md).
const STATUS_GUEST_CRASH_ARM64: u32 = 0xB3;

/// What both arches' forge runs must show. `guest_start`: the guest's first console line.
fn judge(out: &Outcome, status: u32, guest_start: &str) -> Result<(), String> {
    let fail = |why: String| {
        let forged: Vec<String> = out
            .forged
            .iter()
            .map(|(n, w, l)| format!("{n} {w}: {l}"))
            .collect();
        Err(format!(
            "{why}\n--- forged ---\n{}\n--- console tail ---\n{}",
            forged.join("\n"),
            out.tail(30)
        ))
    };
    // The true verdict, from the one result line that verifies.
    out.expect(status, reason::GUEST_CRASH)?;
    // Bulwark's key line came first: before the guest's first line.
    let key = out
        .raw
        .iter()
        .position(|l| l.starts_with("bulwark: log-key "));
    let start = out.raw.iter().position(|l| l.contains(guest_start));
    if !matches!((key, start), (Some(k), Some(g)) if k < g) {
        return fail(format!(
            "Bulwark's key line (line {key:?}) must precede the guest's start (line {start:?})"
        ));
    }
    if !out.has("forge: the locked byte reads 0x5a") {
        return fail(
            "the guest did not reach its locked-page store, or the store went through".into(),
        );
    }
    // Bulwark's genuine violation verifies and stays visible...
    if !out.has("bulwark: violation kind=roe access=write") {
        return fail("no verified violation line for the store to the locked page".into());
    }
    // ...and no fake reaches what scenarios check.
    for fake in [
        "ip=0xdead",
        "ip=0xbeef",
        "forged error line",
        "log-key 00112233445566778899aabbccddeeff",
        "counters exits=1 violations=0",
        "result status=0",
    ] {
        if out.has(fake) {
            return fail(format!("a forged line containing {fake:?} was trusted"));
        }
        if !out.forged_has(fake) {
            return fail(format!(
                "the forged line containing {fake:?} was not called out"
            ));
        }
    }
    // `cargo xtask log` on the same console says the same.
    let s = crate::logtool::analyze(&out.raw);
    if s.result != Some((status, reason::GUEST_CRASH.into())) || s.forged.len() != out.forged.len()
    {
        return fail(format!(
            "xtask log disagrees: result {:?}, {} forged (run: {})",
            s.result,
            s.forged.len(),
            out.forged.len()
        ));
    }
    if !s.seq_breaks.is_empty() || s.by_kind.get("roe") != Some(&1) {
        return fail(format!(
            "xtask log: sequence breaks {:?}, violations {:?}",
            s.seq_breaks, s.by_kind
        ));
    }
    Ok(())
}

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::new(
            "console: x86 guest forges Bulwark lines and a result status=0, then triple-faults",
            "bochs tigerlake",
            || {
                let out = crate::x86_64::run(&RunOpts {
                    arch: Some(crate::util::Arch::X86_64),
                    emulator: Some("bochs".into()),
                    guest_cmdline: "scenario=forge".into(),
                    quiet: true,
                    ..RunOpts::default()
                })?;
                judge(&out, STATUS_BULWARK_FAILURE, "guest| ")
            },
        ),
        Scenario::new(
            "console: arm64 guest forges Bulwark lines (raw PL011), leaves one open, then crashes",
            "qemu virt el2",
            || {
                let out = crate::aarch64::run(&RunOpts {
                    guest_cmdline: "scenario=forge".into(),
                    quiet: true,
                    ..RunOpts::default()
                })?;
                judge(&out, STATUS_GUEST_CRASH_ARM64, "testguest: started")?;
                // The half line the guest left open is its own line; Bulwark's violation line
                // starts a line of its own and verifies whole.
                let open = "bulwark: result status=0 reason=guest-exit ";
                let half = out.raw.iter().position(|l| l == open);
                // Line numbers in `forged` count from 1.
                let genuine = half.map(|h| h + 1).filter(|&g| {
                    out.raw.get(g).is_some_and(|l| {
                        l.starts_with("bulwark: violation kind=roe access=write")
                            && l.contains(" mac=")
                    }) && !out.forged.iter().any(|(n, _, _)| *n == g + 1)
                });
                match (half, genuine) {
                    (Some(_), Some(_)) => Ok(()),
                    _ => Err(format!(
                        "expected the guest's open line, then Bulwark's violation on a line of its own\n{}",
                        out.raw.join("\n")
                    )),
                }
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use crate::util::Outcome;
    use bulwark_abi::logauth::{hex16, mac};

    const KEY: [u8; 16] = *b"outcome test key";

    fn tagged(seq: u64, text: &str) -> String {
        let m = hex16(&mac(&KEY, seq, text.as_bytes()));
        format!("{text} seq={seq} mac={}", String::from_utf8_lossy(&m))
    }

    fn key_line() -> String {
        format!(
            "bulwark: log-key {} alg=siphash-2-4-128 source=test",
            String::from_utf8_lossy(&hex16(&KEY))
        )
    }

    fn run(lines: &[String]) -> Outcome {
        let mut out = Outcome::default();
        for l in lines {
            out.take(l.clone());
        }
        out
    }

    #[test]
    fn only_verified_lines_decide_and_count() {
        let out = run(&[
            key_line(),
            tagged(1, "bulwark: INFO entering guest"),
            "guest| bulwark: violation kind=roe access=write gpa=0x1000".into(),
            "bulwark: result status=0 reason=guest-exit".into(),
            tagged(2, "bulwark: violation kind=attr access=exec gpa=0x2000"),
            tagged(3, "bulwark: result status=176 reason=guest-crash"),
        ]);
        assert_eq!(out.status, Some(176));
        assert_eq!(out.reason, "guest-crash");
        assert!(out.has("bulwark: violation kind=attr access=exec gpa=0x2000"));
        assert!(!out.has("kind=roe"));
        assert!(out.forged_has("kind=roe") && out.forged_has("status=0"));
        assert_eq!(out.forged.len(), 2);
        assert!(out.seq_breaks.is_empty());
        // Tags are stripped from what scenarios see; the raw console keeps them.
        assert!(out
            .lines
            .iter()
            .any(|l| l == "bulwark: INFO entering guest"));
        assert_eq!(out.raw.len(), 6);
    }

    #[test]
    fn before_the_key_line_only_a_refusal_is_taken() {
        let out = run(&["bulwark: result status=0 reason=guest-exit".into()]);
        assert_eq!(out.status, None);
        let out = run(&["bulwark: result status=176 reason=refused".into()]);
        assert_eq!(out.status, Some(176));
    }

    #[test]
    fn a_gap_fails_expect() {
        let out = run(&[
            key_line(),
            tagged(1, "bulwark: INFO a"),
            tagged(3, "bulwark: result status=0 reason=guest-exit"),
        ]);
        assert_eq!(out.status, Some(0));
        assert!(out.expect(0, "guest-exit").is_err());
    }

    #[test]
    fn a_gap_bulwark_reports_dropped_is_accepted_and_nothing_else() {
        let note = |n: u64| {
            format!("bulwark: WARN console dropped={n} (violation lines; console buffer full)")
        };
        // seq 2 and 3 dropped; the note (seq 4) names exactly 2.
        let out = run(&[
            key_line(),
            tagged(1, "bulwark: INFO a"),
            tagged(4, &note(2)),
            tagged(5, "bulwark: result status=0 reason=guest-exit"),
        ]);
        assert!(out.seq_breaks.is_empty(), "{:?}", out.seq_breaks);
        assert_eq!(out.console_dropped, 2);
        assert!(out.expect(0, "guest-exit").is_ok());
        // A note that names a different count, a gap before another line, an untagged
        // (guest-written) note: all breaks.
        for lines in [
            vec![
                key_line(),
                tagged(1, "bulwark: INFO a"),
                tagged(4, &note(1)),
            ],
            vec![
                key_line(),
                tagged(1, "bulwark: INFO a"),
                tagged(4, &note(3)),
            ],
            vec![
                key_line(),
                tagged(1, "bulwark: INFO a"),
                tagged(4, "bulwark: INFO b"),
            ],
            vec![
                key_line(),
                tagged(1, "bulwark: INFO a"),
                note(2),
                tagged(4, "bulwark: INFO b"),
            ],
        ] {
            let out = run(&lines);
            assert_eq!(out.seq_breaks.len(), 1, "{lines:?}");
            assert_eq!(out.console_dropped, 0);
        }
    }
}
