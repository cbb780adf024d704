//! Bulwark's own command line (not the guest's): the violation policy, log settings and boot-time
//! per-page R/W/X attributes on guest-physical ranges. Syntax and rules: `docs/cmdline.md`.
//!
//! Every token is `key=value`; an unknown key, a bad value or a rule violation is an error that names the
//! offending token and says why, and Bulwark does not start the guest. Nothing is ever silently ignored:
//! a typo must not quietly drop a protection.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

pub use bulwark_abi::smccc::HypAbi;
use bulwark_core::addr::{GuestPhysAddr, PAGE_SIZE};
use bulwark_core::guest::ConfigError;
use bulwark_core::store::StoreError;

/// What a guest sees when it violates a protection (spec §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ViolationPolicy {
    /// The store has no effect on protected bytes; the guest continues after the instruction.
    #[default]
    Skip,
    /// x86: #GP(0); arm64: synchronous external abort.
    Inject,
    /// Stop the guest; the run ends with a failure status.
    Halt,
}

impl ViolationPolicy {
    pub const fn as_str(self) -> &'static str {
        match self {
            ViolationPolicy::Skip => "skip",
            ViolationPolicy::Inject => "inject",
            ViolationPolicy::Halt => "halt",
        }
    }
}

/// R/W/X permission bits (KVM's attribute layout: R=1, W=2, X=4): the core's type, so a parsed range
/// feeds the attribute store without conversion.
pub use bulwark_core::pt::Perms;

/// Perms from a number, refusing bits other than R, W, X.
fn perms_from_bits(bits: u64) -> Option<Perms> {
    if bits & !7 != 0 {
        None
    } else {
        Some(Perms::from_bits_truncate(bits as u8))
    }
}

/// One boot-time attribute range, validated by KVM_SET_MEMORY_ATTRIBUTES' rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttrRange {
    pub start: GuestPhysAddr,
    /// Bytes; non-zero, page-aligned, `start + size` does not wrap.
    pub size: u64,
    pub perms: Perms,
}

impl AttrRange {
    /// Exclusive end (cannot overflow: checked at parse time).
    pub fn end(&self) -> u64 {
        self.start.as_u64().saturating_add(self.size)
    }
}

/// Log verbosity on the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Everything Bulwark's command line can say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub violation: ViolationPolicy,
    pub log_level: LogLevel,
    /// Violation lines printed per instruction address before further ones are counted, not printed.
    pub ratelimit: u32,
    /// Global bound on violation lines: at most `.0` lines per `.1` violations, whatever their
    /// instruction addresses (`globalratelimit=N/M`).
    pub global_ratelimit: (u32, u32),
    /// Guest reboots (PSCI SYSTEM_RESET) allowed per run before the run ends (arm64).
    pub max_resets: u32,
    /// `spp=on`: back chunk protection with EPT sub-page write permissions (x86 SPP) where the
    /// CPU enumerates them. Off by default: Bochs 2.7's SPP lets a store to a protected byte
    /// through after an SPP-allowed store to the same page (docs/x86_64-spp.md).
    pub spp: bool,
    /// Boot-time attributes, sorted by start, never overlapping.
    pub attrs: Vec<AttrRange>,
    /// Where each range of `attrs` came from (same order), for errors found when a back end
    /// applies it ([`Config::attr_refused`]).
    pub attr_origins: Vec<AttrOrigin>,
    /// `passthrough=`: device-tree node names (`fw-cfg@9020000`) of devices Bulwark hides (DMA
    /// masters, unknown devices) that the user hands to the guest anyway (arm64; docs/aarch64.md,
    /// "Device policy"). Empty by default.
    pub passthrough: Vec<String>,
    /// The `passthrough=` token as typed (for errors found when the device tree is read).
    pub passthrough_token: String,
    /// `hyp-abi=seed|upstream` (arm64): which numbering of the KVM vendor-hyp functions 2..=7
    /// the guest is served (docs/smccc.md). Default: the seed's.
    pub hyp_abi: HypAbi,
}

