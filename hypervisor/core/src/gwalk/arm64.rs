//! arm64 EL1&0 stage-1 walker (AArch64 translation tables, VMSAv8-64).
//!
//! Supported: MMU off (SCTLR_EL1.M = 0: VA = IPA), and the 4 KiB granule with T0SZ/T1SZ in
//! 16..=39 (25- to 48-bit VA ranges, start level 0..=2), tables at levels 0..=2, blocks at levels
//! 1 (1 GiB) and 2 (2 MiB), pages at level 3, output addresses up to TCR_EL1.IPS (at most 48 bits).
//! Refused: 16 KiB / 64 KiB granules ([`WalkError::UnsupportedGranule`]), LPA2 (TCR_EL1.DS = 1),
//! TxSZ outside 16..=39. The walker only reads: it never sets AF or clears the DBM read-only state.

use super::{bit_range, low_mask, read_entry64, GuestMemRead, GuestWalker, Translation, WalkError};
use crate::addr::{GuestPhysAddr, GuestVirtAddr};

/// Register fields the walker looks at.
pub mod bits {
    pub const SCTLR_M: u64 = 1 << 0;
    pub const TCR_T0SZ_SHIFT: u32 = 0;
    pub const TCR_EPD0: u64 = 1 << 7;
    pub const TCR_TG0_SHIFT: u32 = 14;
    pub const TCR_T1SZ_SHIFT: u32 = 16;
    pub const TCR_EPD1: u64 = 1 << 23;
    pub const TCR_TG1_SHIFT: u32 = 30;
    pub const TCR_IPS_SHIFT: u32 = 32;
    pub const TCR_TBI0: u64 = 1 << 37;
    pub const TCR_TBI1: u64 = 1 << 38;
    pub const TCR_HPD0: u64 = 1 << 41;
    pub const TCR_HPD1: u64 = 1 << 42;
    pub const TCR_DS: u64 = 1 << 59;

    /// Descriptor bits.
    pub const VALID: u64 = 1 << 0;
    pub const TABLE: u64 = 1 << 1;
    pub const AP_SHIFT: u32 = 6;
    pub const AF: u64 = 1 << 10;
    pub const PXN: u64 = 1 << 53;
    pub const UXN: u64 = 1 << 54;
    pub const PXN_TABLE: u64 = 1 << 59;
    pub const UXN_TABLE: u64 = 1 << 60;
    pub const AP_TABLE_NO_EL0: u64 = 1 << 61;
    pub const AP_TABLE_RO: u64 = 1 << 62;
}
use bits::*;

/// The EL1 translation registers, as the back end reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arm64TranslationRegs {
    pub sctlr_el1: u64,
    pub tcr_el1: u64,
    pub ttbr0_el1: u64,
    pub ttbr1_el1: u64,
}

/// Effective permissions of a translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arm64Perms {
    /// AP[2:1] after applying APTable from the table descriptors (unless TCR_EL1.HPDx):
    /// 0b00 EL1 RW, 0b01 EL1+EL0 RW, 0b10 EL1 RO, 0b11 EL1+EL0 RO.
    pub ap: u8,
    /// Privileged execute-never (leaf PXN or any PXNTable).
    pub pxn: bool,
    /// Unprivileged execute-never (leaf UXN or any UXNTable).
    pub uxn: bool,
    /// The leaf's access flag (an access with AF = 0 would fault unless TCR_EL1.HA; reported,
    /// not acted on).
    pub af: bool,
}

impl Arm64Perms {
    /// MMU off: everything allowed.
    const FLAT: Self = Self {
        ap: 0b01,
        pxn: false,
        uxn: false,
        af: true,
    };

    /// EL1 may write.
    pub const fn el1_writable(self) -> bool {
        self.ap & 0b10 == 0
    }
    /// EL0 may read.
    pub const fn el0_readable(self) -> bool {
        self.ap & 0b01 != 0
    }
    /// EL0 may write.
    pub const fn el0_writable(self) -> bool {
        self.ap == 0b01
    }
}

/// The arm64 stage-1 walker for one snapshotted register set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arm64Walker {
    pub regs: Arm64TranslationRegs,
}

impl Arm64Walker {
    pub const fn new(regs: Arm64TranslationRegs) -> Self {
        Self { regs }
    }
}

/// Output-address size from TCR_EL1.IPS, capped at 48 bits (52 needs LPA/LPA2).
fn pa_bits(tcr: u64) -> u32 {
    match (tcr >> TCR_IPS_SHIFT) & 7 {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        _ => 48,
    }
}

