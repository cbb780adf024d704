//! The upstream pKVM guest ABI's real client (issue 18 item 3; docs/smccc.md, "The upstream
//! client"): Linux 6.12 from Debian's `linux-source-6.12`, configured from `allnoconfig` plus
//! `xtask/pkvm-linux.config` (`CONFIG_ARM_PKVM_GUEST=y`, PL011, GICv3, PSCI, the arch timer, an
//! initramfs, `/dev/mem` without `STRICT_DEVMEM`), cross-built with `aarch64-linux-gnu-gcc` and
//! booted under Bulwark with `hyp-abi=upstream`. Its own ioremap hook registers every device page
//! it maps (MMIO_GUARD, 0xC6000007); its busybox /init then reads the RTC (registered by the
//! kernel's AMBA probe) and a page of the PCI host bridge's 32-bit window (passed through, never
//! ioremapped: unregistered) through `/dev/mem`. Bulwark refuses the second read with its
//! `kind=mmio-guard` violation line, the reader gets SIGBUS, and the kernel powers off cleanly.
//!
//! The first run downloads the source package (154 MB) and builds the kernel: about 5 minutes
//! on an otherwise idle 2-core machine (measured 293 s in all, 257 s of `make -j2 Image`; 8 min
//! 49 s with other jobs loading it), so it runs in CI like any scenario. The Image is cached under
//! `target/xtask/aarch64/pkvm-linux/`, keyed by a hash of the config fragment and the source
//! package's file name: later runs boot at once (about 6 s).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use bulwark_abi::console::reason;

use crate::aarch64::{self as a};
use crate::util::{self, Outcome, RunOpts, Scenario};

/// The Debian source package (bookworm: the security archive carries 6.12 for bookworm;
/// bookworm-backports is added to the private apt state as well).
const SOURCE_PKG: &str = "linux-source-6.12";
/// The config fragment applied on top of `allnoconfig`, relative to the repository root.
const FRAGMENT: &str = "xtask/pkvm-linux.config";
const CROSS: &str = "aarch64-linux-gnu-";

/// PL031 RTC, PrimeCell component ID register 0 (reads 0x0d). The kernel's AMBA bus ioremaps
/// every primecell's page to read its IDs (drivers/amba/bus.c), so the hook registers it.
const RTC_ID0: u64 = 0x0901_0ff0;
/// First page of QEMU virt's 32-bit PCI MMIO window: passed through by Bulwark when the host
/// bridge sits behind the SMMUv3 Bulwark owns (`iommu=smmuv3`), never ioremapped by this kernel
/// (no PCI support): unregistered.
const PCI_WINDOW: u64 = 0x1000_0000;

const MARK: &str = "PKVM-LINUX:";
/// Bulwark's status when a guest's SYSTEM_RESET ends the run (docs/aarch64.md).
const STATUS_GUEST_RESET: u32 = 0xB2;

fn dir() -> Result<PathBuf, String> {
    util::out_dir("aarch64/pkvm-linux")
}

fn apt_opts(apt: &Path, parts: Option<&Path>) -> Vec<String> {
    let mut o: Vec<String> = vec![
        "-q".into(),
        "-o".into(),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        "-o".into(),
        format!("Dir::Cache={}", apt.join("cache").display()),
        "-o".into(),
        "APT::Architecture=arm64".into(),
        "-o".into(),
        "APT::Architectures::=arm64".into(),
    ];
    if let Some(p) = parts {
        o.push("-o".into());
        o.push(format!("Dir::Etc::SourceParts={}", p.display()));
    }
    o
}

/// A private sources.list.d: copies of the machine's own source files plus bookworm-backports
/// from the archive the machine already uses for `bookworm` (the machine's apt configuration
/// is read, never changed).
fn private_sources(apt: &Path) -> Result<PathBuf, String> {
    let parts = apt.join("sources.list.d");
    let _ = std::fs::remove_dir_all(&parts);
    std::fs::create_dir_all(&parts).map_err(|e| format!("{}: {e}", parts.display()))?;
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "list" || x == "sources") {
                if let Some(n) = p.file_name() {
                    std::fs::copy(&p, parts.join(n))
                        .map_err(|e| format!("{}: {e}", p.display()))?;
                }
            }
        }
    }
    let targets = Command::new("apt-get")
        .args(["indextargets", "--format", "$(SITE) $(RELEASE)"])
        .output()
        .map_err(|e| format!("apt-get indextargets: {e}"))?;
    let text = String::from_utf8_lossy(&targets.stdout);
    let site = text.lines().find_map(|l| {
        let (site, rel) = l.rsplit_once(' ')?;
        (rel == "bookworm").then(|| site.to_string())
    });
    if let Some(site) = site {
        let key = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let opt = if Path::new(key).is_file() {
            format!("[signed-by={key}] ")
        } else {
            String::new()
        };
        let line = format!("deb {opt}{site} bookworm-backports main\n");
        std::fs::write(parts.join("bulwark-backports.list"), line).map_err(|e| e.to_string())?;
    } else {
        util::progress("no bookworm archive in the machine's apt sources: not adding backports");
    }
    Ok(parts)
}

