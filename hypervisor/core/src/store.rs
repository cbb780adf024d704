//! The per-page attribute store (spec §4): the single source of truth from which EPT, SPPT and
//! stage-2 permissions are derived.
//!
//! * Sparse: a sorted vector of non-overlapping frame runs whose state differs from the default
//!   (all rights, no ROE lock, no chunk), adjacent equal runs merged. "No entry" is the default.
//! * Host attributes are the R/W/X rights the boot command line allows (KVM's bits 0-2);
//!   `rwx` equals "no entry", KVM's attribute 0.
//! * ROE page locks and chunk marks live in the same runs; byte-granular chunk records live in a
//!   sorted vector of 4096-bit maps. Nothing can clear a lock or a chunk byte: the only
//!   operations that touch them add protection.
//! * Every mutation first reserves all storage it needs (`try_reserve`) and checks the
//!   configured limits; a failure returns [`StoreError::NoMem`] with the old state intact.
//!   Setting a range to what it already has changes nothing (and reports no changed range).

use alloc::vec::Vec;

use crate::addr::{GpaRange, GuestPhysAddr, PAGE_SIZE};
use crate::pt::Perms;

/// The state of one guest frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PageState {
    /// Rights the host attributes allow.
    pub allowed: Perms,
    /// Locked read-only by ROE_MPROTECT.
    pub roe: bool,
    /// Holds bytes protected by ROE_MPROTECT_CHUNK (details in the chunk record).
    pub chunk: bool,
}

impl PageState {
    pub const DEFAULT: PageState = PageState {
        allowed: Perms::RWX,
        roe: false,
        chunk: false,
    };
    /// The page may not be written through the tables (ROE lock, chunk, or attribute).
    pub const fn write_protected(&self) -> bool {
        self.roe || self.chunk || !self.allowed.write()
    }
}

impl Default for PageState {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why the store refused a change. Nothing changed when one is returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StoreError {
    /// `flags` is not 0 (KVM_SET_MEMORY_ATTRIBUTES).
    NonZeroFlags,
    /// An attribute bit other than R/W/X is set.
    UnknownBits(u64),
    /// Size 0.
    ZeroSize,
    /// address + size wraps.
    Wraps,
    /// address or size not 4 KiB aligned.
    Unaligned,
    /// The combination cannot be enforced without weakening it (write without read, or
    /// execute-only where the hardware has no execute-only translations).
    Unsupported(Perms),
    /// The storage could not be reserved (allocation failure or configured limit).
    NoMem,
}

/// Limits on the store's size (bounds Bulwark's heap use by a hostile guest).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StoreLimits {
    /// Maximum number of runs.
    pub max_runs: usize,
    /// Maximum number of pages with chunk records (512 bytes each).
    pub max_chunk_pages: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_runs: 65_536,
            max_chunk_pages: 16_384,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct StoreRun {
    start: u64,
    /// Exclusive.
    end: u64,
    state: PageState,
}

/// Protected bytes of one page: bit b of word b/64 = byte b.
pub type ChunkBits = [u64; 64];

/// The per-guest attribute store.
#[derive(Debug, Default)]
pub struct AttrStore {
    runs: Vec<StoreRun>,
    chunks: Vec<(u64, ChunkBits)>,
    limits: StoreLimits,
    exec_only: bool,
}

/// Maximum guest frame (52-bit physical addresses).
const MAX_FRAME: u64 = 1 << 40;

impl AttrStore {
    /// `exec_only`: the hardware can express execute-only translations.
    pub fn new(limits: StoreLimits, exec_only: bool) -> Self {
        Self {
            runs: Vec::new(),
            chunks: Vec::new(),
            limits,
            exec_only,
        }
    }

    /// Number of runs (accounting).
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }
    /// Number of pages with chunk records (accounting).
    pub fn chunk_pages(&self) -> usize {
        self.chunks.len()
    }

    /// Index of the first run whose end is > frame.
    fn first_ending_after(&self, frame: u64) -> usize {
        self.runs.partition_point(|r| r.end <= frame)
    }

    /// State of `frame`.
    pub fn state(&self, frame: u64) -> PageState {
        let i = self.first_ending_after(frame);
        match self.runs.get(i) {
            Some(r) if r.start <= frame => r.state,
            _ => PageState::DEFAULT,
        }
    }