/// What the table descriptors above a leaf contributed, and the output-address limits: enough to
/// decode the other entries of the same last-level table exactly as a full walk would.
#[derive(Clone, Copy)]
struct LeafCtx {
    /// The last-level table and the index of the leaf the walk found in it.
    table: u64,
    idx: u64,
    oa_mask: u64,
    pa_limit: u64,
    no_el0: bool,
    read_only: bool,
    pxn: bool,
    uxn: bool,
}

/// Decode the leaf descriptor `d` found at `level` (shift = its size's log2) as the walk does.
/// Inlined: in `translate_span`'s loop only the address and the errors are used.
#[inline(always)]
fn leaf(
    d: u64,
    level: u8,
    shift: u32,
    c: &LeafCtx,
    va: u64,
    gva: GuestVirtAddr,
) -> Result<Translation<Arm64Perms>, WalkError> {
    if d & VALID == 0 {
        return Err(WalkError::NotPresent { level, gva });
    }
    let is_table = d & TABLE != 0;
    if level == 3 && !is_table {
        // Descriptor type 0b01 at level 3 is reserved: treated as invalid.
        return Err(WalkError::NotPresent { level, gva });
    }
    if level == 0 {
        // No level-0 blocks with the 4 KiB granule unless LPA2.
        return Err(WalkError::Reserved { level, entry: d });
    }
    let size = 1u64.checked_shl(shift).unwrap_or(0);
    let oa = d & c.oa_mask & !low_mask(shift);
    if oa & !c.pa_limit != 0 {
        return Err(WalkError::AddressSize { level, entry: d });
    }
    let mut ap = u8::try_from((d >> AP_SHIFT) & 3).unwrap_or(0b11);
    if c.read_only {
        ap |= 0b10;
    }
    if c.no_el0 {
        ap &= !0b01;
    }
    let perms = Arm64Perms {
        ap,
        pxn: c.pxn || d & PXN != 0,
        uxn: c.uxn || d & UXN != 0,
        af: d & AF != 0,
    };
    Ok(Translation {
        gpa: GuestPhysAddr::new(oa | (va & low_mask(shift))),
        page_size: size,
        perms,
    })
}

