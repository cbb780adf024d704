//! Shared xtask machinery: option parsing, tool checks, cargo builds, and the emulator runner that
//! streams the serial console and judges a run by Bulwark's final `bulwark: result` line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bulwark_abi::console::parse_result_line;
use bulwark_abi::logauth::{Forgery, Line, Order, Verifier};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub fn parse(s: &str) -> Result<Arch, String> {
        match s {
            "x86_64" | "x86" | "x86-64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            _ => Err(format!("unknown --arch '{s}' (expected x86_64 or aarch64)")),
        }
    }
}

/// Options shared by build/iso/run/qemu.
#[derive(Clone, Debug, Default)]
pub struct RunOpts {
    pub arch: Option<Arch>,
    /// `bochs` or `qemu`; None = the arch's default.
    pub emulator: Option<String>,
    /// Emulator CPU model (Bochs `cpu: model=`, QEMU `-cpu`).
    pub cpu: Option<String>,
    /// Firmware: x86_64 `bios` (default) or `uefi` (QEMU with OVMF only); aarch64 `uboot`
    /// (U-Boot `booti` from a disk) or none (QEMU `-kernel`).
    pub firmware: Option<String>,
    /// Seconds before the run is declared hung and killed.
    pub timeout: Option<u64>,
    /// Bulwark's own command line.
    pub cmdline: String,
    /// Guest kernel image; None = the arch's built-in default guest (or none).
    pub guest: Option<PathBuf>,
    pub guest_cmdline: String,
    /// x86: a second module after the guest (a bzImage's initrd, a Multiboot module).
    pub initrd: Option<PathBuf>,
    /// Bochs: emulated instructions per emulated second (`cpu: ips=`); None = the default.
    pub bochs_ips: Option<u64>,
    /// Bochs: number of CPUs (`cpu: count=`); None = 1.
    pub bochs_cpus: Option<u32>,
    pub release: bool,
    /// Do not echo the console to stdout (tests keep it and print it on failure).
    pub quiet: bool,
}

impl RunOpts {
    pub fn parse(args: &[String], default_arch: Option<Arch>) -> Result<RunOpts, String> {
        let mut o = RunOpts {
            arch: default_arch,
            ..RunOpts::default()
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = |name: &str| -> Result<String, String> {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--arch" => o.arch = Some(Arch::parse(&val("--arch")?)?),
                "--emulator" => {
                    let e = val("--emulator")?;
                    if e != "bochs" && e != "qemu" {
                        return Err(format!("unknown --emulator '{e}' (expected bochs or qemu)"));
                    }
                    o.emulator = Some(e);
                }
                "--cpu" => o.cpu = Some(val("--cpu")?),
                "--firmware" => {
                    let f = val("--firmware")?;
                    if !["bios", "uefi", "uboot"].contains(&f.as_str()) {
                        return Err(format!(
                            "unknown --firmware '{f}' (expected bios or uefi on x86_64, uboot on aarch64)"
                        ));
                    }
                    o.firmware = Some(f);
                }
                "--timeout" => {
                    let t = val("--timeout")?;
                    let secs: u64 = t
                        .parse()
                        .map_err(|_| format!("--timeout '{t}' is not a number of seconds"))?;
                    if secs == 0 {
                        return Err("--timeout must be at least 1 second".into());
                    }
                    o.timeout = Some(secs);
                }
                "--cmdline" => o.cmdline = val("--cmdline")?,
                "--guest" => {
                    let g = PathBuf::from(val("--guest")?);
                    if !g.is_file() {
                        return Err(format!("--guest {}: no such file", g.display()));
                    }
                    o.guest = Some(g);
                }
                "--guest-cmdline" => o.guest_cmdline = val("--guest-cmdline")?,
                "--initrd" => {
                    let f = PathBuf::from(val("--initrd")?);
                    if !f.is_file() {
                        return Err(format!("--initrd {}: no such file", f.display()));
                    }
                    o.initrd = Some(f);
                }
                "--release" => o.release = true,
                "--quiet" => o.quiet = true,
                other => return Err(format!("unknown option '{other}' (see cargo xtask help)")),
            }
        }
        Ok(o)
    }
}