/// The downloaded source package, fetched on first use.
fn source_deb(dir: &Path) -> Result<PathBuf, String> {
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    let find = || -> Option<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&format!("{SOURCE_PKG}_")) && n.ends_with(".deb")
                })
            })
            .collect();
        v.sort();
        v.pop()
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    util::need_tool("apt-get", "apt")?;
    // The Debian-kernel scenario's private apt state (lists and cache under target/).
    let apt = a::debian_dir()?.join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt.join(d)).map_err(|e| format!("{}: {e}", apt.display()))?;
    }
    let parts = private_sources(&apt)?;
    let opts = apt_opts(&apt, Some(&parts));
    util::progress("fetching Debian's package lists with bookworm-backports (private apt state)");
    util::run_checked(
        Command::new("apt-get").args(&opts).arg("update"),
        "apt-get update (private state, with backports)",
    )?;
    util::progress(&format!("downloading {SOURCE_PKG}"));
    util::run_checked(
        Command::new("apt-get")
            .current_dir(&debs)
            .args(&opts)
            .args(["download", SOURCE_PKG]),
        "apt-get download",
    )?;
    find().ok_or_else(|| format!("apt-get download left no {SOURCE_PKG}_*.deb"))
}

/// The kernel source tree of `deb`, extracted once (a stamp names the package it came from).
fn source_tree(dir: &Path, deb: &Path) -> Result<PathBuf, String> {
    let src = dir.join("src");
    let tree = src.join(SOURCE_PKG);
    let stamp = src.join("extracted-from");
    let name = deb
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if tree.is_dir() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == name) {
        return Ok(tree);
    }
    util::need_tool("dpkg-deb", "dpkg")?;
    util::need_tool("xz", "xz-utils")?;
    util::progress(&format!("extracting {name}"));
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(dir.join("build"));
    let x = dir.join("deb-x");
    let _ = std::fs::remove_dir_all(&x);
    util::run_checked(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(&x),
        "dpkg-deb -x",
    )?;
    std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
    let tarball = x.join(format!("usr/src/{SOURCE_PKG}.tar.xz"));
    util::run_checked(
        Command::new("tar")
            .arg("-C")
            .arg(&src)
            .arg("-xf")
            .arg(&tarball),
        "tar -xf (kernel source)",
    )?;
    let _ = std::fs::remove_dir_all(&x);
    if !tree.join("Makefile").is_file() {
        return Err(format!("{} has no kernel tree", tree.display()));
    }
    std::fs::write(&stamp, &name).map_err(|e| e.to_string())?;
    Ok(tree)
}

/// `make` in the kernel tree with the build directory `out`; output to `log`.
fn kmake(tree: &Path, out: &Path, log: &Path, extra: &[&str]) -> Result<(), String> {
    let f = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let f2 = f.try_clone().map_err(|e| e.to_string())?;
    let st = Command::new("make")
        .current_dir(tree)
        .arg("ARCH=arm64")
        .arg(format!("CROSS_COMPILE={CROSS}"))
        .arg(format!("O={}", out.display()))
        .args(extra)
        .stdout(f)
        .stderr(f2)
        .status()
        .map_err(|e| format!("make: {e}"))?;
    if st.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "make {} failed ({st}); log {}:\n{}",
        extra.join(" "),
        log.display(),
        tail.join("\n")
    ))
}

/// Every `CONFIG_X=y` and `# CONFIG_X is not set` of the fragment must hold in `.config`
/// (a symbol whose dependencies are not met is silently dropped by Kconfig).
fn check_config(fragment: &str, config: &str) -> Result<(), String> {
    for l in fragment.lines().map(str::trim) {
        if l.starts_with("CONFIG_") {
            if !config.lines().any(|c| c.trim() == l) {
                return Err(format!("{l} did not survive Kconfig (dependency missing?)"));
            }
        } else if let Some(sym) = l
            .strip_prefix("# ")
            .and_then(|r| r.strip_suffix(" is not set"))
        {
            if config.lines().any(|c| c.starts_with(&format!("{sym}="))) {
                return Err(format!("{sym} is set although the fragment unsets it"));
            }
        }
    }
    Ok(())
}