    /// State of `frame` and how many frames from it (at least 1) share that state.
    pub fn run_at(&self, frame: u64) -> (PageState, u64) {
        let i = self.first_ending_after(frame);
        match self.runs.get(i) {
            Some(r) if r.start <= frame => (r.state, r.end - frame),
            Some(r) => (PageState::DEFAULT, r.start - frame),
            None => (PageState::DEFAULT, MAX_FRAME.saturating_sub(frame).max(1)),
        }
    }

    /// Protected bytes of `frame` (only for chunk pages).
    pub fn chunk_bits(&self, frame: u64) -> Option<&ChunkBits> {
        self.chunks
            .binary_search_by_key(&frame, |c| c.0)
            .ok()
            .and_then(|i| self.chunks.get(i))
            .map(|c| &c.1)
    }

    /// Is the byte at `gpa` protected against writes by ROE (page lock or chunk)?
    pub fn byte_locked(&self, gpa: GuestPhysAddr) -> bool {
        let st = self.state(gpa.frame());
        if st.roe {
            return true;
        }
        if !st.chunk {
            return false;
        }
        let off = gpa.page_offset();
        self.chunk_bits(gpa.frame())
            .and_then(|b| b.get((off / 64) as usize))
            .is_some_and(|w| w & (1 << (off % 64)) != 0)
    }

