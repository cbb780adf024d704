//! `cargo xtask bench [--arch A]`: deterministic path-length and footprint benchmarks
//! (docs/bench.md).
//!
//! Every figure is an instruction count measured inside the guest (`scenario=bench:ROW` of the
//! test guests): Bochs with `clock: sync=none` and QEMU with `-icount shift=0` advance the
//! guest's counter (TSC / CNTVCT) with executed instructions; the guest calibrates it with a loop
//! of 1,000,000 instructions. One emulator run measures one row, so the exits behind a row are
//! the difference between Bulwark's end-of-run `counters` line for that run and for a run of the
//! row `none` (the guests print the same number of characters in every run). Each run is done
//! twice and the raw numbers are compared.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{self, Arch, Emulator, Outcome, Scenario, Serial};

const SAMPLES: usize = 5;
const CALIB_INSNS: f64 = 1_000_000.0;
/// Memory for the bench runs: the 262,144-page row needs 1 GiB of guest RAM above the rest.
const BIG_MEM_MIB: u32 = 1536;
/// Every other run (and the footprint figures): a 512 MiB machine.
const MEM_MIB: u32 = 512;
/// Bulwark's command lines: every violation logged, or the default rate limit (10 per address).
const LOG_ALL: &str = "ratelimit=4294967295";
const LOG_LIMITED: &str = "ratelimit=10";
/// SPP is off by default (a Bochs defect, docs/x86_64-spp.md): the tigerlake chunk rows ask for it.
const SPP_ON: &str = "spp=on";
const BOCHS_TIMEOUT: Duration = Duration::from_secs(180);
const QEMU_TIMEOUT: Duration = Duration::from_secs(120);

/// Where one row runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Host {
    /// Bochs CPU model (x86_64) under Bulwark.
    Bochs(&'static str),
    /// Bochs without Bulwark (GRUB's `multiboot` boots the guest directly).
    BochsBare,
    /// QEMU virt at EL2 under Bulwark (arm64).
    Qemu,
    /// QEMU virt, guest entered at EL1, no Bulwark.
    QemuBare,
    /// QEMU virt at EL2 with `iommu=smmuv3`: Bulwark owns the SMMU, so every lock also
    /// re-derives the SMMU's device table and invalidates its TLB (docs/aarch64.md, "SMMUv3").
    QemuSmmu,
}

impl Host {
    fn name(self) -> String {
        match self {
            Host::Bochs(m) => format!("bochs {m}"),
            Host::BochsBare => "bochs tigerlake, bare".into(),
            Host::Qemu => "qemu virt el2 icount".into(),
            Host::QemuBare => "qemu virt el1 icount, bare".into(),
            Host::QemuSmmu => "qemu virt el2 icount, iommu=smmuv3".into(),
        }
    }
    fn bare(self) -> bool {
        matches!(self, Host::BochsBare | Host::QemuBare)
    }
}

/// One emulator run: a guest row under a Bulwark command line on a host with some memory.
#[derive(Clone, Debug)]
struct RunSpec {
    host: Host,
    row: &'static str,
    bulwark_cmdline: &'static str,
    mem_mib: u32,
}

/// What a run produced.
#[derive(Clone, Debug, Default, PartialEq)]
struct RunResult {
    /// Guest's `bench:` line, parsed.
    calib: u64,
    n: u64,
    samples: Vec<u64>,
    ops: u64,
    setup: u64,
    /// Bulwark's counters (None when bare).
    exits: Option<u64>,
    counters: Vec<(String, u64)>,
    /// Page-table pages at the start (Bulwark's log) and at the end (counters).
    pt_before: Option<u64>,
    pt_after: Option<u64>,
    /// Bulwark's reserved region in bytes.
    reserved: Option<u64>,
    /// Why no figure: the run failed.
    failure: Option<String>,
}

impl RunResult {
    /// Instructions per operation (or page), one per sample.
    fn per_op(&self) -> Vec<f64> {
        let scale = CALIB_INSNS / self.calib.max(1) as f64;
        let n = self.n.max(1) as f64;
        self.samples.iter().map(|&t| t as f64 * scale / n).collect()
    }
}

/// One table row.
#[derive(Clone, Debug)]
struct Row {
    scenario: String,
    figure: String,
    median: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    unit: String,
    target: String,
    exits: String,
    /// Every counter of the row's run minus the baseline run's (exits by reason where Bulwark
    /// reports them), for the JSON.
    counters: Vec<(String, i64)>,
    note: String,
}

/// Counter differences between a row's run and its baseline run.
fn counter_delta(r: &RunResult, base: Option<&RunResult>) -> Vec<(String, i64)> {
    let Some(b) = base else {
        return Vec::new();
    };
    r.counters
        .iter()
        .map(|(k, v)| {
            let z = b
                .counters
                .iter()
                .find(|(n, _)| n == k)
                .map_or(0, |(_, v)| *v);
            (k.clone(), *v as i64 - z as i64)
        })
        .collect()
}