impl Arm64Walker {
    /// The walk; for a level-3 (4 KiB page) leaf also the context to decode its neighbours.
    fn walk<M: GuestMemRead + ?Sized>(
        &self,
        mem: &M,
        gva: GuestVirtAddr,
    ) -> Result<(Translation<Arm64Perms>, Option<LeafCtx>), WalkError> {
        let r = &self.regs;
        let va = gva.as_u64();
        if r.sctlr_el1 & SCTLR_M == 0 {
            return Ok((
                Translation {
                    gpa: GuestPhysAddr::new(va),
                    page_size: 4096,
                    perms: Arm64Perms::FLAT,
                },
                None,
            ));
        }
        let tcr = r.tcr_el1;
        // VA[55] selects the half (also when top-byte-ignore is on).
        let upper = (va >> 55) & 1 != 0;
        let (tsz, granule_kib, epd, tbi, hpd, ttbr) = if upper {
            let tg1 = match (tcr >> TCR_TG1_SHIFT) & 3 {
                1 => 16,
                2 => 4,
                3 => 64,
                _ => 0,
            };
            (
                (tcr >> TCR_T1SZ_SHIFT) & 0x3f,
                tg1,
                tcr & TCR_EPD1 != 0,
                tcr & TCR_TBI1 != 0,
                tcr & TCR_HPD1 != 0,
                r.ttbr1_el1,
            )
        } else {
            let tg0 = match (tcr >> TCR_TG0_SHIFT) & 3 {
                0 => 4,
                1 => 64,
                2 => 16,
                _ => 0,
            };
            (
                (tcr >> TCR_T0SZ_SHIFT) & 0x3f,
                tg0,
                tcr & TCR_EPD0 != 0,
                tcr & TCR_TBI0 != 0,
                tcr & TCR_HPD0 != 0,
                r.ttbr0_el1,
            )
        };
        if granule_kib != 4 {
            return Err(WalkError::UnsupportedGranule { kib: granule_kib });
        }
        if tcr & TCR_DS != 0 {
            return Err(WalkError::Unsupported("LPA2 (TCR_EL1.DS = 1)"));
        }
        if !(16..=39).contains(&tsz) {
            return Err(WalkError::Unsupported("TxSZ outside 16..=39"));
        }
        // 25..=48 after the check above.
        let va_bits = 64u32.saturating_sub(u32::try_from(tsz).unwrap_or(64));
        // Bits [top:va_bits] must all equal VA[55]; with TBI the top byte is not checked.
        let top = if tbi { 56 } else { 64 };
        let hi = bit_range(va_bits, top);
        let expect = if upper { hi } else { 0 };
        if va & hi != expect {
            return Err(WalkError::OutsideVaRange { gva });
        }
        if epd {
            return Err(WalkError::WalkDisabled { gva });
        }
        let pa_bits = pa_bits(tcr);
        // Bits 47:12 hold addresses; 51:48 are RES0 in table descriptors and GP/DBM/RES0 in
        // leaves with the 4 KiB granule (no LPA2): never address bits here.
        let oa_mask = bit_range(12, 48);
        let pa_limit = low_mask(pa_bits);

        // Start level: the level whose index field holds VA bit va_bits - 1.
        let mut level: u8 = if va_bits > 39 {
            0
        } else if va_bits > 30 {
            1
        } else {
            2
        };
        let shift_of = |level: u8| -> u32 {
            12u32.saturating_add(9u32.saturating_mul(3u32.saturating_sub(u32::from(level))))
        };
        // The start table holds 2^(va_bits - shift) entries and is aligned to its size (at least
        // 64 bytes); BADDR bits below that are RES0 and ignored.
        let start_entries_bits = va_bits.saturating_sub(shift_of(level));
        let table_align = low_mask(start_entries_bits.saturating_add(3).max(6));
        let baddr = ttbr & bit_range(1, 48);
        if ttbr & bit_range(pa_bits, 48) != 0 {
            return Err(WalkError::AddressSize { level, entry: ttbr });
        }
        let mut table = baddr & !table_align;

        let mut c = LeafCtx {
            table: 0,
            idx: 0,
            oa_mask,
            pa_limit,
            no_el0: false,
            read_only: false,
            pxn: false,
            uxn: false,
        };
        loop {
            let shift = shift_of(level);
            let idx_bits = if shift.saturating_add(9) > va_bits {
                va_bits.saturating_sub(shift)
            } else {
                9
            };
            let idx = va.checked_shr(shift).unwrap_or(0) & low_mask(idx_bits);
            let d = read_entry64(mem, table, idx, level)?;
            if d & VALID == 0 {
                return Err(WalkError::NotPresent { level, gva });
            }
            let is_table = d & TABLE != 0;
            if level < 3 && is_table {
                let next = d & oa_mask;
                if next & !pa_limit != 0 {
                    return Err(WalkError::AddressSize { level, entry: d });
                }
                if !hpd {
                    c.pxn |= d & PXN_TABLE != 0;
                    c.uxn |= d & UXN_TABLE != 0;
                    c.no_el0 |= d & AP_TABLE_NO_EL0 != 0;
                    c.read_only |= d & AP_TABLE_RO != 0;
                }
                table = next;
                level = level.saturating_add(1);
                continue;
            }
            let t = leaf(d, level, shift, &c, va, gva)?;
            c.table = table;
            c.idx = idx;
            return Ok((t, (level == 3).then_some(c)));
        }
    }
}

impl GuestWalker for Arm64Walker {
    type Perms = Arm64Perms;

    fn translate<M: GuestMemRead + ?Sized>(
        &self,
        mem: &M,
        gva: GuestVirtAddr,
    ) -> Result<Translation<Arm64Perms>, WalkError> {
        self.walk(mem, gva).map(|(t, _)| t)
    }

    /// After a 4 KiB page, the following entries of the same level-3 table are decoded in
    /// place (the tables above are the same for them): the span goes on while each next entry
    /// decodes without error to the next physical page. The first entry that does not ends it;
    /// the caller's next walk then starts there and reports what a full walk reports.
    fn translate_span<M: GuestMemRead + ?Sized>(
        &self,
        mem: &M,
        gva: GuestVirtAddr,
        last: u64,
    ) -> Result<(Translation<Arm64Perms>, u64), WalkError> {
        let (t, ctx) = self.walk(mem, gva)?;
        let cur = gva.as_u64();
        let first_m1 = (t.page_size.max(4096) - 1) & !cur;
        let mut end_m1 = cur.saturating_add(first_m1.min(last.saturating_sub(cur)));
        if let Some(c) = ctx {
            let mut idx = c.idx;
            let mut page = t.gpa.as_u64() & !0xfff;
            while end_m1 < last && idx < 511 {
                idx += 1;
                let Some(va) = end_m1.checked_add(1) else {
                    break;
                };
                let Ok(d) = read_entry64(mem, c.table, idx, 3) else {
                    break;
                };
                let next = match leaf(d, 3, 12, &c, va, GuestVirtAddr::new(va)) {
                    Ok(n) => n.gpa.as_u64(),
                    Err(_) => break,
                };
                if Some(next) != page.checked_add(4096) {
                    break;
                }
                page = next;
                end_m1 = va.saturating_add(4095).min(last);
            }
        }
        Ok((t, end_m1 - cur))
    }
}