    /// KVM_SET_MEMORY_ATTRIBUTES' checks, in KVM's order, plus Bulwark's refusal of rights the
    /// hardware cannot enforce. Returns the frame range and rights. Changes nothing.
    pub fn validate_attributes(
        &self,
        address: u64,
        size: u64,
        attributes: u64,
        flags: u64,
    ) -> Result<(u64, u64, Perms), StoreError> {
        if flags != 0 {
            return Err(StoreError::NonZeroFlags);
        }
        if attributes & !7 != 0 {
            return Err(StoreError::UnknownBits(attributes & !7));
        }
        if size == 0 {
            return Err(StoreError::ZeroSize);
        }
        let end = address.checked_add(size).ok_or(StoreError::Wraps)?;
        if !address.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(StoreError::Unaligned);
        }
        let perms = Perms::from_bits_truncate(attributes as u8);
        if (perms.write() && !perms.read()) || (perms.exec() && !perms.read() && !self.exec_only) {
            return Err(StoreError::Unsupported(perms));
        }
        let (s, e) = (address / PAGE_SIZE, end / PAGE_SIZE);
        if e > MAX_FRAME {
            return Err(StoreError::Wraps);
        }
        Ok((s, e, perms))
    }

    /// KVM_SET_MEMORY_ATTRIBUTES: validate ([`AttrStore::validate_attributes`]), then set the
    /// allowed rights of `[address, address+size)`. `attributes` = allowed R/W/X (bits 0-2);
    /// 7 = no restriction. Returns the changed range (None: already so).
    pub fn set_attributes(
        &mut self,
        address: u64,
        size: u64,
        attributes: u64,
        flags: u64,
    ) -> Result<Option<GpaRange>, StoreError> {
        let (s, e, perms) = self.validate_attributes(address, size, attributes, flags)?;
        let (runs, changed) = self.rebuild(&[(s, e)], |st| PageState {
            allowed: perms,
            ..st
        })?;
        self.runs = runs;
        Ok(changed)
    }

    /// Lock whole frames read-only (ROE_MPROTECT). `frames` may repeat and be in any order.
    /// All or nothing. Returns the smallest range covering the frames that changed.
    pub fn roe_lock_frames(&mut self, frames: &[u64]) -> Result<Option<GpaRange>, StoreError> {
        if frames.iter().any(|f| *f >= MAX_FRAME) {
            return Err(StoreError::Wraps);
        }
        let ranges = coalesce(frames)?;
        self.roe_lock_sorted(&ranges)
    }

    /// Lock whole pages given as frame runs `[start, end)`, in any order, overlapping or not
    /// (ROE_MPROTECT of a large range: memory grows with the number of discontiguous runs, not
    /// with the number of pages). All or nothing, idempotent, like [`Self::roe_lock_frames`].
    pub fn roe_lock_runs(&mut self, runs: &[(u64, u64)]) -> Result<Option<GpaRange>, StoreError> {
        if runs.iter().any(|&(s, e)| s >= e || e > MAX_FRAME) {
            return Err(StoreError::Wraps);
        }
        let ranges = merge_runs(runs)?;
        self.roe_lock_sorted(&ranges)
    }

    /// `ranges` sorted, disjoint and non-adjacent (as [`coalesce`] / [`merge_runs`] return).
    fn roe_lock_sorted(&mut self, ranges: &[(u64, u64)]) -> Result<Option<GpaRange>, StoreError> {
        let (runs, changed) = self.rebuild(ranges, |st| PageState { roe: true, ..st })?;
        self.runs = runs;
        Ok(changed)
    }

    /// Protect bytes (ROE_MPROTECT_CHUNK): each `(gpa, len)` lies within one page. All or nothing.
    /// Returns the smallest range covering the pages whose derived state (page state or SPP
    /// vector) changed.
    pub fn chunk_protect(
        &mut self,
        pieces: &[(GuestPhysAddr, u64)],
    ) -> Result<Option<GpaRange>, StoreError> {
        let mut frames: Vec<u64> = Vec::new();
        frames
            .try_reserve(pieces.len())
            .map_err(|_| StoreError::NoMem)?;
        for (gpa, len) in pieces {
            let off = gpa.page_offset();
            if *len == 0 || off.checked_add(*len).is_none_or(|e| e > PAGE_SIZE) {
                return Err(StoreError::Unaligned);
            }
            if gpa.frame() >= MAX_FRAME {
                return Err(StoreError::Wraps);
            }
            if !self.state(gpa.frame()).roe {
                frames.push(gpa.frame());
            }
        }
        let ranges = coalesce(&frames)?;
        // New chunk records needed.
        let mut new_records = 0usize;
        for (s, e) in &ranges {
            for f in *s..*e {
                if self.chunk_bits(f).is_none() {
                    new_records += 1;
                }
            }
        }
        if self.chunks.len().saturating_add(new_records) > self.limits.max_chunk_pages {
            return Err(StoreError::NoMem);
        }
        let (runs, mut changed) = self.rebuild(&ranges, |st| PageState { chunk: true, ..st })?;
        self.chunks
            .try_reserve(new_records)
            .map_err(|_| StoreError::NoMem)?;
        // Commit: nothing below allocates (capacity reserved) or fails.
        self.runs = runs;
        for (gpa, len) in pieces {
            let f = gpa.frame();
            if self.state(f).roe {
                continue;
            }
            let idx = match self.chunks.binary_search_by_key(&f, |c| c.0) {
                Ok(i) => i,
                Err(i) => {
                    self.chunks.insert(i, (f, [0u64; 64]));
                    i
                }
            };
            let mut bits_changed = false;
            if let Some((_, bits)) = self.chunks.get_mut(idx) {
                let off = gpa.page_offset();
                for b in off..off.saturating_add(*len).min(PAGE_SIZE) {
                    if let Some(w) = bits.get_mut((b / 64) as usize) {
                        let m = 1u64 << (b % 64);
                        if *w & m == 0 {
                            *w |= m;
                            bits_changed = true;
                        }
                    }
                }
            }
            if bits_changed {
                changed = join(
                    changed,
                    GpaRange::new(GuestPhysAddr::from_frame(f), PAGE_SIZE),
                );
            }
        }
        Ok(changed)
    }

    /// The run vector after applying `f` to every frame of the sorted, disjoint `ranges`, and
    /// the changed range. Touches no state: the caller commits.
    fn rebuild(
        &self,
        ranges: &[(u64, u64)],
        f: impl Fn(PageState) -> PageState,
    ) -> Result<(Vec<StoreRun>, Option<GpaRange>), StoreError> {
        let mut out: Vec<StoreRun> = Vec::new();
        out.try_reserve(
            self.runs
                .len()
                .saturating_add(ranges.len().saturating_mul(2))
                + 1,
        )
        .map_err(|_| StoreError::NoMem)?;
        let mut changed: Option<GpaRange> = None;
        let mut cursor = 0u64;
        for &(s, e) in ranges {
            self.copy_old(&mut out, cursor, s)?;
            let mut pos = s;
            while pos < e {
                let (st, len) = self.run_at(pos);
                let end = pos.saturating_add(len).min(e);
                let new = f(st);
                if new != st {
                    changed = join(
                        changed,
                        GpaRange::from_bounds(
                            GuestPhysAddr::from_frame(pos),
                            GuestPhysAddr::from_frame(end),
                        ),
                    );
                }
                push_run(&mut out, pos, end, new)?;
                pos = end;
            }
            cursor = e;
        }
        self.copy_old(&mut out, cursor, MAX_FRAME)?;
        if out.len() > self.limits.max_runs {
            return Err(StoreError::NoMem);
        }
        Ok((out, changed))
    }

    fn copy_old(&self, out: &mut Vec<StoreRun>, from: u64, to: u64) -> Result<(), StoreError> {
        if from >= to {
            return Ok(());
        }
        let i = self.first_ending_after(from);
        for r in self.runs.iter().skip(i) {
            if r.start >= to {
                break;
            }
            push_run(out, r.start.max(from), r.end.min(to), r.state)?;
        }
        Ok(())
    }

    /// Every run (for tests and dumps).
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64, PageState)> + '_ {
        self.runs.iter().map(|r| (r.start, r.end, r.state))
    }
}