fn x86_runs() -> Vec<(RunSpec, &'static str)> {
    let tl = Host::Bochs("tigerlake");
    let sk = Host::Bochs("corei7_skylake_x");
    let r = |host, row, cmd, mem| RunSpec {
        host,
        row,
        bulwark_cmdline: cmd,
        mem_mib: mem,
    };
    vec![
        (r(tl, "none", "", MEM_MIB), "none"),
        (r(tl, "hypercall", "", MEM_MIB), "hypercall"),
        (r(tl, "cpuid", "", MEM_MIB), "cpuid"),
        (r(tl, "line-mac", "", MEM_MIB), "line-mac"),
        (r(tl, "write-skip", LOG_ALL, MEM_MIB), "write-log"),
        (r(tl, "write-skip", LOG_LIMITED, MEM_MIB), "write-limited"),
        (r(tl, "mprotect-1", "", MEM_MIB), "mprotect-1"),
        (r(tl, "mprotect-512", "", MEM_MIB), "mprotect-512"),
        (r(tl, "mprotect-262144", "", BIG_MEM_MIB), "mprotect-262144"),
        (r(tl, "chunk-clean", SPP_ON, MEM_MIB), "chunk-clean"),
        (r(tl, "chunk-mixed", SPP_ON, MEM_MIB), "chunk-mixed"),
        (r(sk, "none", "", MEM_MIB), "none"),
        (r(sk, "write-skip", LOG_ALL, MEM_MIB), "write-log"),
        (r(sk, "write-skip", LOG_LIMITED, MEM_MIB), "write-limited"),
        (r(sk, "chunk-clean", "", MEM_MIB), "chunk-clean"),
        (r(sk, "chunk-mixed", "", MEM_MIB), "chunk-mixed"),
        (r(tl, "workload", "", MEM_MIB), "workload"),
        (r(Host::BochsBare, "workload", "", MEM_MIB), "workload-bare"),
        (r(tl, "footprint", "", MEM_MIB), "fp-after"),
    ]
}

fn arm_runs() -> Vec<(RunSpec, &'static str)> {
    let q = Host::Qemu;
    let r = |host, row, cmd, mem| RunSpec {
        host,
        row,
        bulwark_cmdline: cmd,
        mem_mib: mem,
    };
    vec![
        (r(q, "none", "", MEM_MIB), "none"),
        (r(q, "hypercall", "", MEM_MIB), "hypercall"),
        (r(q, "uid", "", MEM_MIB), "uid"),
        (r(q, "line-mac", "", MEM_MIB), "line-mac"),
        (r(q, "write-skip", LOG_ALL, MEM_MIB), "write-log"),
        (r(q, "write-skip", LOG_LIMITED, MEM_MIB), "write-limited"),
        (r(q, "mprotect-1", "", MEM_MIB), "mprotect-1"),
        (r(q, "mprotect-512", "", MEM_MIB), "mprotect-512"),
        (r(q, "mprotect-262144", "", BIG_MEM_MIB), "mprotect-262144"),
        (r(q, "mprotect-4k", "", MEM_MIB), "mprotect-4k"),
        (r(q, "chunk-clean", "", MEM_MIB), "chunk-clean"),
        (r(q, "chunk-mixed", "", MEM_MIB), "chunk-mixed"),
        (r(q, "workload", "", MEM_MIB), "workload"),
        (r(Host::QemuBare, "workload", "", MEM_MIB), "workload-bare"),
        (r(q, "footprint", "", MEM_MIB), "fp-after"),
        // The cost of a lock with the SMMU in the path.
        (r(Host::QemuSmmu, "none", "", MEM_MIB), "none"),
        (r(Host::QemuSmmu, "mprotect-1", "", MEM_MIB), "mprotect-1"),
        (
            r(Host::QemuSmmu, "mprotect-262144", "", BIG_MEM_MIB),
            "mprotect-262144",
        ),
    ]
}

fn bench_dir() -> Result<PathBuf, String> {
    util::out_dir("bench")
}

/// The guest's command line, padded to a fixed length so that every run prints the same number
/// of characters (x86: each character the guest prints is one exit).
fn guest_cmdline(row: &str) -> String {
    let mut s = format!("scenario=bench:{row} pad=");
    while s.len() < 56 {
        s.push('x');
    }
    s
}

// ---- x86_64: Bochs ----------------------------------------------------------------------------

struct X86Build {
    bulwark: PathBuf,
    guest: PathBuf,
}