/// Root of the workspace (parent of xtask/).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where xtask writes generated files (emulator configs, ISOs, images, logs).
pub fn out_dir(sub: &str) -> Result<PathBuf, String> {
    let d = target_dir().join("xtask").join(sub);
    std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    Ok(d)
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// One progress line for long steps.
pub fn progress(msg: &str) {
    eprintln!("xtask: {msg}");
}

/// Fail with a one-line message naming the Debian package when a file a tool needs is missing.
pub fn need_file(path: &str, debian_pkg: &str) -> Result<(), String> {
    if Path::new(path).exists() {
        Ok(())
    } else {
        Err(format!(
            "{path} not found: install it with `apt-get install --no-install-recommends {debian_pkg}`"
        ))
    }
}

/// Fail with a one-line message naming the Debian package when a tool is missing.
pub fn need_tool(bin: &str, debian_pkg: &str) -> Result<(), String> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(format!(
            "'{bin}' not found: install it with `apt-get install --no-install-recommends {debian_pkg}`"
        ))
    }
}

/// Build one package for a bare-metal target; returns the path of the produced binary.
pub fn cargo_build(
    package: &str,
    bin: &str,
    target: &str,
    release: bool,
) -> Result<PathBuf, String> {
    progress(&format!(
        "building {package} for {target}{}",
        if release { " (release)" } else { "" }
    ));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root()).args([
        "build", "--quiet", "-p", package, "--bin", bin, "--target", target,
    ]);
    if release {
        cmd.arg("--release");
    }
    let st = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
    if !st.success() {
        return Err(format!("cargo build of {package} for {target} failed"));
    }
    let profile = if release { "release" } else { "debug" };
    Ok(target_dir().join(target).join(profile).join(bin))
}

/// Run a command to completion, failing with its output if it fails.
pub fn run_checked(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Where the emulator's serial console appears.
pub enum Serial {
    /// The emulator writes the console to its stdout.
    Stdout,
    /// The emulator writes the console to this file (Bochs `com1: mode=file`).
    File(PathBuf),
}

/// One emulator invocation.
pub struct Emulator {
    pub cmd: Command,
    pub serial: Serial,
    pub timeout: Duration,
    /// Echo console lines to stdout as they arrive.
    pub echo: bool,
    /// File that receives the emulator's own stderr (and stdout when the console is a file).
    pub log: PathBuf,
}

/// What a run produced.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Status from the first authenticated `bulwark: result status=N` line, if one was seen.
    pub status: Option<u32>,
    pub reason: String,
    /// The console as far as it can be trusted: Bulwark's authenticated lines (tag stripped,
    /// starting at `bulwark: `; what the guest wrote before one on the same line is its own
    /// line), the key line, and every line that does not claim to be Bulwark's. Lines that claim
    /// to be Bulwark's and do not verify are left out (see `forged`).
    pub lines: Vec<String>,
    /// The console exactly as read (one entry per line).
    pub raw: Vec<String>,
    /// Lines that claim to be Bulwark's and do not verify: `(line number from 1, why, line)`.
    pub forged: Vec<(usize, &'static str, String)>,
    /// Breaks in the authenticated lines' sequence: `(line number, what)`.
    pub seq_breaks: Vec<(usize, String)>,
    /// Bulwark lines its console dropped and reported dropped (`bulwark: WARN console dropped=N`
    /// right after the seq gap): not a break.
    pub console_dropped: u64,
    /// The console was checked line by line (see [`Console`]).
    pub console: Console,
    pub timed_out: bool,
    pub seconds: f64,
    /// The emulator's own log file.
    pub log: PathBuf,
}

impl Outcome {
    /// Process exit code for this run: the status (mod 256, non-zero kept non-zero), 124 on timeout,
    /// 3 when the emulator ended without a verdict.
    pub fn exit_code(&self) -> u8 {
        match self.status {
            Some(0) => 0,
            Some(s) => u8::try_from(s).unwrap_or(1),
            None if self.timed_out => 124,
            None => 3,
        }
    }

    /// Print the verdict and return the exit code (for `run`/`qemu`).
    pub fn report(&self) -> u8 {
        let code = self.exit_code();
        for (n, why, l) in &self.forged {
            eprintln!("xtask: FORGED console line {n} ({why}), ignored: {l}");
        }
        for (n, what) in &self.seq_breaks {
            eprintln!("xtask: console line {n}: {what}");
        }
        match self.status {
            Some(s) => eprintln!(
                "xtask: run ended: status={s} reason={} ({:.1} s) -> exit code {code}",
                self.reason, self.seconds
            ),
            None if self.timed_out => eprintln!(
                "xtask: run timed out after {:.1} s without a result line (emulator log: {})",
                self.seconds,
                self.log.display()
            ),
            None => eprintln!(
                "xtask: emulator ended without a result line after {:.1} s (emulator log: {})",
                self.seconds,
                self.log.display()
            ),
        }
        code
    }

    /// True when a line contains `needle`.
    pub fn has(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }

    /// Last lines of the console, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        self.lines[start..].join("\n")
    }

    /// Ok when the run ended with `status` and `reason` (from an authenticated result line) and
    /// Bulwark's lines arrived whole and in order, else an error with the console tail.
    pub fn expect(&self, status: u32, reason_word: &str) -> Result<(), String> {
        if let Some((n, what)) = self.seq_breaks.first() {
            return Err(format!(
                "console line {n}: {what}\n--- console tail ---\n{}",
                self.tail(25)
            ));
        }
        if self.status == Some(status) && self.reason == reason_word {
            Ok(())
        } else {
            Err(format!(
                "expected status={status} reason={reason_word}, got {}\n--- console tail ---\n{}",
                match self.status {
                    Some(s) => format!("status={s} reason={}", self.reason),
                    None if self.timed_out => "timeout".into(),
                    None => "no result line".into(),
                },
                self.tail(25)
            ))
        }
    }
}

