//! `cargo xtask test`: host tests, lint, then every emulator scenario, ending with a table
//! (scenario, emulator/model, result, seconds) and a non-zero exit if anything failed.

use std::process::Command;
use std::time::Instant;

use crate::util::{self, Scenario};

struct Row {
    name: String,
    emulator: String,
    ok: bool,
    seconds: f64,
}

/// Host-side checks that every CI run performs before the emulators.
fn host_scenarios() -> Vec<Scenario> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let c1 = cargo.clone();
    let c2 = cargo.clone();
    let c3 = cargo;
    vec![
        Scenario::new(
            "host unit, property and fuzz-style tests",
            "host",
            move || cargo_step(&c1, &["test", "--quiet"], "cargo test"),
        ),
        Scenario::new("rustfmt check", "host", move || {
            cargo_step(&c2, &["fmt", "--all", "--", "--check"], "cargo fmt --check")
        }),
        Scenario::new(
            "clippy -D warnings (host and both bare-metal targets)",
            "host",
            move || {
                cargo_step(
                    &c3,
                    &["clippy", "--quiet", "--all-targets", "--", "-D", "warnings"],
                    "clippy (host)",
                )?;
                for (target, pkgs) in [
                    ("x86_64-unknown-none", ["bulwark", "x86_64-testguest"]),
                    ("aarch64-unknown-none", ["bulwark", "aarch64-testguest"]),
                ] {
                    let mut args = vec!["clippy", "--quiet", "--target", target];
                    for p in pkgs {
                        args.extend(["-p", p]);
                    }
                    args.extend(["--", "-D", "warnings"]);
                    cargo_step(&c3, &args, &format!("clippy ({target})"))?;
                }
                Ok(())
            },
        ),
    ]
}

fn cargo_step(cargo: &str, args: &[&str], what: &str) -> Result<(), String> {
    let st = Command::new(cargo)
        .current_dir(util::root())
        .args(args)
        .status()
        .map_err(|e| format!("{what}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({st})"))
    }
}

/// Scenarios that build a real kernel from source (minutes on 2 cores): they run only when a
/// filter names them (`cargo xtask test pkvm-linux`) or with `--slow`, so CI stays within its
/// time budget (docs/testing.md, "Slow scenarios").
const SLOW: &[&str] = &["pkvm-linux"];

fn is_slow(name: &str) -> bool {
    SLOW.iter().any(|s| name.contains(s))
}

pub fn main(args: &[String]) -> Result<u8, String> {
    let mut filters = Vec::new();
    let mut list = false;
    let mut host = true;
    let mut slow = false;
    for a in args {
        match a.as_str() {
            "--list" => list = true,
            "--no-host" => host = false,
            "--slow" => slow = true,
            s if s.starts_with("--") => return Err(format!("unknown test option '{s}'")),
            s => filters.push(s.to_string()),
        }
    }
    let mut all = Vec::new();
    if host {
        all.extend(host_scenarios());
    }
    all.extend(crate::x86_64::scenarios());
    all.extend(crate::x86_64_roe::scenarios());
    all.extend(crate::x86_64_spp::scenarios());
    all.extend(crate::x86_64_walk::scenarios());
    all.extend(crate::x86_platform::scenarios());
    all.extend(crate::aarch64::scenarios());
    all.extend(crate::smccc_tests::scenarios());
    all.extend(crate::cpu_tests::scenarios());
    all.extend(crate::uboot::scenarios());
    all.extend(crate::attr_tests::scenarios());
    all.extend(crate::bench::scenarios());
    all.extend(crate::console_tests::scenarios());
    all.extend(crate::matrix_tests::scenarios());
    all.extend(crate::pkvm_linux::scenarios());
    let selected: Vec<Scenario> = all
        .into_iter()
        .filter(|s| {
            let named = filters
                .iter()
                .any(|f| s.name.contains(f.as_str()) || s.emulator.contains(f.as_str()));
            // A slow scenario runs when asked for: `--slow`, or a filter that names it.
            let slow_ok = slow || !is_slow(&s.name) || filters.iter().any(|f| is_slow(f));
            (filters.is_empty() || named) && slow_ok
        })
        .collect();
    if list {
        for s in &selected {
            println!("{:<60} {}", s.name, s.emulator);
        }
        return Ok(0);
    }
    if selected.is_empty() {
        return Err("no scenario matches the filter".into());
    }

    let total = selected.len();
    let mut rows = Vec::new();
    for (i, s) in selected.iter().enumerate() {
        util::progress(&format!("[{}/{total}] {} ({})", i + 1, s.name, s.emulator));
        util::name_console_logs(&format!("{} {}", s.name, s.emulator));
        let t = Instant::now();
        let res = (s.run)();
        let seconds = t.elapsed().as_secs_f64();
        match &res {
            Ok(()) => util::progress(&format!("    ok ({seconds:.1} s)")),
            Err(e) => {
                println!("---- FAILED: {} ({}) ----\n{e}\n----", s.name, s.emulator);
            }
        }
        rows.push(Row {
            name: s.name.clone(),
            emulator: s.emulator.clone(),
            ok: res.is_ok(),
            seconds,
        });
    }

    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(8).max(8);
    let we = rows
        .iter()
        .map(|r| r.emulator.len())
        .max()
        .unwrap_or(8)
        .max(8);
    println!();
    println!(
        "| {:<w$} | {:<we$} | result | seconds |",
        "scenario", "emulator"
    );
    println!(
        "|-{}-|-{}-|--------|---------|",
        "-".repeat(w),
        "-".repeat(we)
    );
    for r in &rows {
        println!(
            "| {:<w$} | {:<we$} | {:<6} | {:>7.1} |",
            r.name,
            r.emulator,
            if r.ok { "pass" } else { "FAIL" },
            r.seconds
        );
    }
    let passed = rows.iter().filter(|r| r.ok).count();
    let failed = rows.len() - passed;
    println!();
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}