fn x86_build() -> Result<X86Build, String> {
    let bulwark = crate::x86_64::build(true)?;
    let dir = bench_dir()?;
    // Private copies: other xtask processes may rebuild the shared outputs meanwhile.
    let b = dir.join("x86_64-bulwark.elf");
    let g = dir.join("x86_64-guest.elf32");
    copy(&bulwark, &b)?;
    copy(&crate::x86_64::test_guest_path()?, &g)?;
    Ok(X86Build {
        bulwark: b,
        guest: g,
    })
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

fn x86_iso(b: &X86Build, spec: &RunSpec, tag: &str) -> Result<PathBuf, String> {
    util::need_tool("grub-mkrescue", "grub-common grub-pc-bin")?;
    let dir = bench_dir()?;
    let stage = dir.join(format!("iso-{tag}"));
    let _ = std::fs::remove_dir_all(&stage);
    let boot = stage.join("boot");
    std::fs::create_dir_all(boot.join("grub")).map_err(|e| format!("{}: {e}", stage.display()))?;
    copy(&b.guest, &boot.join("guest"))?;
    let gc = guest_cmdline(spec.row);
    let entry = if spec.host.bare() {
        format!("    multiboot /boot/guest {gc}\n")
    } else {
        copy(&b.bulwark, &boot.join("bulwark"))?;
        format!(
            "    multiboot2 /boot/bulwark {}\n    module2 /boot/guest {gc}\n",
            spec.bulwark_cmdline
        )
    };
    std::fs::write(
        boot.join("grub/grub.cfg"),
        format!("set timeout=0\nset default=0\nmenuentry \"bench\" {{\n{entry}    boot\n}}\n"),
    )
    .map_err(|e| format!("writing grub.cfg: {e}"))?;
    let iso = dir.join(format!("{tag}.iso"));
    util::run_checked(
        Command::new("grub-mkrescue")
            .arg("-o")
            .arg(&iso)
            .arg(&stage),
        "grub-mkrescue",
    )?;
    Ok(iso)
}

fn x86_run(iso: &Path, model: &str, mem: u32, tag: &str) -> Result<Outcome, String> {
    let dir = bench_dir()?;
    let serial = dir.join(format!("serial-{tag}.log"));
    let blog = dir.join(format!("bochs-{tag}.log"));
    let rc = dir.join(format!("bochsrc-{tag}"));
    std::fs::write(
        &rc,
        format!(
            "memory: guest={mem}, host={mem}\n\
             cpu: model={model}, count=1, ips=4000000, reset_on_triple_fault=0\n\
             romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
             vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest\n\
             display_library: rfb, options=\"timeout=0\"\n\
             sound: driver=dummy\n\
             clock: sync=none, time0=1\n\
             boot: cdrom\n\
             ata0-master: type=cdrom, path={}, status=inserted\n\
             com1: enabled=1, mode=file, dev={}\n\
             log: {}\n\
             panic: action=fatal\nerror: action=report\ninfo: action=ignore\ndebug: action=ignore\n",
            iso.display(),
            serial.display(),
            blog.display()
        ),
    )
    .map_err(|e| format!("writing {}: {e}", rc.display()))?;
    let cont = dir.join("bochs-continue.rc");
    std::fs::write(&cont, "c\n").map_err(|e| e.to_string())?;
    let mut cmd = Command::new("bochs");
    cmd.current_dir(&dir)
        .arg("-q")
        .arg("-f")
        .arg(&rc)
        .arg("-rc")
        .arg(&cont);
    util::run_emulator(Emulator {
        cmd,
        serial: Serial::File(serial),
        timeout: BOCHS_TIMEOUT,
        echo: false,
        log: dir.join(format!("bochs-stdout-{tag}.log")),
    })
}

// ---- arm64: QEMU ------------------------------------------------------------------------------

struct ArmBuild {
    bulwark: PathBuf,
    guest: PathBuf,
}

fn arm_build() -> Result<ArmBuild, String> {
    let img = crate::aarch64::build(true)?;
    let dir = bench_dir()?;
    let b = dir.join("aarch64-bulwark.img");
    let g = dir.join("aarch64-guest.img");
    copy(&img, &b)?;
    copy(&crate::aarch64::test_guest_path()?, &g)?;
    Ok(ArmBuild {
        bulwark: b,
        guest: g,
    })
}

fn arm_run(b: &ArmBuild, spec: &RunSpec, tag: &str) -> Result<Outcome, String> {
    util::need_tool("qemu-system-aarch64", "qemu-system-arm")?;
    let mut cmd = Command::new("qemu-system-aarch64");
    let gc = guest_cmdline(spec.row);
    if spec.host.bare() {
        cmd.args(["-M", "virt,gic-version=3"])
            .arg("-kernel")
            .arg(&b.guest)
            .args(["-append", &gc]);
    } else {
        let machine = if spec.host == Host::QemuSmmu {
            "virt,virtualization=on,gic-version=3,iommu=smmuv3"
        } else {
            "virt,virtualization=on,gic-version=3"
        };
        cmd.args(["-M", machine])
            .arg("-kernel")
            .arg(&b.bulwark)
            .arg("-initrd")
            .arg(&b.guest)
            .args([
                "-append",
                format!("{} -- {gc}", spec.bulwark_cmdline).trim(),
            ]);
    }
    cmd.args(["-cpu", "max", "-m", &format!("{}M", spec.mem_mib)])
        // No emulator backdoor (semihosting) and no default NIC: see xtask/src/aarch64.rs.
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .args(["-icount", "shift=0,sleep=off"]);
    util::run_emulator(Emulator {
        cmd,
        serial: Serial::Stdout,
        timeout: QEMU_TIMEOUT,
        echo: false,
        log: bench_dir()?.join(format!("qemu-{tag}.log")),
    })
}

// ---- parsing ----------------------------------------------------------------------------------

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_ascii_whitespace()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
}