/// Append `[s, e)` with `state`, merging with the previous run; default state is not stored.
fn push_run(out: &mut Vec<StoreRun>, s: u64, e: u64, state: PageState) -> Result<(), StoreError> {
    if s >= e || state == PageState::DEFAULT {
        return Ok(());
    }
    if let Some(last) = out.last_mut() {
        if last.end == s && last.state == state {
            last.end = e;
            return Ok(());
        }
    }
    out.try_reserve(1).map_err(|_| StoreError::NoMem)?;
    out.push(StoreRun {
        start: s,
        end: e,
        state,
    });
    Ok(())
}

/// Sorted, deduplicated frames as disjoint `[s, e)` ranges.
fn coalesce(frames: &[u64]) -> Result<Vec<(u64, u64)>, StoreError> {
    let mut sorted: Vec<u64> = Vec::new();
    sorted
        .try_reserve_exact(frames.len())
        .map_err(|_| StoreError::NoMem)?;
    sorted.extend_from_slice(frames);
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for f in sorted {
        match out.last_mut() {
            Some(last) if last.1 == f => last.1 = f + 1,
            _ => {
                out.try_reserve(1).map_err(|_| StoreError::NoMem)?;
                out.push((f, f + 1));
            }
        }
    }
    Ok(out)
}

/// Sort frame runs `[start, end)` and merge overlapping or adjacent ones.
fn merge_runs(runs: &[(u64, u64)]) -> Result<Vec<(u64, u64)>, StoreError> {
    let mut sorted: Vec<(u64, u64)> = Vec::new();
    sorted
        .try_reserve_exact(runs.len())
        .map_err(|_| StoreError::NoMem)?;
    sorted.extend_from_slice(runs);
    sorted.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in sorted {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => {
                out.try_reserve(1).map_err(|_| StoreError::NoMem)?;
                out.push((s, e));
            }
        }
    }
    Ok(out)
}

