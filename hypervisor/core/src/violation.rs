//! Violation lines (spec §5) with per-instruction-address rate limiting.
//!
//! Line: `bulwark: violation kind=K access=A gpa=0x.. gva=0x.. ip=0x.. vcpu=N action=P`
//! optionally followed by ` suppressed=N` (violations from this `ip` that were counted but not
//! printed since its previous line). `gva=` is `0x?` when the hardware gave no guest-virtual
//! address. The core emits lines through `log` with target [`VIOLATION_TARGET`] at level
//! `error` (so no `log=` setting can hide them); the logger prints such records as
//! `bulwark: violation <args>` (no level word).
//!
//! Rate limiting: the first `limit` violations from one `ip` are printed; after that one line is
//! printed every [`SUPPRESSED_REPORT_EVERY`] violations, carrying the suppressed count, and
//! [`ViolationLog::flush`] (called when the run ends) prints a line for every `ip` that still
//! has an unreported count. The table is fixed-size (no allocation); when it is full, the entry
//! with the oldest use is evicted after its pending count is printed.
//!
//! Global bound: the per-ip table alone cannot stop a guest that rotates over more store
//! addresses than it has slots (every write would print a line, and on x86 a console line costs
//! Bulwark about 420,000 guest instructions). So every line the per-ip limiter wants to print
//! also needs a token from a global window: at most `lines` violation lines per window of
//! `window` violations (whatever their ips). A line refused by the window is not lost: the
//! violations it stood for are counted and the first violation of the next window (or
//! [`ViolationLog::flush`] at the end of the run) prints one summary record,
//! `bulwark: violations suppressed=N total=T` (target [`SUMMARY_TARGET`]), N being the
//! violations that no line reported, T every violation so far. Accounting is exact: summing, over
//! the printed violation lines, `suppressed=` when present and 1 otherwise, plus every summary's
//! `suppressed=`, gives the number of violations.

use core::fmt;

pub use bulwark_abi::policy::{ViolationKind, ViolationPolicy};

use crate::addr::{GuestPhysAddr, GuestVirtAddr};
use crate::exit::Access;

/// `log` target of violation lines.
pub const VIOLATION_TARGET: &str = "bulwark::violation";
/// `log` target of the global summary record (`bulwark: violations suppressed=N total=T`).
pub const SUMMARY_TARGET: &str = "bulwark::violations";
/// Default global bound: violation lines per window.
pub const DEFAULT_GLOBAL_LINES: u32 = 200;
/// Default global bound: violations per window.
pub const DEFAULT_GLOBAL_WINDOW: u32 = 10_000;
/// After the limit, one line per this many suppressed violations from one ip.
pub const SUPPRESSED_REPORT_EVERY: u64 = 1000;
const SLOTS: usize = 32;

/// What a violation line reports as `action=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionWord {
    Skip,
    Inject,
    Halt,
}

impl ActionWord {
    pub const fn as_str(self) -> &'static str {
        match self {
            ActionWord::Skip => "skip",
            ActionWord::Inject => "inject",
            ActionWord::Halt => "halt",
        }
    }
}

/// One violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    pub access: Access,
    pub gpa: GuestPhysAddr,
    pub gva: Option<GuestVirtAddr>,
    pub ip: GuestVirtAddr,
    pub vcpu: u32,
    pub action: ActionWord,
}

/// A violation line's text after `bulwark: violation `.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViolationLine {
    pub v: Violation,
    /// Suppressed count to report (0: no `suppressed=` field).
    pub suppressed: u64,
}

impl fmt::Display for ViolationLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.v;
        write!(
            f,
            "kind={} access={} gpa={:#x} ",
            v.kind.as_str(),
            v.access.as_str(),
            v.gpa.as_u64()
        )?;
        match v.gva {
            Some(g) => write!(f, "gva={:#x} ", g.as_u64())?,
            None => write!(f, "gva=0x? ")?,
        }
        write!(
            f,
            "ip={:#x} vcpu={} action={}",
            v.ip.as_u64(),
            v.vcpu,
            v.action.as_str()
        )?;
        if self.suppressed > 0 {
            write!(f, " suppressed={}", self.suppressed)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    ip: u64,
    count: u64,
    pending: u64,
    last_use: u64,
    last: Option<Violation>,
}

