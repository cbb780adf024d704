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

use core::fmt;

pub use bulwark_abi::policy::{ViolationKind, ViolationPolicy};

use crate::addr::{GuestPhysAddr, GuestVirtAddr};
use crate::exit::Access;

/// `log` target of violation lines.
pub const VIOLATION_TARGET: &str = "bulwark::violation";
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
    /// Lines printed.
    pub printed: u64,
    /// Violations not printed (so far).
    pub suppressed_total: u64,
}

impl ViolationLog {
    /// `limit`: lines per ip before suppression (at least 1).
    pub fn new(limit: u32) -> Self {
        Self {
            limit: u64::from(limit.max(1)),
            slots: [EMPTY; SLOTS],
            clock: 0,
            printed: 0,
            suppressed_total: 0,
        }
    }

    /// Record a violation; returns the lines to print now (0, 1 or 2: an evicted entry's
    /// pending count, then this one), and emits them through `log`.
    pub fn record(&mut self, v: Violation) -> [Option<ViolationLine>; 2] {
        self.clock = self.clock.wrapping_add(1);
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
        for l in out.iter().flatten() {
            self.printed = self.printed.saturating_add(1);
            log::error!(target: VIOLATION_TARGET, "{l}");
        }
        out
    }

    /// Print (and return the number of) lines for every ip with unreported suppressed
    /// violations. Call when the run ends.
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
        n
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