/// The command-line text an `attr=` range came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrOrigin {
    /// The whole `attr=...` token as typed.
    pub token: String,
    /// The one range of it, as typed (`START+SIZE:PERMS[:FLAGS]`).
    pub spec: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            violation: ViolationPolicy::Skip,
            log_level: LogLevel::Info,
            ratelimit: DEFAULT_RATELIMIT,
            global_ratelimit: DEFAULT_GLOBAL_RATELIMIT,
            max_resets: DEFAULT_MAX_RESETS,
            spp: false,
            attrs: Vec::new(),
            attr_origins: Vec::new(),
            passthrough: Vec::new(),
            passthrough_token: String::new(),
            hyp_abi: HypAbi::Seed,
        }
    }
}

pub const DEFAULT_RATELIMIT: u32 = 10;
/// Default `globalratelimit`: 200 lines per 10,000 violations (bulwark-core's defaults).
pub const DEFAULT_GLOBAL_RATELIMIT: (u32, u32) = (200, 10_000);
/// Guest reboots per run unless `maxresets=` says otherwise.
pub const DEFAULT_MAX_RESETS: u32 = 8;
/// Largest `maxresets=` accepted.
pub const MAX_MAX_RESETS: u32 = 1000;
/// At most this many `attr=` ranges (keeps boot-time storage bounded).
pub const MAX_ATTR_RANGES: usize = 64;
/// At most this many device names in `passthrough=`.
pub const MAX_PASSTHROUGH: usize = 8;
/// Longest device-tree node name `passthrough=` accepts (the spec's limit is 31 + `@unit`).
pub const MAX_NODE_NAME: usize = 63;

/// A rejected command line: the token and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdlineError {
    pub token: String,
    pub why: String,
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad command-line token '{}': {}", self.token, self.why)
    }
}

fn err(token: &str, why: impl Into<String>) -> CmdlineError {
    CmdlineError {
        token: token.to_string(),
        why: why.into(),
    }
}

/// Split Bulwark's command line from a guest command line that follows a lone `--` token.
/// Returns `(bulwark_part, guest_part)`; the guest part is `None` when there is no `--`.
pub fn split_guest(cmdline: &str) -> (&str, Option<&str>) {
    let trimmed = cmdline.trim();
    if trimmed == "--" {
        return ("", Some(""));
    }
    if let Some(rest) = trimmed.strip_prefix("-- ") {
        return ("", Some(rest.trim()));
    }
    match trimmed.find(" -- ") {
        Some(i) => {
            let (a, b) = trimmed.split_at(i);
            (a.trim(), Some(b.get(4..).unwrap_or("").trim()))
        }
        None => match trimmed.strip_suffix(" --") {
            Some(a) => (a.trim(), Some("")),
            None => (trimmed, None),
        },
    }
}