/// The pKVM-guest kernel Image: cached, else fetched, configured and built.
pub fn kernel_image() -> Result<PathBuf, String> {
    let dir = dir()?;
    let frag_path = util::root().join(FRAGMENT);
    let fragment =
        std::fs::read_to_string(&frag_path).map_err(|e| format!("{}: {e}", frag_path.display()))?;
    let deb = source_deb(&dir)?;
    // DefaultHasher::new() has fixed keys: stable between runs (a new Rust release may change
    // it, which costs one rebuild, never a stale Image).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    fragment.hash(&mut h);
    deb.file_name().hash(&mut h);
    let image = dir.join(format!("Image-{:016x}", h.finish()));
    if image.is_file() {
        return Ok(image);
    }
    util::need_tool("make", "make")?;
    util::need_tool(&format!("{CROSS}gcc"), "gcc-aarch64-linux-gnu")?;
    util::need_tool("flex", "flex")?;
    util::need_tool("bison", "bison")?;
    util::need_tool("bc", "bc")?;
    let tree = source_tree(&dir, &deb)?;
    let out = dir.join("build");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    util::progress("configuring the pKVM-guest kernel (allnoconfig + xtask/pkvm-linux.config)");
    let allconfig = format!("KCONFIG_ALLCONFIG={}", frag_path.display());
    kmake(
        &tree,
        &out,
        &dir.join("config.log"),
        &[&allconfig, "allnoconfig"],
    )?;
    let config = std::fs::read_to_string(out.join(".config")).map_err(|e| e.to_string())?;
    check_config(&fragment, &config)?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let log = dir.join("build.log");
    util::progress(&format!(
        "building the kernel Image (make -j{jobs}; log {}; about 5 minutes on 2 cores)",
        log.display()
    ));
    let t = std::time::Instant::now();
    kmake(&tree, &out, &log, &[&format!("-j{jobs}"), "Image"])?;
    util::progress(&format!(
        "    kernel built in {:.0} s",
        t.elapsed().as_secs_f64()
    ));
    std::fs::copy(out.join("arch/arm64/boot/Image"), &image).map_err(|e| e.to_string())?;
    Ok(image)
}

/// The initramfs's /init: mount /proc and devtmpfs, read the registered RTC, then the
/// unregistered PCI window page, report both exit statuses, print the marker, power off.
fn init_script() -> String {
    format!(
        "#!/bin/busybox sh\n\
         B=/bin/busybox\n\
         $B mount -t proc proc /proc\n\
         $B mount -t devtmpfs dev /dev\n\
         v=$($B devmem {RTC_ID0:#x} 32)\n\
         echo \"{MARK} registered RTC read rc=$? value=$v\"\n\
         $B devmem {PCI_WINDOW:#x} 32\n\
         echo \"{MARK} unregistered PCI window read rc=$?\"\n\
         $B echo {marker}\n\
         $B poweroff -f\n",
        marker = a::INIT_MARKER
    )
}

fn counter(out: &Outcome, key: &str) -> Result<u64, String> {
    let line = out
        .lines
        .iter()
        .find(|l| l.contains("bulwark: INFO counters "))
        .ok_or("no counters line")?;
    line.split_ascii_whitespace()
        .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("counters line lacks {key}: {line}"))
}

fn refute(out: &Outcome, needle: &str, why: &str) -> Result<(), String> {
    a::refute(out, needle, why)
}

/// Boots the pKVM-guest kernel with its /init under Bulwark's command line `cmdline`, on QEMU
/// virt with the SMMUv3 (so the PCI host bridge is passed through).
fn boot(cmdline: &str) -> Result<Outcome, String> {
    let kernel = kernel_image()?;
    let (_, busybox) = a::debian_kernel_and_busybox()?;
    let dir = dir()?;
    let initramfs = dir.join("initramfs.cpio");
    std::fs::write(
        &initramfs,
        a::busybox_initramfs_with(&busybox, &init_script(), &[])?,
    )
    .map_err(|e| e.to_string())?;
    let payload = dir.join("bundle.bin");
    a::bundle(&kernel, &initramfs, &payload)?;
    a::run_with(
        &RunOpts {
            cpu: Some(a::LINUX_CPU.into()),
            cmdline: cmdline.into(),
            guest_cmdline: a::LINUX_CMDLINE.into(),
            timeout: Some(180),
            quiet: true,
            ..RunOpts::default()
        },
        &a::Extra {
            payload: Some(payload),
            iommu: true,
            ..a::Extra::default()
        },
    )
}