fn num(s: &str) -> Option<u64> {
    let s = s.trim_end_matches([',', ')', ';']);
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parse a run's console into a [`RunResult`].
fn parse(out: &Outcome, spec: &RunSpec) -> RunResult {
    let mut r = RunResult::default();
    for l in &out.lines {
        if let Some(i) = l.find("bench: row=") {
            let l = &l[i..];
            r.calib = field(l, "calib").and_then(num).unwrap_or(0);
            r.n = field(l, "n").and_then(num).unwrap_or(0);
            r.ops = field(l, "ops").and_then(num).unwrap_or(0);
            r.setup = field(l, "setup").and_then(num).unwrap_or(0);
            r.samples = field(l, "s")
                .map(|s| s.split(',').filter_map(num).collect())
                .unwrap_or_default();
        }
        if let Some(i) = l.find("counters ") {
            let l = &l[i + 9..];
            for kv in l.split_ascii_whitespace() {
                if let Some((k, v)) = kv.split_once('=') {
                    if let Some(v) = num(v) {
                        r.counters.push((k.to_string(), v));
                    }
                }
            }
        }
        // x86: "EPT: N table page(s) for guest memory"; arm64: "stage 2: ..., N table pages".
        if let Some(i) = l.find("EPT: ") {
            r.pt_before = l[i + 5..].split_ascii_whitespace().next().and_then(num);
        }
        if l.contains("stage 2: ") && l.contains(" table pages") {
            let before = l.split(" table pages").next().unwrap_or("");
            r.pt_before = before.rsplit(' ').next().and_then(num);
        }
        // x86: "bulwark: region [0x4000000, 0x6000000)"; arm64: "memory plan: Bulwark A..B".
        if let Some(i) = l.find("bulwark: region [") {
            let rest = &l[i + 17..];
            let mut it = rest.split([',', ')', ' ']).filter(|s| !s.is_empty());
            if let (Some(a), Some(b)) = (it.next().and_then(num), it.next().and_then(num)) {
                r.reserved = Some(b.saturating_sub(a));
            }
        }
        if let Some(i) = l.find("memory plan: Bulwark ") {
            let rest = l[i + 21..].split_ascii_whitespace().next().unwrap_or("");
            if let Some((a, b)) = rest.split_once("..") {
                if let (Some(a), Some(b)) = (num(a), num(b)) {
                    r.reserved = Some(b.saturating_sub(a));
                }
            }
        }
    }
    let get = |k: &str| r.counters.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    r.pt_after = get("table_pages");
    r.exits = match get("exits") {
        Some(e) => Some(e),
        // arm64 has no exit counter: the exits the core handles (every HVC traps, every
        // protection fault is one stage-2 abort).
        None if !r.counters.is_empty() => Some(
            get("hypercalls").unwrap_or(0)
                + get("violations").unwrap_or(0)
                + get("emulated_stores").unwrap_or(0)
                + get("spurious_faults").unwrap_or(0),
        ),
        None => None,
    };
    let wanted_status = if spec.host.bare() { None } else { Some(0) };
    let bad_status = wanted_status.is_some() && out.status != wanted_status;
    if r.samples.len() != SAMPLES || r.calib == 0 || bad_status {
        r.failure = Some(failure_reason(out));
    } else if !spec.host.bare() && r.counters.is_empty() {
        r.failure = Some("Bulwark printed no counters line".into());
    }
    r
}

/// The reason a run gave no figure, from the console (Bulwark's error, or the guest's).
fn failure_reason(out: &Outcome) -> String {
    let err = out
        .lines
        .iter()
        .find(|l| l.contains("bulwark: ERROR") || l.contains("bench: ") && !l.contains("row="))
        .map(|l| {
            let l = l.trim();
            l.strip_prefix(bulwark_abi::console::GUEST_PREFIX)
                .unwrap_or(l)
                .to_string()
        });
    match err {
        Some(e) => e,
        None if out.timed_out => format!("timed out after {:.0} s", out.seconds),
        None => format!("no result (status {:?} reason {})", out.status, out.reason),
    }
}

// ---- one architecture -------------------------------------------------------------------------

struct ArchResults {
    arch: Arch,
    rows: Vec<Row>,
    /// Keys of the runs whose raw numbers differed between the two passes.
    varying: Vec<String>,
    /// Runs whose raw counter readings differed between the two passes.
    raw_varying: Vec<String>,
    image_bytes: u64,
    seconds: f64,
}

fn run_pass(
    arch: Arch,
    specs: &[(RunSpec, &'static str)],
    pass: u32,
    arm: Option<&ArmBuild>,
    isos: &[Option<PathBuf>],
) -> Result<Vec<RunResult>, String> {
    let mut res = Vec::new();
    for (i, (spec, key)) in specs.iter().enumerate() {
        let tag = format!("{}-{i}-pass{pass}", arch_name(arch));
        let t = Instant::now();
        let out = match (spec.host, arm, isos.get(i).and_then(|o| o.as_ref())) {
            (Host::Bochs(model), _, Some(iso)) => x86_run(iso, model, spec.mem_mib, &tag)?,
            (Host::BochsBare, _, Some(iso)) => x86_run(iso, "tigerlake", spec.mem_mib, &tag)?,
            (Host::Qemu | Host::QemuBare, Some(b), _) => arm_run(b, spec, &tag)?,
            _ => return Err("internal: no build for this host".into()),
        };
        let console = bench_dir()?.join(format!("console-{tag}.log"));
        std::fs::write(&console, out.lines.join("\n"))
            .map_err(|e| format!("{}: {e}", console.display()))?;
        let r = parse(&out, spec);
        util::progress(&format!(
            "bench {} pass {pass}: {key} ({}, {} MiB): {:.1} s{}",
            arch_name(arch),
            spec.host.name(),
            spec.mem_mib,
            t.elapsed().as_secs_f64(),
            r.failure
                .as_ref()
                .map_or(String::new(), |f| format!(", no figure: {f}"))
        ));
        res.push(r);
    }
    Ok(res)
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn fmt_n(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn bench_arch(arch: Arch) -> Result<ArchResults, String> {
    let start = Instant::now();
    let (specs, x86, arm) = match arch {
        Arch::X86_64 => (x86_runs(), Some(x86_build()?), None),
        Arch::Aarch64 => (arm_runs(), None, Some(arm_build()?)),
    };
    // The two passes run side by side (one emulator each): counts do not depend on wall time.
    let mut isos = Vec::new();
    for (i, (spec, _)) in specs.iter().enumerate() {
        isos.push(match &x86 {
            Some(b) => Some(x86_iso(b, spec, &format!("x86_64-{i}"))?),
            None => None,
        });
    }
    let (a, b) = std::thread::scope(|sc| {
        let h = sc.spawn(|| run_pass(arch, &specs, 2, arm.as_ref(), &isos));
        let a = run_pass(arch, &specs, 1, arm.as_ref(), &isos);
        let b = h
            .join()
            .unwrap_or_else(|_| Err("pass 2 panicked".to_string()));
        (a, b)
    });
    let (a, b) = (a?, b?);
    for iso in isos.iter().flatten() {
        let _ = std::fs::remove_file(iso);
    }
    // Footprint: the loadable image (x86: PT_LOAD bytes from the file; the zero-filled rest of
    // the segments is Bulwark's reserved memory, reported in its own row).
    let (image_bytes, image_note) = match arch {
        Arch::X86_64 => {
            let (file, mem) = elf_load_size(&x86.as_ref().ok_or("no x86 build")?.bulwark)?;
            (
                file,
                format!("{file} bytes: PT_LOAD p_filesz of the release ELF (p_memsz {mem}, with the zero-filled reserved memory)"),
            )
        }
        Arch::Aarch64 => {
            let len = std::fs::metadata(&arm.as_ref().ok_or("no arm build")?.bulwark)
                .map_err(|e| e.to_string())?
                .len();
            (
                len,
                format!("{len} bytes: the release Image file (objcopy -O binary)"),
            )
        }
    };
    let rows_a = make_rows(arch, &specs, &a, image_bytes, &image_note);
    let rows_b = make_rows(arch, &specs, &b, image_bytes, &image_note);
    // Compared: the reported figures and exits (what the table says), and the raw counter ticks.
    let mut varying = Vec::new();
    for (x, y) in rows_a.iter().zip(&rows_b) {
        if x.figure != y.figure || x.exits != y.exits {
            varying.push(format!(
                "{}: {} / {} vs {} / {}",
                x.scenario, x.figure, x.exits, y.figure, y.exits
            ));
        }
    }
    let mut raw_varying = Vec::new();
    for (i, (spec, key)) in specs.iter().enumerate() {
        if a[i] != b[i] {
            raw_varying.push(format!("{key} ({})", spec.host.name()));
        }
    }
    Ok(ArchResults {
        arch,
        rows: rows_a,
        varying,
        raw_varying,
        image_bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn make_rows(
    arch: Arch,
    specs: &[(RunSpec, &'static str)],
    a: &[RunResult],
    image_bytes: u64,
    image_note: &str,
) -> Vec<Row> {
    let by = |key: &str, host: Host| -> Option<&RunResult> {
        specs
            .iter()
            .position(|(s, k)| *k == key && s.host == host)
            .map(|i| &a[i])
    };
    let main_host = match arch {
        Arch::X86_64 => Host::Bochs("tigerlake"),
        Arch::Aarch64 => Host::Qemu,
    };
    let mut rows = Vec::new();
    // Exits per operation: (row exits - baseline exits - setup) / ops.
    let exits_of = |r: &RunResult, base: Option<&RunResult>| -> String {
        match (r.exits, base.and_then(|b| b.exits)) {
            (Some(e), Some(z)) => {
                let d = e as f64 - z as f64 - r.setup as f64;
                if r.ops == 0 {
                    format!("{d:.0} in all")
                } else {
                    let per = d / r.ops as f64;
                    if (per - per.round()).abs() < 1e-9 {
                        format!("{per:.0}/op ({d:.0} in {} ops)", r.ops)
                    } else {
                        format!("{per:.3}/op ({d:.0} in {} ops)", r.ops)
                    }
                }
            }
            _ => "n/a".into(),
        }
    };
    let mut add =
        |scenario: String, key: &str, host: Host, unit: &str, target: &str, note: &str| {
            let base = by("none", host);
            let Some(r) = by(key, host) else {
                return;
            };
            let row = if let Some(f) = &r.failure {
                Row {
                    scenario,
                    figure: "n/a".into(),
                    median: None,
                    min: None,
                    max: None,
                    unit: unit.into(),
                    target: target.into(),
                    exits: "n/a".into(),
                    counters: Vec::new(),
                    note: format!("n/a: {f}"),
                }
            } else {
                let (m, lo, hi) = stats(&r.per_op());
                Row {
                    scenario,
                    figure: if (hi - lo).abs() < 0.05 {
                        fmt_n(m)
                    } else {
                        format!("{} ({}..{})", fmt_n(m), fmt_n(lo), fmt_n(hi))
                    },
                    median: Some(m),
                    min: Some(lo),
                    max: Some(hi),
                    unit: unit.into(),
                    target: target.into(),
                    exits: exits_of(r, base),
                    counters: counter_delta(r, base),
                    note: note.into(),
                }
            };
            rows.push(row);
        };
    let hn = main_host.name();
    add(
        format!("ROE_VERSION round trip, 1,000 calls ({hn})"),
        "hypercall",
        main_host,
        "instructions/call",
        "<= 150",
        "",
    );
    if arch == Arch::Aarch64 {
        add(
            format!("vendor-hyp UID round trip, 1,000 calls ({hn})"),
            "uid",
            main_host,
            "instructions/call",
            "<= 150",
            "",
        );
    } else {
        add(
            format!("CPUID 0x40000000 round trip, 1,000 calls ({hn})"),
            "cpuid",
            main_host,
            "instructions/call",
            "-",
            "",
        );
    }
    add(
        format!("tag of one violation line: SipHash-2-4/128 over seq + 105 bytes ({hn})"),
        "line-mac",
        main_host,
        "instructions/line",
        "-",
        "Bulwark's own tag code (bulwark_abi::logauth::mac) run in the guest; the logged-write rows include it",
    );
    let write_hosts: Vec<Host> = match arch {
        Arch::X86_64 => vec![Host::Bochs("tigerlake"), Host::Bochs("corei7_skylake_x")],
        Arch::Aarch64 => vec![Host::Qemu],
    };
    for h in write_hosts {
        add(
            format!(
                "write blocked (skip), every violation logged ({})",
                h.name()
            ),
            "write-log",
            h,
            "instructions/write",
            "-",
            "ratelimit=4294967295: one console line per write (lines the UART cannot take in time are dropped and counted: docs/console.md)",
        );
        add(
            format!("write blocked (skip), logging rate-limited ({})", h.name()),
            "write-limited",
            h,
            "instructions/write",
            "-",
            "ratelimit=10: the warm-up prints the 10 lines, timed writes are only counted",
        );
    }
    add(
        format!("ROE_MPROTECT 1 page ({hn})"),
        "mprotect-1",
        main_host,
        "instructions/page",
        "-",
        "",
    );
    add(
        format!("ROE_MPROTECT 512 pages ({hn})"),
        "mprotect-512",
        main_host,
        "instructions/page",
        "-",
        "",
    );
    add(
        format!("ROE_MPROTECT 262,144 pages ({hn})"),
        "mprotect-262144",
        main_host,
        "instructions/page",
        "<= 64",
        "one call per run: the spread is across the two runs",
    );
    if arch == Arch::Aarch64 {
        let h = Host::QemuSmmu;
        add(
            format!("ROE_MPROTECT 1 page, SMMU in the path ({})", h.name()),
            "mprotect-1",
            h,
            "instructions/page",
            "-",
            "stage 2 and the SMMU's device table re-derived, CMD_TLBI_NSNH_ALL + CMD_SYNC waited for",
        );
        add(
            format!(
                "ROE_MPROTECT 262,144 pages, SMMU in the path ({})",
                h.name()
            ),
            "mprotect-262144",
            h,
            "instructions/page",
            "-",
            "one call per run: the spread is across the two runs",
        );
    }
    add(
        format!("ROE_MPROTECT 32,768 pages the guest maps with 4 KiB pages ({hn})"),
        "mprotect-4k",
        main_host,
        "instructions/page",
        "<= 64",
        "one guest walk per 4 KiB leaf; one call per run (arm64 guest only so far)",
    );
    let chunk_hosts: Vec<Host> = match arch {
        Arch::X86_64 => vec![Host::Bochs("tigerlake"), Host::Bochs("corei7_skylake_x")],
        Arch::Aarch64 => vec![Host::Qemu],
    };
    for h in chunk_hosts {
        let spp = h == Host::Bochs("tigerlake");
        let hname = if spp {
            format!("{}, spp=on", h.name())
        } else {
            h.name()
        };
        add(
            format!("chunk page: write to a sub-page with no protected byte ({hname})"),
            "chunk-clean",
            h,
            "instructions/write",
            if spp {
                "0 exits (SPP)"
            } else {
                "<= 2000 (software path)"
            },
            if spp {
                "the check after the row makes a VM exit before its store onto the protected bytes: \
                 without one, Bochs lets that store through after SPP-allowed stores (docs/x86_64-spp.md)"
            } else {
                ""
            },
        );
        add(
            format!("chunk page: write to unprotected bytes of a mixed sub-page ({hname})"),
            "chunk-mixed",
            h,
            "instructions/write",
            "<= 2000",
            "software path",
        );
    }
    // Workload: bare vs under Bulwark, one invocation.
    let bare_host = match arch {
        Arch::X86_64 => Host::BochsBare,
        Arch::Aarch64 => Host::QemuBare,
    };
    let under = by("workload", main_host);
    let bare = by("workload-bare", bare_host);
    match (under, bare) {
        (Some(u), Some(b)) if u.failure.is_none() && b.failure.is_none() => {
            let (mu, _, _) = stats(&u.per_op());
            let (mb, _, _) = stats(&b.per_op());
            let ratio = mu / mb;
            rows.push(Row {
                scenario: format!("workload slowdown, under Bulwark / bare ({hn})"),
                figure: format!("{ratio:.4}"),
                median: Some(ratio),
                min: None,
                max: None,
                unit: format!("ratio ({} / {} instructions)", fmt_n(mu), fmt_n(mb)),
                target: "<= 1.01".into(),
                exits: exits_of(u, by("none", main_host)),
                counters: counter_delta(u, by("none", main_host)),
                note: "200,000 LCG-driven read-modify-writes over 1 MiB, 5 runs".into(),
            });
        }
        (u, b) => {
            let why = u
                .and_then(|r| r.failure.clone())
                .or_else(|| b.and_then(|r| r.failure.clone()))
                .unwrap_or_else(|| "missing run".into());
            rows.push(Row {
                scenario: format!("workload slowdown, under Bulwark / bare ({hn})"),
                figure: "n/a".into(),
                median: None,
                min: None,
                max: None,
                unit: "ratio".into(),
                target: "<= 1.01".into(),
                exits: "n/a".into(),
                counters: Vec::new(),
                note: format!("n/a: {why}"),
            });
        }
    }
    let fixed = |scenario: String, figure: String, unit: &str, target: &str, note: String| Row {
        scenario,
        median: figure.parse().ok(),
        figure,
        min: None,
        max: None,
        unit: unit.into(),
        target: target.into(),
        exits: "-".into(),
        counters: Vec::new(),
        note,
    };
    rows.push(fixed(
        "footprint: Bulwark image size".into(),
        format!("{:.1}", image_bytes as f64 / 1024.0),
        "KiB",
        "<= 256",
        image_note.to_string(),
    ));
    let fp_none = by("none", main_host);
    let fp_after = by("fp-after", main_host);
    let big = by("mprotect-262144", main_host);
    let reserved = fp_none.and_then(|r| r.reserved);
    rows.push(fixed(
        "footprint: memory Bulwark reserves for itself".into(),
        reserved.map_or("n/a".into(), |b| format!("{}", b >> 10)),
        "KiB",
        "-",
        "from Bulwark's memory plan line".into(),
    ));
    let pt = |r: Option<&RunResult>, after: bool| -> Option<u64> {
        r.and_then(|r| if after { r.pt_after } else { r.pt_before })
    };
    rows.push(fixed(
        format!("footprint: guest page tables, {MEM_MIB} MiB machine, unprotected"),
        pt(fp_none, false).map_or("n/a".into(), |p| format!("{}", p * 4)),
        "KiB",
        "<= 16",
        pt(fp_none, false).map_or("no page-table line in the log".into(), |p| {
            format!("{p} table pages at guest start")
        }),
    ));
    rows.push(fixed(
        format!(
            "footprint: guest page tables, {MEM_MIB} MiB machine, after the bench's protections"
        ),
        pt(fp_after, true).map_or("n/a".into(), |p| format!("{}", p * 4)),
        "KiB",
        "-",
        match (fp_after.and_then(|r| r.failure.clone()), pt(fp_after, true)) {
            (Some(f), _) => format!("n/a: {f}"),
            (None, Some(p)) => format!(
                "{p} table pages at the end (1 + 6x512 pages, an 8-byte chunk, a written page)"
            ),
            (None, None) => "no counters line".into(),
        },
    ));
    rows.push(fixed(
        format!("footprint: guest page tables, {BIG_MEM_MIB} MiB machine, after locking 1 GiB"),
        match big {
            Some(r) if r.failure.is_none() => {
                r.pt_after.map_or("n/a".into(), |p| format!("{}", p * 4))
            }
            _ => "n/a".into(),
        },
        "KiB",
        "-",
        match (big.and_then(|r| r.failure.clone()), pt(big, true)) {
            (Some(f), _) => format!("n/a: {f}"),
            (None, Some(p)) => format!(
                "{p} table pages (start: {})",
                pt(big, false).map_or("?".into(), |v| v.to_string())
            ),
            (None, None) => "no counters line".into(),
        },
    ));
    rows
}

/// Sums of the PT_LOAD segments' file sizes and memory sizes of an ELF64 file.
fn elf_load_size(path: &Path) -> Result<(u64, u64), String> {
    let d = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let rd = |o: usize, n: usize| -> Result<u64, String> {
        let b = d.get(o..o + n).ok_or("truncated ELF")?;
        let mut v = 0u64;
        for (i, x) in b.iter().enumerate() {
            v |= u64::from(*x) << (8 * i);
        }
        Ok(v)
    };
    if d.get(0..5) != Some(b"\x7fELF\x02") {
        return Err(format!("{}: not an ELF64 file", path.display()));
    }
    let phoff = rd(0x20, 8)? as usize;
    let phentsize = rd(0x36, 2)? as usize;
    let phnum = rd(0x38, 2)? as usize;
    let (mut file, mut mem) = (0, 0);
    for i in 0..phnum {
        let p = phoff + i * phentsize;
        if rd(p, 4)? == 1 {
            file += rd(p + 0x20, 8)?;
            mem += rd(p + 0x28, 8)?;
        }
    }
    Ok((file, mem))
}

// ---- output -----------------------------------------------------------------------------------

fn markdown(results: &[ArchResults], command: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Produced by `{command}`.\n");
    let _ = writeln!(
        s,
        "| arch | scenario | figure (median (min..max)) | unit | target | exits | note |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for r in results {
        for row in &r.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                arch_name(r.arch),
                row.scenario,
                row.figure,
                row.unit,
                row.target,
                row.exits,
                row.note.replace('|', "/")
            );
        }
    }
    s.push('\n');
    for r in results {
        if r.varying.is_empty() {
            let _ = writeln!(
                s,
                "- {}: the two runs of every row gave the same figures and exit counts ({:.0} s for both).",
                arch_name(r.arch),
                r.seconds
            );
        } else {
            let _ = writeln!(
                s,
                "- {}: rows whose figures differed between the two runs: {} ({:.0} s).",
                arch_name(r.arch),
                r.varying.join("; "),
                r.seconds
            );
        }
        if !r.raw_varying.is_empty() {
            let _ = writeln!(
                s,
                "- {}: raw counter readings differed (below the precision shown) in: {}.",
                arch_name(r.arch),
                r.raw_varying.join(", ")
            );
        }
    }
    s
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".into(),
    }
}

fn json(results: &[ArchResults], command: &str) -> String {
    let mut s = format!(
        "{{\n  \"command\": {},\n  \"archs\": [\n",
        json_str(command)
    );
    for (i, r) in results.iter().enumerate() {
        let _ = write!(
            s,
            "    {{\n      \"arch\": {},\n      \"image_bytes\": {},\n      \"repeatable\": {},\n      \"varying\": [{}],\n      \"raw_varying\": [{}],\n      \"rows\": [\n",
            json_str(arch_name(r.arch)),
            r.image_bytes,
            r.varying.is_empty(),
            r.varying.iter().map(|v| json_str(v)).collect::<Vec<_>>().join(", "),
            r.raw_varying.iter().map(|v| json_str(v)).collect::<Vec<_>>().join(", ")
        );
        for (j, row) in r.rows.iter().enumerate() {
            let _ = writeln!(
                s,
                "        {{\"scenario\": {}, \"figure\": {}, \"median\": {}, \"min\": {}, \"max\": {}, \"unit\": {}, \"target\": {}, \"exits\": {}, \"counters_minus_baseline\": {{{}}}, \"note\": {}}}{}",
                json_str(&row.scenario),
                json_str(&row.figure),
                json_num(row.median),
                json_num(row.min),
                json_num(row.max),
                json_str(&row.unit),
                json_str(&row.target),
                json_str(&row.exits),
                row.counters
                    .iter()
                    .map(|(k, v)| format!("{}: {v}", json_str(k)))
                    .collect::<Vec<_>>()
                    .join(", "),
                json_str(&row.note),
                if j + 1 < r.rows.len() { "," } else { "" }
            );
        }
        let _ = writeln!(
            s,
            "      ]\n    }}{}",
            if i + 1 < results.len() { "," } else { "" }
        );
    }
    s.push_str("  ]\n}\n");
    s
}

pub fn main(args: &[String]) -> Result<u8, String> {
    let mut archs = vec![Arch::X86_64, Arch::Aarch64];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--arch" => {
                let v = it.next().ok_or("--arch needs a value")?;
                archs = vec![Arch::parse(v)?];
            }
            other => return Err(format!("unknown bench option '{other}' (bench [--arch A])")),
        }
    }
    let command = if archs.len() == 1 {
        format!("cargo xtask bench --arch {}", arch_name(archs[0]))
    } else {
        "cargo xtask bench".to_string()
    };
    let mut results = Vec::new();
    let mut fuzz = Vec::new();
    for a in archs {
        results.push(bench_arch(a)?);
        fuzz.push(crate::matrix_tests::bench_hcfuzz(a)?);
    }
    let mut md = markdown(&results, &command);
    md.push_str(&crate::matrix_tests::bench_hcfuzz_section(&fuzz));
    println!("\n{md}");
    let dir = util::root().join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let stem = if results.len() == 1 {
        format!("latest-{}", arch_name(results[0].arch))
    } else {
        "latest".to_string()
    };
    for (ext, text) in [("md", md), ("json", json(&results, &command))] {
        let p = dir.join(format!("{stem}.{ext}"));
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        util::progress(&format!("wrote {}", p.display()));
    }
    Ok(0)
}

/// A cheap smoke entry for `cargo xtask test`: the arm64 bench guest's hypercall row under
/// Bulwark (QEMU, well under a second) produces a figure and a counters line.
pub fn scenarios() -> Vec<Scenario> {
    vec![Scenario::new(
        "bench smoke: arm64 hypercall row yields a figure and counters",
        "qemu virt el2 icount",
        || {
            let b = arm_build()?;
            let spec = RunSpec {
                host: Host::Qemu,
                row: "hypercall",
                bulwark_cmdline: "",
                mem_mib: MEM_MIB,
            };
            let out = arm_run(&b, &spec, "smoke")?;
            let r = parse(&out, &spec);
            match r.failure {
                Some(f) => Err(f),
                None if r.exits.is_none() => Err("no exits from the counters line".into()),
                None => Ok(()),
            }
        },
    )]
}

fn arch_name(a: Arch) -> &'static str {
    match a {
        Arch::X86_64 => "x86_64",
        Arch::Aarch64 => "aarch64",
    }
}