/// Parse Bulwark's command line (without any guest part).
pub fn parse(cmdline: &str) -> Result<Config, CmdlineError> {
    let mut cfg = Config::default();
    // Remember which token each range came from, to name both sides of an overlap.
    let mut origin: Vec<(AttrRange, &str, &str)> = Vec::new();
    let mut seen_violation = false;
    let mut seen_log = false;
    let mut seen_ratelimit = false;
    let mut seen_global = false;
    let mut seen_maxresets = false;
    let mut seen_spp = false;
    let mut seen_passthrough = false;
    let mut seen_hyp_abi = false;
    for token in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = token.split_once('=') else {
            return Err(err(token, "expected key=value (see docs/cmdline.md)"));
        };
        match key {
            "violation" => {
                once(&mut seen_violation, token)?;
                cfg.violation = match value {
                    "skip" => ViolationPolicy::Skip,
                    "inject" => ViolationPolicy::Inject,
                    "halt" => ViolationPolicy::Halt,
                    _ => return Err(err(token, "violation must be skip, inject or halt")),
                };
            }
            "log" => {
                once(&mut seen_log, token)?;
                cfg.log_level = match value {
                    "error" => LogLevel::Error,
                    "warn" => LogLevel::Warn,
                    "info" => LogLevel::Info,
                    "debug" => LogLevel::Debug,
                    "trace" => LogLevel::Trace,
                    _ => return Err(err(token, "log must be error, warn, info, debug or trace")),
                };
            }
            "ratelimit" => {
                once(&mut seen_ratelimit, token)?;
                let n = parse_number(value).map_err(|why| err(token, why))?;
                cfg.ratelimit = u32::try_from(n)
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| err(token, "ratelimit must be between 1 and 4294967295"))?;
            }
            "globalratelimit" => {
                once(&mut seen_global, token)?;
                let bad = "globalratelimit must be LINES/VIOLATIONS with 1 <= LINES <= VIOLATIONS < 2^32";
                let (l, w) = value.split_once('/').ok_or_else(|| err(token, bad))?;
                let l = parse_number(l).map_err(|why| err(token, why))?;
                let w = parse_number(w).map_err(|why| err(token, why))?;
                cfg.global_ratelimit = match (u32::try_from(l), u32::try_from(w)) {
                    (Ok(l), Ok(w)) if l >= 1 && l <= w => (l, w),
                    _ => return Err(err(token, bad)),
                };
            }
            "maxresets" => {
                once(&mut seen_maxresets, token)?;
                let n = parse_number(value).map_err(|why| err(token, why))?;
                cfg.max_resets = u32::try_from(n)
                    .ok()
                    .filter(|&n| n <= MAX_MAX_RESETS)
                    .ok_or_else(|| err(token, "maxresets must be between 0 and 1000"))?;
            }
            "spp" => {
                once(&mut seen_spp, token)?;
                cfg.spp = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(err(token, "spp must be on or off")),
                };
            }
            "passthrough" => {
                once(&mut seen_passthrough, token)?;
                cfg.passthrough = parse_passthrough(value).map_err(|why| err(token, why))?;
                cfg.passthrough_token = token.to_string();
            }
            "hyp-abi" => {
                once(&mut seen_hyp_abi, token)?;
                cfg.hyp_abi = HypAbi::parse(value).map_err(|_| {
                    err(
                        token,
                        "hyp-abi must be seed (the 2021 MMIO-guard numbering) or upstream (Linux 6.12+ pKVM guest ABI); see docs/smccc.md",
                    )
                })?;
            }
            "attr" => {
                if value.is_empty() {
                    return Err(err(token, "attr needs at least one START+SIZE:PERMS range"));
                }
                for spec in value.split(',') {
                    let r = parse_attr(spec).map_err(|why| err(token, why))?;
                    if origin.len() >= MAX_ATTR_RANGES {
                        return Err(err(
                            token,
                            alloc::format!("more than {MAX_ATTR_RANGES} attr ranges"),
                        ));
                    }
                    if let Some((other, other_tok, _)) = origin
                        .iter()
                        .find(|(o, _, _)| o.start.as_u64() < r.end() && r.start.as_u64() < o.end())
                    {
                        return Err(err(
                            token,
                            alloc::format!(
                                "range {:#x}..{:#x} overlaps {:#x}..{:#x} from '{}' (overlapping attr ranges are refused: which one wins would be a guess)",
                                r.start.as_u64(),
                                r.end(),
                                other.start.as_u64(),
                                other.end(),
                                other_tok
                            ),
                        ));
                    }
                    origin.push((r, token, spec));
                }
            }
            _ => return Err(err(
                token,
                "unknown key (known: violation, log, ratelimit, globalratelimit, maxresets, spp, attr, passthrough, hyp-abi)",
            )),
        }
    }
    origin.sort_by_key(|(r, _, _)| r.start);
    cfg.attrs = origin.iter().map(|(r, _, _)| *r).collect();
    cfg.attr_origins = origin
        .iter()
        .map(|(_, token, spec)| AttrOrigin {
            token: token.to_string(),
            spec: spec.to_string(),
        })
        .collect();
    Ok(cfg)
}