/// Start the emulator, stream its console, stop at the result line, a timeout, or emulator exit.
pub fn run_emulator(mut emu: Emulator) -> Result<Outcome, String> {
    let log = File::create(&emu.log).map_err(|e| format!("creating {}: {e}", emu.log.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    emu.cmd.stdin(Stdio::null()).stderr(Stdio::from(log2));
    match &emu.serial {
        Serial::Stdout => {
            emu.cmd.stdout(Stdio::piped());
        }
        Serial::File(p) => {
            // A stale console file would be read as this run's output.
            let _ = std::fs::remove_file(p);
            File::create(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
            emu.cmd.stdout(Stdio::from(log));
        }
    }
    let start = Instant::now();
    let mut child = emu
        .cmd
        .spawn()
        .map_err(|e| format!("starting {:?}: {e}", emu.cmd.get_program()))?;

    let (tx, rx) = mpsc::channel::<String>();
    let stop = Arc::new(AtomicBool::new(false));
    match &emu.serial {
        Serial::Stdout => {
            let out = child.stdout.take().ok_or("no emulator stdout")?;
            std::thread::spawn(move || {
                let mut r = BufReader::new(out);
                let mut buf = Vec::new();
                while let Ok(n) = r.read_until(b'\n', &mut buf) {
                    if n == 0 {
                        break;
                    }
                    if tx.send(clean_line(&buf)).is_err() {
                        break;
                    }
                    buf.clear();
                }
            });
        }
        Serial::File(p) => {
            let p = p.clone();
            let stop = stop.clone();
            std::thread::spawn(move || tail_file(&p, tx, &stop));
        }
    }

    let mut out = Outcome {
        log: emu.log.clone(),
        ..Outcome::default()
    };
    let mut result_at: Option<Instant> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(line) => {
                if emu.echo {
                    println!("{line}");
                }
                if out.take(line) {
                    result_at = Some(Instant::now());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Console closed: the emulator is gone (stdout) or the tail thread stopped.
                if exited(&mut child) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(t) = result_at {
            // Give the emulator a moment to exit on its own, then stop it.
            if exited(&mut child) || t.elapsed() > Duration::from_millis(1500) {
                break;
            }
        } else if exited(&mut child) {
            // Drain what is left of the console.
            let deadline = Instant::now() + Duration::from_millis(300);
            while Instant::now() < deadline {
                if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
                    if emu.echo {
                        println!("{line}");
                    }
                    out.take(line);
                }
            }
            break;
        } else if start.elapsed() > emu.timeout {
            out.timed_out = true;
            if out.status.is_none() {
                out.reason = "timeout".into();
            }
            break;
        }
    }
    kill(&mut child);
    stop.store(true, Ordering::Release);
    out.seconds = start.elapsed().as_secs_f64();
    save_console(&emu.log, &out);
    Ok(out)
}

/// The console of the scenario now running, for the saved log's file name (set by `test`).
static LOG_NAME: std::sync::Mutex<Option<(String, u32)>> = std::sync::Mutex::new(None);

/// Name the serial logs of the runs that follow (`target/xtask/console/<name>[-N].log`).
pub fn name_console_logs(name: &str) {
    let slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    if let Ok(mut g) = LOG_NAME.lock() {
        *g = Some((slug, 0));
    }
}

/// Save a run's serial console as read, for `cargo xtask log`: under the scenario's name (when
/// `test` runs it) or the emulator log's, and as `latest.log`.
fn save_console(emu_log: &Path, out: &Outcome) {
    let Ok(dir) = out_dir("console") else { return };
    let name = match LOG_NAME.lock().ok().and_then(|mut g| {
        g.as_mut().map(|(n, i)| {
            *i += 1;
            if *i == 1 {
                n.clone()
            } else {
                format!("{n}-{i}")
            }
        })
    }) {
        Some(n) => n,
        None => emu_log
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into()),
    };
    let mut text = out.raw.join("\n");
    text.push('\n');
    let _ = std::fs::write(dir.join(format!("{name}.log")), &text);
    let _ = std::fs::write(dir.join("latest.log"), &text);
}

/// How a run's console is checked (docs/console.md). A run's console is read from power-on, so
/// a `bulwark: ` line before the key line can only be Bulwark's boot stub (no guest runs before
/// the key line): such lines are kept and a non-zero result line among them counts (the stub's
/// refusal). After the key line, only lines that verify count.
#[derive(Clone, Debug, Default)]
pub struct Console {
    verifier: Verifier,
    /// A key line was seen.
    pub keyed: bool,
}

impl Outcome {
    /// Check one console line and file it; true when it is the (first) authenticated result line.
    pub fn take(&mut self, line: String) -> bool {
        let n = self.raw.len() + 1;
        let mut result = None;
        match self.console.verifier.check(&line) {
            Line::Key { .. } => {
                self.console.keyed = true;
                self.lines.push(line.clone());
            }
            Line::Genuine {
                prefix,
                text,
                order,
                ..
            } => {
                match order {
                    Order::InOrder => {}
                    // Bulwark's own note that its console buffer overflowed, right after the
                    // gap, naming exactly the lines missing: reported, not a break.
                    Order::Gap { missing }
                        if bulwark_abi::console::parse_dropped_note(text) == Some(missing) =>
                    {
                        self.console_dropped = self.console_dropped.saturating_add(missing);
                    }
                    Order::Gap { missing } => self.seq_breaks.push((
                        n,
                        format!("{missing} Bulwark line(s) missing before this one"),
                    )),
                    Order::Replayed { last } => self.seq_breaks.push((
                        n,
                        format!("a replayed or reordered Bulwark line (after seq {last})"),
                    )),
                }
                if !prefix.trim().is_empty() {
                    self.lines.push(prefix.trim_end().to_string());
                }
                result = parse_result_line(text).map(|(s, r)| (s, r.to_string()));
                self.lines.push(text.to_string());
            }
            Line::Forged {
                why: Forgery::NoKey,
            } if !self.console.keyed => {
                // Before the key line: Bulwark's boot stub (see `Console`). Its only verdicts are
                // refusals: an untagged success is never taken, so a Bulwark that lost its key
                // line cannot pass a run.
                result = parse_result_line(&line)
                    .filter(|(s, _)| *s != 0)
                    .map(|(s, r)| (s, r.to_string()));
                self.lines.push(line.clone());
            }
            Line::Forged { why } => self.forged.push((n, why.as_str(), line.clone())),
            Line::Other => self.lines.push(line.clone()),
        }
        self.raw.push(line);
        match result {
            Some((s, r)) if self.status.is_none() => {
                self.status = Some(s);
                self.reason = r;
                true
            }
            _ => false,
        }
    }

    /// True when a line that claims to be Bulwark's and does not verify contains `needle`.
    pub fn forged_has(&self, needle: &str) -> bool {
        self.forged.iter().any(|(_, _, l)| l.contains(needle))
    }
}

fn exited(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(Some(_)))
}

fn kill(child: &mut Child) {
    if !exited(child) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Strip CR and terminal escape noise; keep the text.
fn clean_line(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    s.trim_end_matches(['\n', '\r']).replace('\r', "")
}

/// Follow a file as it grows, sending whole lines.
fn tail_file(path: &Path, tx: mpsc::Sender<String>, stop: &AtomicBool) {
    let mut pos = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        if let Ok(mut f) = File::open(path) {
            if f.seek(SeekFrom::Start(pos)).is_ok() {
                let mut buf = Vec::new();
                if let Ok(n) = f.read_to_end(&mut buf) {
                    pos += n as u64;
                    pending.extend_from_slice(&buf);
                    while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=i).collect();
                        if tx.send(clean_line(&line)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One entry of the `cargo xtask test` matrix.
pub struct Scenario {
    pub name: String,
    /// "bochs tigerlake", "qemu virt", "host", ...
    pub emulator: String,
    pub run: Box<dyn Fn() -> Result<(), String>>,
}

impl Scenario {
    pub fn new(
        name: impl Into<String>,
        emulator: impl Into<String>,
        run: impl Fn() -> Result<(), String> + 'static,
    ) -> Scenario {
        Scenario {
            name: name.into(),
            emulator: emulator.into(),
            run: Box::new(run),
        }
    }
}