fn join(a: Option<GpaRange>, b: Option<GpaRange>) -> Option<GpaRange> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.union(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(allowed: Perms, roe: bool, chunk: bool) -> PageState {
        PageState {
            allowed,
            roe,
            chunk,
        }
    }

    #[test]
    fn kvm_validation_rules_each_error() {
        let mut s = AttrStore::new(StoreLimits::default(), false);
        assert_eq!(
            s.set_attributes(0x1000, 0x1000, 1, 1),
            Err(StoreError::NonZeroFlags)
        );
        assert_eq!(
            s.set_attributes(0x1000, 0x1000, 8, 0),
            Err(StoreError::UnknownBits(8))
        );
        assert_eq!(
            s.set_attributes(0x1000, 0x1000, 0xff, 0),
            Err(StoreError::UnknownBits(0xf8))
        );
        assert_eq!(s.set_attributes(0x1000, 0, 1, 0), Err(StoreError::ZeroSize));
        assert_eq!(
            s.set_attributes(u64::MAX - 0xfff, 0x2000, 1, 0),
            Err(StoreError::Wraps)
        );
        assert_eq!(
            s.set_attributes(0x1001, 0x1000, 1, 0),
            Err(StoreError::Unaligned)
        );
        assert_eq!(
            s.set_attributes(0x1000, 0x1001, 1, 0),
            Err(StoreError::Unaligned)
        );
        assert_eq!(
            s.set_attributes(0x1000, 0x1000, 2, 0),
            Err(StoreError::Unsupported(Perms::W))
        );
        assert_eq!(
            s.set_attributes(0x1000, 0x1000, 6, 0),
            Err(StoreError::Unsupported(Perms::from_bits_truncate(6)))
        );
        assert_eq!(
            s.set_attributes(0x1000, 0x1000, 4, 0),
            Err(StoreError::Unsupported(Perms::X))
        );
        assert_eq!(
            s.set_attributes(1 << 60, 0x1000, 1, 0),
            Err(StoreError::Wraps)
        );
        assert_eq!(s.run_count(), 0, "no error changed anything");
        // Execute-only where the hardware has it.
        let mut xo = AttrStore::new(StoreLimits::default(), true);
        assert!(xo.set_attributes(0x1000, 0x1000, 4, 0).unwrap().is_some());
        // No-access is expressible (the page is simply not mapped).
        assert!(s.set_attributes(0x1000, 0x1000, 0, 0).unwrap().is_some());
    }

    #[test]
    fn sparse_runs_split_merge_and_noop() {
        let mut s = AttrStore::new(StoreLimits::default(), false);
        let r = s
            .set_attributes(0x10_0000, 0x10_0000, 5, 0)
            .unwrap()
            .unwrap();
        assert_eq!((r.start().as_u64(), r.len()), (0x10_0000, 0x10_0000));
        assert_eq!(s.run_count(), 1);
        assert_eq!(
            s.set_attributes(0x10_0000, 0x10_0000, 5, 0).unwrap(),
            None,
            "no-op"
        );
        // Middle to rw: split into three.
        s.set_attributes(0x14_0000, 0x1000, 3, 0).unwrap();
        assert_eq!(s.run_count(), 3);
        assert_eq!(s.state(0x140).allowed, Perms::RW);
        assert_eq!(s.state(0x13f).allowed, Perms::RX);
        assert_eq!(s.run_at(0x100), (st(Perms::RX, false, false), 0x40));
        assert_eq!(s.run_at(0x0), (PageState::DEFAULT, 0x100));
        // Back: merged into one.
        s.set_attributes(0x14_0000, 0x1000, 5, 0).unwrap();
        assert_eq!(s.run_count(), 1);
        // rwx = no entry.
        s.set_attributes(0x10_0000, 0x10_0000, 7, 0).unwrap();
        assert_eq!(s.run_count(), 0);
    }

    #[test]
    fn roe_lock_runs_match_frame_locks_without_per_page_memory() {
        // Unsorted, overlapping and adjacent runs lock exactly their union, like the same frames.
        let mut a = AttrStore::new(StoreLimits::default(), false);
        let mut b = AttrStore::new(StoreLimits::default(), false);
        let ra = a
            .roe_lock_runs(&[(9, 10), (3, 5), (4, 6)])
            .unwrap()
            .unwrap();
        let rb = b.roe_lock_frames(&[3, 4, 5, 9]).unwrap().unwrap();
        assert_eq!(ra, rb);
        for f in 0..12 {
            assert_eq!(a.state(f), b.state(f), "frame {f}");
        }
        assert_eq!(a.roe_lock_runs(&[(4, 5)]).unwrap(), None, "idempotent");
        // 1 GiB in one run: no per-page allocation.
        let mut c = AttrStore::new(StoreLimits::default(), false);
        let r = c
            .roe_lock_runs(&[(0x1_0000, 0x1_0000 + 262_144)])
            .unwrap()
            .unwrap();
        assert_eq!(r.len(), 262_144 * 4096);
        // Bad runs change nothing.
        assert_eq!(c.roe_lock_runs(&[(7, 7)]), Err(StoreError::Wraps));
        assert_eq!(
            c.roe_lock_runs(&[(1, MAX_FRAME + 1)]),
            Err(StoreError::Wraps)
        );
        assert_eq!(
            merge_runs(&[(5, 8), (1, 2), (2, 3), (7, 9), (20, 21)]).unwrap(),
            vec![(1, 3), (5, 9), (20, 21)]
        );
    }

    #[test]
    fn roe_locks_cannot_be_relaxed() {
        let mut s = AttrStore::new(StoreLimits::default(), false);
        let r = s.roe_lock_frames(&[5, 3, 4, 5, 9]).unwrap().unwrap();
        assert_eq!((r.start().frame(), r.end().frame()), (3, 10));
        assert_eq!(s.run_count(), 2);
        assert_eq!(s.roe_lock_frames(&[4]).unwrap(), None, "idempotent");
        // Host attributes change rights but never the lock.
        s.set_attributes(0, 0x10_000, 7, 0).unwrap();
        assert!(s.state(4).roe && s.state(4).write_protected());
        s.set_attributes(0, 0x10_000, 1, 0).unwrap();
        s.set_attributes(0, 0x10_000, 7, 0).unwrap();
        assert!(s.state(9).roe);
        assert!(!s.state(6).roe);
        assert!(s.byte_locked(GuestPhysAddr::new(0x4fff)));
        assert!(!s.byte_locked(GuestPhysAddr::new(0x6000)));
        assert_eq!(s.roe_lock_frames(&[1 << 41]), Err(StoreError::Wraps));
    }

    #[test]
    fn chunks_are_byte_exact_and_grow_only() {
        let mut s = AttrStore::new(StoreLimits::default(), false);
        let g = |a| GuestPhysAddr::new(a);
        let r = s.chunk_protect(&[(g(0x2010), 4)]).unwrap().unwrap();
        assert_eq!(r.start(), g(0x2000));
        assert!(s.state(2).chunk && !s.state(2).roe);
        for b in 0x2000..0x2020u64 {
            assert_eq!(s.byte_locked(g(b)), (0x2010..0x2014).contains(&b), "{b:#x}");
        }
        assert_eq!(
            s.chunk_protect(&[(g(0x2011), 2)]).unwrap(),
            None,
            "idempotent"
        );
        // More bytes on the same page: state unchanged, but the vector may change.
        assert!(s.chunk_protect(&[(g(0x2fff), 1)]).unwrap().is_some());
        assert!(s.byte_locked(g(0x2fff)));
        // Errors.
        assert_eq!(
            s.chunk_protect(&[(g(0x2ff0), 0x11)]),
            Err(StoreError::Unaligned)
        );
        assert_eq!(
            s.chunk_protect(&[(g(0x2ff0), 0)]),
            Err(StoreError::Unaligned)
        );
        // A locked page needs no record.
        s.roe_lock_frames(&[7]).unwrap();
        assert_eq!(s.chunk_protect(&[(g(0x7000), 8)]).unwrap(), None);
        assert_eq!(s.chunk_pages(), 1);
    }

    #[test]
    fn limits_leave_state_unchanged() {
        let mut s = AttrStore::new(
            StoreLimits {
                max_runs: 2,
                max_chunk_pages: 1,
            },
            false,
        );
        s.roe_lock_frames(&[1]).unwrap();
        s.chunk_protect(&[(GuestPhysAddr::new(0x3000), 1)]).unwrap();
        let before: Vec<_> = s.runs().collect();
        assert_eq!(s.roe_lock_frames(&[10, 20]), Err(StoreError::NoMem));
        assert_eq!(
            s.chunk_protect(&[(GuestPhysAddr::new(0x8000), 1)]),
            Err(StoreError::NoMem)
        );
        assert_eq!(
            s.set_attributes(0x20_000, 0x1000, 1, 0),
            Err(StoreError::NoMem)
        );
        assert_eq!(s.runs().collect::<Vec<_>>(), before);
        assert_eq!(s.chunk_pages(), 1);
        // Adjacent frame merges into an existing run: fits.
        assert!(s.roe_lock_frames(&[2]).unwrap().is_some());
    }
}