impl Config {
    /// The error for an `attr=` range that the back end refused to apply (`e` from
    /// `Guest::set_host_attributes`): it names the token as typed and says why, in the same form
    /// as a parse error. Rules that depend on the machine are only known there: a range outside
    /// guest RAM, a combination the hardware cannot express.
    pub fn attr_refused(&self, r: &AttrRange, e: &ConfigError) -> CmdlineError {
        let (token, spec) = self
            .attrs
            .iter()
            .position(|a| a == r)
            .and_then(|i| self.attr_origins.get(i))
            .map(|o| (o.token.clone(), o.spec.clone()))
            .unwrap_or_else(|| {
                let s = alloc::format!("{:#x}+{:#x}:{:?}", r.start.as_u64(), r.size, r.perms);
                (alloc::format!("attr={s}"), s)
            });
        let why = match e {
            ConfigError::AttrOutsideRam { address, size } => alloc::format!(
                "{address:#x}..{:#x} is not guest RAM (attributes apply to guest RAM only; the guest's memory map is logged above)",
                address.saturating_add(*size)
            ),
            ConfigError::Attr(StoreError::Unsupported(p)) if p.write() && !p.read() => {
                alloc::format!(
                    "{p:?}: write without read cannot be expressed by the hardware (EPT: a misconfiguration; stage 2: no write-only encoding); refused rather than weakened"
                )
            }
            ConfigError::Attr(StoreError::Unsupported(p)) => alloc::format!(
                "{p:?}: execute-only cannot be expressed here ({}); refused rather than weakened",
                if cfg!(target_arch = "aarch64") {
                    "Bulwark does not use stage-2 execute-only on arm64"
                } else {
                    "this CPU's EPT has no execute-only translations, IA32_VMX_EPT_VPID_CAP bit 0"
                }
            ),
            ConfigError::Attr(StoreError::NoMem) => {
                "the attribute store could not reserve room for this range".into()
            }
            other => alloc::format!("refused: {other:?}"),
        };
        err(&token, alloc::format!("'{spec}': {why}"))
    }
}

impl Config {
    /// The error for a `passthrough=` name that matches no device Bulwark hides (or one it
    /// cannot hand over): found when the device tree is read, reported like a parse error.
    pub fn passthrough_refused(&self, name: &str, why: &str) -> CmdlineError {
        err(&self.passthrough_token, alloc::format!("'{name}': {why}"))
    }
}