const EMPTY: Slot = Slot {
    ip: 0,
    count: 0,
    pending: 0,
    last_use: 0,
    last: None,
};

/// Per-ip rate limiter. Lives inside the per-guest state (callers serialise access).
#[derive(Debug)]
pub struct ViolationLog {
    limit: u64,
    slots: [Slot; SLOTS],
    clock: u64,
    /// Global bound: lines per window, violations per window.
    global_lines: u64,
    global_window: u64,
    /// Violations seen in the current window, lines printed in it.
    window_seen: u64,
    window_lines: u64,
    /// Violations whose lines the global window refused, not yet reported by a summary.
    global_pending: u64,
    /// Every violation recorded.
    pub total: u64,
    /// Violation lines printed (summaries not included).
    pub printed: u64,
    /// Summary records printed.
    pub summaries: u64,
    /// Violations reported by summary records (their `suppressed=` counts).
    pub summarized: u64,
    /// Violations not printed as a line of their own (so far).
    pub suppressed_total: u64,
}

impl ViolationLog {
    /// `limit`: lines per ip before suppression (at least 1).
    pub fn new(limit: u32) -> Self {
        Self {
            limit: u64::from(limit.max(1)),
            slots: [EMPTY; SLOTS],
            clock: 0,
            global_lines: u64::from(DEFAULT_GLOBAL_LINES),
            global_window: u64::from(DEFAULT_GLOBAL_WINDOW),
            window_seen: 0,
            window_lines: 0,
            global_pending: 0,
            total: 0,
            printed: 0,
            summaries: 0,
            summarized: 0,
            suppressed_total: 0,
        }
    }

    /// Set the global bound: at most `lines` violation lines per `window` violations (both at
    /// least 1; `lines` is capped at `window`). Call before the first violation.
    pub fn set_global(&mut self, lines: u32, window: u32) {
        self.global_window = u64::from(window.max(1));
        self.global_lines = u64::from(lines.max(1)).min(self.global_window);
    }

    /// Print the summary of violations the global window kept from the console, if any.
    fn summary(&mut self) -> Option<u64> {
        let n = core::mem::take(&mut self.global_pending);
        if n == 0 {
            return None;
        }
        self.summaries = self.summaries.saturating_add(1);
        self.summarized = self.summarized.saturating_add(n);
        log::error!(target: SUMMARY_TARGET, "suppressed={n} total={}", self.total);
        Some(n)
    }