fn upstream_client() -> Result<(), String> {
    let out = boot("hyp-abi=upstream")?;
    out.expect(0, reason::GUEST_EXIT)?;
    // The kernel's own discovery (drivers/firmware/smccc/kvm_guest.c) finds the upstream bitmap;
    // arm-pkvm-guest.c then registers its ioremap hook (it prints nothing of its own).
    a::need(&out, "SMCCC: v1.1 to the guest; hyp-abi=upstream")?;
    a::need(&out, "psci: SMC Calling Convention v1.1")?;
    a::need(
        &out,
        "smccc: KVM: hypervisor services detected (0x00000000 0x00000003 0x00000000 0x0000009d)",
    )?;
    // Every registration succeeded (a refused one is a WARN_ON_ONCE in the hook).
    refute(
        &out,
        "WARNING:",
        "the kernel warned (a refused MMIO_GUARD?)",
    )?;
    refute(&out, "Kernel panic", "the kernel panicked")?;
    refute(&out, "Internal error", "the kernel oopsed")?;
    // The registered RTC page reads its PrimeCell ID (a device read through the guard).
    a::need(
        &out,
        &format!("{MARK} registered RTC read rc=0 value=0x0000000D"),
    )?;
    // The unregistered page: refused by Bulwark, SIGBUS (128 + 7) for the reader only.
    a::need(
        &out,
        &format!("bulwark: violation kind=mmio-guard access=read gpa={PCI_WINDOW:#x}"),
    )?;
    a::need(&out, &format!("{MARK} unregistered PCI window read rc=135"))?;
    let violations: Vec<&String> = out
        .lines
        .iter()
        .filter(|l| l.contains("bulwark: violation"))
        .collect();
    if violations.len() != 1 {
        return Err(format!(
            "expected exactly one violation (the PCI window read), got {}:\n{}",
            violations.len(),
            violations
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    // Then it keeps running: the marker, then a clean power-off.
    let marker = out.lines.iter().position(|l| l.contains(a::INIT_MARKER));
    let off = out
        .lines
        .iter()
        .position(|l| l.contains("reboot: Power down"));
    match (marker, off) {
        (Some(m), Some(p)) if m < p => {}
        _ => {
            return Err(format!(
                "expected the /init marker, then a power-off\n--- console tail ---\n{}",
                out.tail(25)
            ))
        }
    }
    let maps = counter(&out, "mmio_maps")?;
    if maps == 0 {
        return Err("mmio_maps=0: the kernel registered no device page".into());
    }
    // Every call the kernel made (MMIO_GUARD for each device page, HYP_MEMINFO, PSCI, ...)
    // succeeded: a refused registration is also counted here.
    let errors = counter(&out, "hypercall_errors")?;
    if errors != 0 {
        return Err(format!(
            "hypercall_errors={errors}: Bulwark refused a call of the kernel"
        ));
    }
    util::progress(&format!(
        "    mmio_maps={maps} (device pages the kernel's ioremap hook registered)"
    ));
    Ok(())
}

/// The same kernel left on the default `hyp-abi=seed` (docs/smccc.md, "Decision"): its first
/// MEM_SHARE is the seed's ENROLL, none of its registrations exist under that ABI, and its first
/// device read (the AMBA probe of the PL061's PrimeCell ID, before its console is up) aborts:
/// fail closed, no device granted, loudly. `maxresets=0` ends the run at the kernel's
/// panic-reset instead of rebooting it into the same failure.
fn on_seed_abi() -> Result<(), String> {
    let out = boot("maxresets=0")?;
    out.expect(STATUS_GUEST_RESET, "guest-reset")?;
    a::need(&out, "SMCCC: v1.1 to the guest; hyp-abi=seed")?;
    a::need(&out, "bulwark: violation kind=mmio-guard access=read")?;
    a::need(
        &out,
        "PSCI SYSTEM_RESET (MMIO guard enrolment on with 0 mapped granule(s))",
    )?;
    refute(&out, a::INIT_MARKER, "the kernel reached userspace")?;
    refute(&out, MARK, "the /init ran")
}

pub fn scenarios() -> Vec<Scenario> {
    let emu = "qemu virt el2 smmuv3";
    vec![
        Scenario::new(
            "aarch64 pkvm-linux: Linux 6.12 with CONFIG_ARM_PKVM_GUEST under hyp-abi=upstream registers its devices; an unregistered read is refused",
            emu,
            upstream_client,
        ),
        Scenario::new(
            "aarch64 pkvm-linux: the same kernel on the default hyp-abi=seed is enrolled by its MEM_SHARE and cut off from its devices",
            emu,
            on_seed_abi,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_lines_are_checked() {
        let frag = "CONFIG_A=y\n# CONFIG_B is not set\n";
        assert!(check_config(frag, "CONFIG_A=y\n# CONFIG_B is not set\n").is_ok());
        assert!(check_config(frag, "# CONFIG_A is not set\n").is_err());
        assert!(check_config(frag, "CONFIG_A=y\nCONFIG_B=y\n").is_err());
    }

    #[test]
    fn fragment_enables_the_pkvm_guest() {
        let f = std::fs::read_to_string(util::root().join(FRAGMENT)).unwrap();
        for l in [
            "CONFIG_ARM_PKVM_GUEST=y",
            "CONFIG_DEVMEM=y",
            "# CONFIG_STRICT_DEVMEM is not set",
        ] {
            assert!(f.lines().any(|x| x == l), "{l}");
        }
    }
}