/// `NAME[,NAME...]`: device-tree node names (`node-name@unit-address`, the characters the
/// devicetree spec allows), each at most once.
fn parse_passthrough(value: &str) -> Result<Vec<String>, String> {
    if value.is_empty() {
        return Err(
            "passthrough needs at least one device-tree node name (e.g. fw-cfg@9020000)".into(),
        );
    }
    let mut names: Vec<String> = Vec::new();
    for name in value.split(',') {
        if name.is_empty() || name.len() > MAX_NODE_NAME {
            return Err(alloc::format!(
                "device name '{name}' must be 1 to {MAX_NODE_NAME} characters"
            ));
        }
        let ok = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b",._+-@".contains(&b));
        if !ok || name.starts_with('@') || name.matches('@').count() > 1 {
            return Err(alloc::format!(
                "'{name}' is not a device-tree node name (node-name[@unit-address], characters a-z A-Z 0-9 , . _ + -)"
            ));
        }
        if names.iter().any(|n| n == name) {
            return Err(alloc::format!("'{name}' named twice"));
        }
        if names.len() >= MAX_PASSTHROUGH {
            return Err(alloc::format!("more than {MAX_PASSTHROUGH} devices"));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

fn once(seen: &mut bool, token: &str) -> Result<(), CmdlineError> {
    if *seen {
        return Err(err(token, "given twice: say it once"));
    }
    *seen = true;
    Ok(())
}

/// `START+SIZE:PERMS[:FLAGS]` or `START..END:PERMS[:FLAGS]`.
fn parse_attr(spec: &str) -> Result<AttrRange, String> {
    let mut parts = spec.split(':');
    let range = parts.next().unwrap_or("");
    let perms = parts
        .next()
        .ok_or_else(|| alloc::format!("'{spec}': expected START+SIZE:PERMS"))?;
    let flags = parts.next();
    if parts.next().is_some() {
        return Err(alloc::format!("'{spec}': too many ':' fields"));
    }
    if let Some(f) = flags {
        let f = parse_number(f)?;
        if f != 0 {
            return Err(alloc::format!(
                "'{spec}': flags {f:#x} must be 0 (no flags are defined)"
            ));
        }
    }
    let (start, size) = if let Some((s, z)) = range.split_once('+') {
        (parse_number(s)?, parse_number(z)?)
    } else if let Some((s, e)) = range.split_once("..") {
        let s = parse_number(s)?;
        let e = parse_number(e)?;
        if e < s {
            return Err(alloc::format!("'{spec}': end {e:#x} is below start {s:#x}"));
        }
        (s, e - s)
    } else {
        return Err(alloc::format!(
            "'{spec}': range must be START+SIZE or START..END"
        ));
    };
    if size == 0 {
        return Err(alloc::format!("'{spec}': size is 0"));
    }
    if start.checked_add(size).is_none() {
        return Err(alloc::format!(
            "'{spec}': start {start:#x} + size {size:#x} wraps around the address space"
        ));
    }
    if start % PAGE_SIZE != 0 {
        return Err(alloc::format!(
            "'{spec}': start {start:#x} is not 4 KiB aligned"
        ));
    }
    if size % PAGE_SIZE != 0 {
        return Err(alloc::format!(
            "'{spec}': size {size:#x} is not a multiple of 4 KiB"
        ));
    }
    let perms = parse_perms(perms).map_err(|why| alloc::format!("'{spec}': {why}"))?;
    Ok(AttrRange {
        start: GuestPhysAddr::new(start),
        size,
        perms,
    })
}

/// `rwx`-style (exactly three characters, `-` for absent) or a number with bits R=1 W=2 X=4.
fn parse_perms(s: &str) -> Result<Perms, String> {
    let b = s.as_bytes();
    if let [r, w, x] = b {
        if [*r, *w, *x]
            .iter()
            .all(|c| matches!(c, b'r' | b'w' | b'x' | b'-'))
        {
            let ok =
                matches!(r, b'r' | b'-') && matches!(w, b'w' | b'-') && matches!(x, b'x' | b'-');
            if !ok {
                return Err(alloc::format!(
                    "permissions '{s}' must be r, w, x in that order, '-' for absent (e.g. r-x)"
                ));
            }
            let bits =
                (u8::from(*r == b'r')) | (u8::from(*w == b'w') << 1) | (u8::from(*x == b'x') << 2);
            return Ok(Perms::from_bits_truncate(bits));
        }
    }
    let n = parse_number(s).map_err(|_| {
        alloc::format!("permissions '{s}' must be like r-x or a number with bits R=1 W=2 X=4")
    })?;
    perms_from_bits(n).ok_or_else(|| {
        alloc::format!(
            "unknown attribute bits {:#x} (only R=1 W=2 X=4 exist)",
            n & !7
        )
    })
}

/// Decimal or `0x` hexadecimal, optional `_` separators, optional suffix K, M, G (x1024^n).
pub fn parse_number(s: &str) -> Result<u64, String> {
    if s.is_empty() {
        return Err("empty number".into());
    }
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (s.get(..s.len() - 1).unwrap_or(""), 1u64 << 10),
        Some(b'M' | b'm') => (s.get(..s.len() - 1).unwrap_or(""), 1u64 << 20),
        Some(b'G' | b'g') => (s.get(..s.len() - 1).unwrap_or(""), 1u64 << 30),
        _ => (s, 1),
    };
    let digits: String = digits.chars().filter(|&c| c != '_').collect();
    let v = if let Some(h) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(h, 16)
    } else {
        digits.parse::<u64>()
    }
    .map_err(|_| alloc::format!("'{s}' is not a number (decimal or 0x hex, optional K/M/G)"))?;
    v.checked_mul(mult)
        .ok_or_else(|| alloc::format!("'{s}' does not fit in 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str) -> CmdlineError {
        parse(s).expect_err(s)
    }

    #[test]
    fn empty_is_default() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("   ").unwrap(), Config::default());
    }

    #[test]
    fn passthrough_names() {
        assert!(Config::default().passthrough.is_empty());
        let c = parse("passthrough=fw-cfg@9020000").unwrap();
        assert_eq!(c.passthrough, ["fw-cfg@9020000"]);
        assert_eq!(c.passthrough_token, "passthrough=fw-cfg@9020000");
        let c = parse("passthrough=virtio_mmio@a000000,flash@0,pcie@10000000").unwrap();
        assert_eq!(c.passthrough.len(), 3);
        assert!(e("passthrough=").why.contains("at least one"));
        assert!(e("passthrough=fw-cfg,").why.contains("1 to 63"));
        assert!(e("passthrough=a/b")
            .why
            .contains("not a device-tree node name"));
        assert!(e("passthrough=@1000")
            .why
            .contains("not a device-tree node name"));
        assert!(e("passthrough=a@1@2")
            .why
            .contains("not a device-tree node name"));
        assert!(e("passthrough=x,x").why.contains("named twice"));
        assert!(e(&alloc::format!("passthrough={}", "a".repeat(64)))
            .why
            .contains("1 to 63"));
        assert!(e("passthrough=a,b,c,d,e,f,g,h,i")
            .why
            .contains("more than 8"));
        assert!(e("passthrough=a passthrough=b").why.contains("given twice"));
        let r = c.passthrough_refused("flash@0", "no such device");
        assert_eq!(
            r.token,
            "passthrough=virtio_mmio@a000000,flash@0,pcie@10000000"
        );
        assert!(r.why.contains("'flash@0': no such device"));
    }

    #[test]
    fn maxresets() {
        assert_eq!(Config::default().max_resets, DEFAULT_MAX_RESETS);
        assert_eq!(parse("maxresets=0").unwrap().max_resets, 0);
        assert_eq!(parse("maxresets=1").unwrap().max_resets, 1);
        assert_eq!(parse("maxresets=0x10").unwrap().max_resets, 16);
        assert_eq!(parse("maxresets=1000").unwrap().max_resets, 1000);
        let x = e("maxresets=1001");
        assert_eq!(x.token, "maxresets=1001");
        assert!(x.why.contains("between 0 and 1000"));
        assert!(e("maxresets=1G").why.contains("between 0 and 1000"));
        assert!(e("maxresets=-1").why.contains("not a number"));
        assert!(e("maxresets=").why.contains("empty"));
        assert!(e("maxresets=1 maxresets=2").why.contains("twice"));
    }

    #[test]
    fn policy_log_ratelimit() {
        let c = parse("violation=inject log=debug ratelimit=3").unwrap();
        assert_eq!(c.violation, ViolationPolicy::Inject);
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.ratelimit, 3);
        assert_eq!(
            parse("violation=halt").unwrap().violation,
            ViolationPolicy::Halt
        );
        let x = e("violation=ignore");
        assert_eq!(x.token, "violation=ignore");
        assert!(x.why.contains("skip, inject or halt"));
        assert!(e("violation=skip violation=halt").why.contains("twice"));
        assert!(e("ratelimit=0").why.contains("between 1"));
        assert!(e("ratelimit=5G").why.contains("between 1"));
        assert_eq!(parse("").unwrap().global_ratelimit, (200, 10_000));
        assert_eq!(
            parse("globalratelimit=5/1K").unwrap().global_ratelimit,
            (5, 1024)
        );
        assert_eq!(
            parse("globalratelimit=7/7").unwrap().global_ratelimit,
            (7, 7)
        );
        for bad in [
            "globalratelimit=0/10",
            "globalratelimit=11/10",
            "globalratelimit=10",
            "globalratelimit=1/5G",
            "globalratelimit=/5",
            "globalratelimit=1/x",
        ] {
            assert!(
                e(bad).why.contains("globalratelimit must be") || e(bad).why.contains("number"),
                "{bad}: {}",
                e(bad).why
            );
        }
        assert!(e("globalratelimit=1/2 globalratelimit=1/2")
            .why
            .contains("given twice"));
        assert!(e("log=loud").why.contains("error, warn"));
    }

    #[test]
    fn spp_on_off() {
        assert!(!parse("").unwrap().spp);
        assert!(parse("spp=on").unwrap().spp);
        assert!(!parse("spp=off").unwrap().spp);
        assert!(e("spp=yes").why.contains("on or off"));
        assert!(e("spp=on spp=off").why.contains("twice"));
    }

    #[test]
    fn hyp_abi_choice() {
        assert_eq!(parse("").unwrap().hyp_abi, HypAbi::Seed);
        assert_eq!(parse("hyp-abi=seed").unwrap().hyp_abi, HypAbi::Seed);
        assert_eq!(parse("hyp-abi=upstream").unwrap().hyp_abi, HypAbi::Upstream);
        assert!(e("hyp-abi=pkvm").why.contains("seed"));
        assert!(e("hyp-abi=seed hyp-abi=upstream").why.contains("twice"));
    }

    #[test]
    fn unknown_and_malformed_tokens() {
        let x = e("violation=skip frobnicate=1");
        assert_eq!(x.token, "frobnicate=1");
        assert!(x.why.contains("unknown key"));
        assert!(e("quiet").why.contains("key=value"));
        assert!(e("attr=").why.contains("at least one"));
    }

    #[test]
    fn attr_forms() {
        let c = parse("attr=0x200000+2M:r-x,0x400000..0x600000:rw- attr=1G+4K:0").unwrap();
        assert_eq!(
            c.attrs,
            vec![
                AttrRange {
                    start: GuestPhysAddr::new(0x200000),
                    size: 0x200000,
                    perms: Perms::RX
                },
                AttrRange {
                    start: GuestPhysAddr::new(0x400000),
                    size: 0x200000,
                    perms: Perms::RW
                },
                AttrRange {
                    start: GuestPhysAddr::new(1 << 30),
                    size: 4096,
                    perms: Perms::NONE
                },
            ]
        );
        assert_eq!(
            parse("attr=0x1000+0x1000:7:0").unwrap().attrs[0].perms,
            Perms::RWX
        );
        assert_eq!(alloc::format!("{:?}", Perms::RX), "r-x");
        assert_eq!(parse("attr=4_096+4k:--x").unwrap().attrs[0].perms.bits(), 4);
    }

    #[test]
    fn attr_rules() {
        // Each KVM_SET_MEMORY_ATTRIBUTES rule has its own message.
        assert!(e("attr=0x1000+0:r--").why.contains("size is 0"));
        assert!(e("attr=0x1000..0x1000:r--").why.contains("size is 0"));
        assert!(e("attr=0xfffffffffffff000+0x2000:r--")
            .why
            .contains("wraps"));
        assert!(e("attr=0x1001+4K:r--").why.contains("not 4 KiB aligned"));
        assert!(e("attr=0x1000+100:r--").why.contains("multiple of 4 KiB"));
        assert!(e("attr=0x1000+4K:0x8")
            .why
            .contains("unknown attribute bits 0x8"));
        assert!(e("attr=0x1000+4K:0xff")
            .why
            .contains("unknown attribute bits 0xf8"));
        assert!(e("attr=0x1000+4K:r--:1")
            .why
            .contains("flags 0x1 must be 0"));
        assert!(e("attr=0x1000+4K:wrx").why.contains("in that order"));
        assert!(e("attr=0x1000+4K:rw").why.contains("like r-x"));
        assert!(e("attr=0x1000+4K").why.contains("START+SIZE:PERMS"));
        assert!(e("attr=0x1000:r--")
            .why
            .contains("START+SIZE or START..END"));
        assert!(e("attr=0x2000..0x1000:r--").why.contains("below start"));
        assert!(e("attr=zz+4K:r--").why.contains("not a number"));
        assert!(e("attr=0x1000+4K:r--:0:0").why.contains("too many"));
        assert!(e("attr=0x1000+99999999999999999G:r--")
            .why
            .contains("64 bits"));
    }

    #[test]
    fn overlaps_are_refused_and_name_both_tokens() {
        let x = e("attr=0x0+8K:r-- attr=0x1000+4K:rw-");
        assert_eq!(x.token, "attr=0x1000+4K:rw-");
        assert!(x.why.contains("overlaps"));
        assert!(x.why.contains("attr=0x0+8K:r--"));
        // Within one token, too.
        assert!(e("attr=0x0+8K:r--,0x1000+4K:r--").why.contains("overlaps"));
        // Adjacent is fine.
        assert_eq!(
            parse("attr=0x0+4K:r--,0x1000+4K:r--").unwrap().attrs.len(),
            2
        );
    }

    #[test]
    fn apply_time_refusals_name_the_token_as_typed() {
        let c = parse("violation=inject attr=0x2000+4K:-w-,0x0+4K:r-x attr=1G+8K:r--").unwrap();
        assert_eq!(c.attr_origins.len(), 3);
        assert_eq!(c.attr_origins[0].spec, "0x0+4K:r-x");
        let x = c.attr_refused(
            &c.attrs[1],
            &ConfigError::Attr(StoreError::Unsupported(Perms::W)),
        );
        assert_eq!(x.token, "attr=0x2000+4K:-w-,0x0+4K:r-x");
        assert!(x
            .why
            .starts_with("'0x2000+4K:-w-': -w-: write without read"));
        let x = c.attr_refused(
            &c.attrs[2],
            &ConfigError::AttrOutsideRam {
                address: 1 << 30,
                size: 8192,
            },
        );
        assert_eq!(x.token, "attr=1G+8K:r--");
        assert!(x.why.contains("0x40000000..0x40002000 is not guest RAM"));
        let x = c.attr_refused(
            &c.attrs[0],
            &ConfigError::Attr(StoreError::Unsupported(Perms::X)),
        );
        assert!(x.why.contains("execute-only cannot be expressed"));
        assert!(alloc::format!("{x}")
            .starts_with("bad command-line token 'attr=0x2000+4K:-w-,0x0+4K:r-x': '0x0+4K:r-x'"));
    }

    #[test]
    fn range_count_is_bounded() {
        let mut s = String::new();
        for i in 0..=MAX_ATTR_RANGES as u64 {
            s.push_str(&alloc::format!("attr={:#x}+4K:r-- ", i * 4096));
        }
        assert!(e(&s).why.contains("more than"));
    }

    #[test]
    fn guest_split() {
        assert_eq!(
            split_guest("violation=halt -- console=ttyS0 x"),
            ("violation=halt", Some("console=ttyS0 x"))
        );
        assert_eq!(split_guest("-- a b"), ("", Some("a b")));
        assert_eq!(
            split_guest("violation=halt --"),
            ("violation=halt", Some(""))
        );
        assert_eq!(split_guest("violation=halt"), ("violation=halt", None));
        assert_eq!(split_guest("--"), ("", Some("")));
        assert_eq!(split_guest(""), ("", None));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0x10").unwrap(), 16);
        assert_eq!(parse_number("2M").unwrap(), 2 << 20);
        assert_eq!(parse_number("1_000").unwrap(), 1000);
        assert!(parse_number("").is_err());
        assert!(parse_number("0x").is_err());
        assert!(parse_number("K").is_err());
        assert!(parse_number("-1").is_err());
        assert!(parse_number("16G").is_ok());
        assert!(parse_number("0xffffffffffffffffK").is_err());
    }

    /// Garbage never panics.
    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let alphabet = b"attr=violation0x123456789abcdefKMG+..:,rwx- \t=_";
        for _ in 0..20_000 {
            let mut s = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let mut x = seed;
            for _ in 0..len {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push(alphabet[(x >> 33) as usize % alphabet.len()] as char);
            }
            let _ = parse(&s);
            let _ = split_guest(&s);
        }
    }
}