    /// Record a violation; returns the lines to print now (0, 1 or 2: an evicted entry's
    /// pending count, then this one), and emits them through `log`.
    /// Lines the global window refuses are dropped from the result (their violations go to the
    /// next summary).
    pub fn record(&mut self, v: Violation) -> [Option<ViolationLine>; 2] {
        self.clock = self.clock.wrapping_add(1);
        if self.window_seen >= self.global_window {
            self.window_seen = 0;
            self.window_lines = 0;
            self.summary();
        }
        self.window_seen += 1;
        self.total = self.total.saturating_add(1);
        let ip = v.ip.as_u64();
        let mut out = [None, None];
        let idx = match self
            .slots
            .iter()
            .position(|s| s.last.is_some() && s.ip == ip)
        {
            Some(i) => i,
            None => {
                // Free slot, else evict the least recently used.
                let i = match self.slots.iter().position(|s| s.last.is_none()) {
                    Some(i) => i,
                    None => {
                        let mut best = 0;
                        let mut best_use = u64::MAX;
                        for (i, s) in self.slots.iter().enumerate() {
                            if s.last_use < best_use {
                                best_use = s.last_use;
                                best = i;
                            }
                        }
                        best
                    }
                };
                if let Some(s) = self.slots.get(i) {
                    if let (Some(last), true) = (s.last, s.pending > 0) {
                        out[0] = Some(ViolationLine {
                            v: last,
                            suppressed: s.pending,
                        });
                    }
                }
                if let Some(s) = self.slots.get_mut(i) {
                    *s = Slot { ip, ..EMPTY };
                }
                i
            }
        };
        let limit = self.limit;
        let clock = self.clock;
        if let Some(s) = self.slots.get_mut(idx) {
            s.count = s.count.saturating_add(1);
            s.last_use = clock;
            s.last = Some(v);
            if s.count <= limit {
                out[1] = Some(ViolationLine {
                    v,
                    suppressed: core::mem::take(&mut s.pending),
                });
            } else {
                s.pending = s.pending.saturating_add(1);
                self.suppressed_total = self.suppressed_total.saturating_add(1);
                if s.pending >= SUPPRESSED_REPORT_EVERY {
                    out[1] = Some(ViolationLine {
                        v,
                        suppressed: core::mem::take(&mut s.pending),
                    });
                }
            }
        }
        for slot in out.iter_mut() {
            let Some(l) = *slot else { continue };
            if self.window_lines < self.global_lines {
                self.window_lines += 1;
                self.printed = self.printed.saturating_add(1);
                log::error!(target: VIOLATION_TARGET, "{l}");
            } else {
                // The violations this line stood for: its suppressed count (which includes
                // `v` for a report line, and already counts in `suppressed_total`), else 1.
                let weight = if l.suppressed > 0 {
                    l.suppressed
                } else {
                    self.suppressed_total = self.suppressed_total.saturating_add(1);
                    1
                };
                self.global_pending = self.global_pending.saturating_add(weight);
                *slot = None;
            }
        }
        out
    }

    /// Print (and return the number of) lines for every ip with unreported suppressed
    /// violations, then the global summary if the window refused lines. Call when the run
    /// ends (the per-ip lines here are not subject to the window: at most one per slot).
    pub fn flush(&mut self) -> u64 {
        let mut n = 0;
        for s in self.slots.iter_mut() {
            if let (Some(last), true) = (s.last, s.pending > 0) {
                let l = ViolationLine {
                    v: last,
                    suppressed: core::mem::take(&mut s.pending),
                };
                log::error!(target: VIOLATION_TARGET, "{l}");
                n += 1;
            }
        }
        self.printed = self.printed.saturating_add(n);
        n + u64::from(self.summary().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ip: u64) -> Violation {
        Violation {
            kind: ViolationKind::RoeChunk,
            access: Access::Write,
            gpa: GuestPhysAddr::new(0x1234),
            gva: Some(GuestVirtAddr::new(0xffff_8000_0000_1234)),
            ip: GuestVirtAddr::new(ip),
            vcpu: 0,
            action: ActionWord::Skip,
        }
    }

    #[test]
    fn line_format() {
        let l = ViolationLine {
            v: v(0x4000),
            suppressed: 0,
        };
        assert_eq!(
            alloc::format!("{l}"),
            "kind=roe-chunk access=write gpa=0x1234 gva=0xffff800000001234 ip=0x4000 vcpu=0 action=skip"
        );
        let mut x = v(1);
        x.gva = None;
        x.kind = ViolationKind::MmioGuard;
        x.access = Access::Read;
        x.action = ActionWord::Inject;
        let l = ViolationLine {
            v: x,
            suppressed: 7,
        };
        assert_eq!(
            alloc::format!("{l}"),
            "kind=mmio-guard access=read gpa=0x1234 gva=0x? ip=0x1 vcpu=0 action=inject suppressed=7"
        );
    }

    #[test]
    fn rate_limit_reports_suppressed_counts() {
        let mut log = ViolationLog::new(2);
        assert!(log.record(v(1))[1].is_some());
        assert!(log.record(v(1))[1].is_some());
        for _ in 0..SUPPRESSED_REPORT_EVERY - 1 {
            assert_eq!(log.record(v(1)), [None, None]);
        }
        let l = log.record(v(1))[1].unwrap();
        assert_eq!(l.suppressed, SUPPRESSED_REPORT_EVERY);
        log.record(v(1));
        log.record(v(1));
        // Another ip is not limited by the first.
        assert!(log.record(v(2))[1].is_some());
        assert_eq!(log.flush(), 1, "ip 1 has 2 pending");
        assert_eq!(log.flush(), 0);
        assert_eq!(log.suppressed_total, SUPPRESSED_REPORT_EVERY + 2);
    }

    /// What a printed line stands for: its suppressed count, or the one violation it reports.
    fn weight(l: &ViolationLine) -> u64 {
        if l.suppressed > 0 {
            l.suppressed
        } else {
            1
        }
    }

    /// Per-ip counts `flush` will print.
    fn pending(log: &ViolationLog) -> u64 {
        log.slots
            .iter()
            .filter(|s| s.last.is_some())
            .map(|s| s.pending)
            .sum()
    }

    #[test]
    fn rotating_addresses_stay_within_the_global_bound() {
        // 200 distinct ips, each hit many times (the per-ip table has 32 slots, so without the
        // global bound every one of these would print).
        for (lines, window, n) in [(20, 1000, 50_000u64), (200, 10_000, 123_457), (1, 1, 5000)] {
            let mut log = ViolationLog::new(10);
            log.set_global(lines, window);
            let mut printed_weight = 0;
            let mut printed = 0u64;
            for i in 0..n {
                for l in log.record(v(0x1000 + (i % 200) * 4)).iter().flatten() {
                    printed_weight += weight(l);
                    printed += 1;
                }
            }
            let windows = n.div_ceil(u64::from(window));
            assert!(
                printed <= windows * u64::from(lines),
                "{printed} lines in {windows} windows of {lines}"
            );
            assert_eq!(log.printed, printed);
            // One summary at most per window boundary.
            assert!(log.summaries < windows);
            let flushed = pending(&log);
            let before = log.summaries;
            let f = log.flush();
            assert!(f <= SLOTS as u64 + 1);
            assert!(log.summaries <= before + 1);
            assert_eq!(log.total, n);
            assert_eq!(
                printed_weight + flushed + log.summarized,
                n,
                "exact accounting ({lines}/{window})"
            );
        }
    }

    #[test]
    fn global_bound_leaves_few_violations_alone() {
        // Under the window's line budget, every line prints as before and no summary appears.
        let mut log = ViolationLog::new(10);
        log.set_global(200, 10_000);
        for i in 0..150 {
            assert!(log.record(v(i))[1].is_some());
        }
        assert_eq!(log.flush(), 0);
        assert_eq!(log.summaries, 0);
        assert_eq!(log.printed, 150);
    }

    #[test]
    fn summary_counts_the_refused_lines() {
        let mut log = ViolationLog::new(100);
        log.set_global(3, 10);
        let mut got = 0;
        for i in 0..10 {
            got += log.record(v(i)).iter().flatten().count();
        }
        assert_eq!(got, 3);
        assert_eq!(log.summarized, 0);
        // The next window's first violation reports the 7 refused ones.
        assert!(log.record(v(99))[1].is_some());
        assert_eq!((log.summaries, log.summarized), (1, 7));
        assert_eq!(log.suppressed_total, 7);
        assert_eq!(log.flush(), 0);
    }

    #[test]
    fn eviction_reports_pending() {
        let mut log = ViolationLog::new(1);
        log.record(v(100));
        log.record(v(100)); // pending 1
        for ip in 0..SLOTS as u64 - 1 {
            log.record(v(ip));
        }
        // Table full; a new ip evicts the least recently used (ip 100) and reports its count.
        let out = log.record(v(999));
        assert_eq!(out[0].unwrap().suppressed, 1);
        assert_eq!(out[0].unwrap().v.ip.as_u64(), 100);
        assert!(out[1].is_some());
    }
}
