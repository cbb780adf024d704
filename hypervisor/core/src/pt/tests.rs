//! Unit tests of the page-table engine over fake memory. The checks read raw descriptor bits
//! with their own decoding, not with the formats' `decode`.

use super::ept::Ept;
use super::sppt::{SppVector, Sppt, STORE_REACH};
use super::stage2::{Stage2, Stage2Config};
use super::*;
use crate::physmem::FakePhysMem;

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;

fn gpa(a: u64) -> GuestPhysAddr {
    GuestPhysAddr::new(a)
}
fn hpa(a: u64) -> HostPhysAddr {
    HostPhysAddr::new(a)
}

/// Raw EPT walk: (leaf raw, level) for `a`.
fn ept_raw(mem: &FakePhysMem, root: u64, a: u64) -> Option<(u64, u8)> {
    let mut t = root;
    for level in (0..=3u8).rev() {
        let e = mem.read_u64(hpa(t + ((a >> (12 + 9 * level as u32)) & 511) * 8));
        if e & 7 == 0 {
            return None;
        }
        if level == 0 || e & (1 << 7) != 0 {
            return Some((e, level));
        }
        t = e & 0x000f_ffff_ffff_f000;
    }
    None
}

fn snapshot(mem: &FakePhysMem, root: u64) -> Vec<(u64, u64)> {
    // Every non-zero word of every frame reachable from the root (EPT layout).
    let mut out = Vec::new();
    fn rec(mem: &FakePhysMem, t: u64, level: u8, out: &mut Vec<(u64, u64)>) {
        for i in 0..512 {
            let e = mem.read_u64(hpa(t + i * 8));
            if e != 0 {
                out.push((t + i * 8, e));
                if level > 0 && e & 7 != 0 && e & (1 << 7) == 0 {
                    rec(mem, e & 0x000f_ffff_ffff_f000, level - 1, out);
                }
            }
        }
    }
    rec(mem, root, 3, &mut out);
    out
}

#[test]
fn ept_uses_largest_leaves() {
    let mut mem = FakePhysMem::new();
    let mut tlb = RecordingFlush::default();
    let mut ept = Ept::<false>::new_ept(&mut mem, true).unwrap();
    let inv = ept
        .map(
            &mut mem,
            gpa(0),
            2 * GIB,
            hpa(0),
            LeafAttrs::ram(Perms::RWX),
            &mut tlb,
        )
        .unwrap();
    assert!(!inv.is_needed(), "filling empty entries needs no flush");
    assert!(tlb.calls.is_empty());
    assert_eq!(ept.stats().table_pages, 2); // PML4 + PDPT
    let (raw, level) = ept_raw(&mem, ept.root().as_u64(), 0x1234_5000).unwrap();
    assert_eq!(level, 2);
    assert_eq!(raw & 7, 7);
    assert_eq!((raw >> 3) & 7, 6, "WB");
    assert_eq!(ept.eptp() & 0xfff, 0x1e);
    assert_eq!(ept.eptp() & !0xfff, ept.root().as_u64());

    // Without 1 GiB pages: 2 MiB leaves.
    let mut ept2 = Ept::<false>::new_ept(&mut mem, false).unwrap();
    ept2.map(
        &mut mem,
        gpa(0),
        2 * GIB,
        hpa(0),
        LeafAttrs::ram(Perms::RWX),
        &mut tlb,
    )
    .unwrap();
    assert_eq!(ept2.stats().table_pages, 4);
    assert_eq!(ept_raw(&mem, ept2.root().as_u64(), GIB + 5).unwrap().1, 1);

    // gpa and hpa not congruent modulo 2 MiB: 4 KiB leaves only.
    let mut ept3 = Ept::<false>::new_ept(&mut mem, true).unwrap();
    ept3.map(
        &mut mem,
        gpa(MIB2),
        MIB2,
        hpa(0x5000),
        LeafAttrs::mmio(Perms::RW),
        &mut tlb,
    )
    .unwrap();
    let (raw, level) = ept_raw(&mem, ept3.root().as_u64(), MIB2 + 0x3000).unwrap();
    assert_eq!(level, 0);
    assert_eq!(raw & 0x000f_ffff_ffff_f000, 0x8000);
    assert_eq!((raw >> 3) & 7, 0, "UC");
    assert_eq!(raw & 7, 3);
    assert_eq!(ept3.stats().table_pages, 4);
}

#[test]
fn ept_splits_only_where_needed_and_merges_back() {
    let mut mem = FakePhysMem::new();
    let mut tlb = RecordingFlush::default();
    let mut ept = Ept::<false>::new_ept(&mut mem, true).unwrap();
    ept.map(
        &mut mem,
        gpa(0),
        GIB,
        hpa(0),
        LeafAttrs::ram(Perms::RWX),
        &mut tlb,
    )
    .unwrap();
    assert_eq!(ept.stats().table_pages, 2);
    // Read-only page in the middle: 1G -> 2M table -> 4K table.
    let inv = ept
        .map(
            &mut mem,
            gpa(0x40_3000),
            0x1000,
            hpa(0x40_3000),
            LeafAttrs::ram(Perms::RX),
            &mut tlb,
        )
        .unwrap();
    assert!(inv.is_needed());
    assert!(inv.range.unwrap().contains(gpa(0x40_3000)));
    assert_eq!(tlb.calls.len(), 1);
    assert_eq!(ept.stats().table_pages, 4);
    assert_eq!(
        ept_raw(&mem, ept.root().as_u64(), 0x40_3000).unwrap().0 & 7,
        5
    );
    assert_eq!(
        ept_raw(&mem, ept.root().as_u64(), 0x40_4000).unwrap().0 & 7,
        7
    );
    assert_eq!(ept_raw(&mem, ept.root().as_u64(), 0x40_4000).unwrap().1, 0);
    // Other 2 MiB regions stay large.
    assert_eq!(ept_raw(&mem, ept.root().as_u64(), 0x80_0000).unwrap().1, 1);
    // Same permission again: no-op, no flush.
    let inv = ept
        .map(
            &mut mem,
            gpa(0x40_3000),
            0x1000,
            hpa(0x40_3000),
            LeafAttrs::ram(Perms::RX),
            &mut tlb,
        )
        .unwrap();
    assert!(!inv.is_needed());
    assert_eq!(tlb.calls.len(), 1);
    // Restore: merges back into one 1 GiB leaf and frees both tables after the flush.
    ept.map(
        &mut mem,
        gpa(0),
        GIB,
        hpa(0),
        LeafAttrs::ram(Perms::RWX),
        &mut tlb,
    )
    .unwrap();
    assert_eq!(ept.stats().table_pages, 2);
    assert_eq!(mem.allocated(), 2);
    assert_eq!(ept_raw(&mem, ept.root().as_u64(), 0x40_3000).unwrap().1, 2);
    assert_eq!(mem.bad_frees, 0);
    assert_eq!(mem.stray_accesses, 0);
}

#[test]
fn ept_unmap_and_translate() {
    let mut mem = FakePhysMem::new();
    let mut tlb = RecordingFlush::default();
    let mut ept = Ept::<false>::new_ept(&mut mem, true).unwrap();
    ept.map(
        &mut mem,
        gpa(0),
        8 * MIB2,
        hpa(0x1000_0000),
        LeafAttrs::ram(Perms::RW),
        &mut tlb,
    )
    .unwrap();
    let inv = ept.unmap(&mut mem, gpa(MIB2), 0x1000, &mut tlb).unwrap();
    // The 2 MiB leaf was split: its whole range may be cached.
    assert_eq!(inv.range, GpaRange::new(gpa(MIB2), MIB2));
    assert!(ept.translate(&mem, gpa(MIB2)).is_none());
    let (m, level) = ept.translate(&mem, gpa(MIB2 + 0x1000)).unwrap();
    assert_eq!((m.hpa, level), (hpa(0x1000_0000 + MIB2 + 0x1000), 0));
    let (m, level) = ept.translate(&mem, gpa(3 * MIB2 + 0x7000)).unwrap();
    assert_eq!((m.hpa, level), (hpa(0x1000_0000 + 3 * MIB2 + 0x7000), 1));
    assert!(ept.translate(&mem, gpa(1 << 48)).is_none());
    ept.destroy(&mut mem);
    assert_eq!(mem.allocated(), 0);
    assert_eq!(mem.bad_frees, 0);
}

#[test]
fn ept_refuses_bad_input_without_change() {
    let mut mem = FakePhysMem::new();
    let mut tlb = RecordingFlush::default();
    let mut ept = Ept::<false>::new_ept(&mut mem, true).unwrap();
    ept.map(
        &mut mem,
        gpa(0),
        GIB,
        hpa(0),
        LeafAttrs::ram(Perms::RWX),
        &mut tlb,
    )
    .unwrap();
    let before = snapshot(&mem, ept.root().as_u64());
    let a = LeafAttrs::ram(Perms::RWX);
    assert_eq!(
        ept.map(&mut mem, gpa(0x10), 0x1000, hpa(0), a, &mut tlb),
        Err(PtError::Unaligned)
    );
    assert_eq!(
        ept.map(&mut mem, gpa(0), 0x10, hpa(0), a, &mut tlb),
        Err(PtError::Unaligned)
    );
    assert_eq!(
        ept.map(&mut mem, gpa(0), 0, hpa(0), a, &mut tlb),
        Err(PtError::Unaligned)
    );
    assert_eq!(
        ept.map(&mut mem, gpa(u64::MAX - 0xfff), 0x2000, hpa(0), a, &mut tlb),
        Err(PtError::Unaligned)
    );
    assert_eq!(
        ept.map(&mut mem, gpa(1 << 48), 0x1000, hpa(0), a, &mut tlb),
        Err(PtError::OutOfRange)
    );
    assert_eq!(
        ept.map(&mut mem, gpa(0), 0x1000, hpa(0x123), a, &mut tlb),
        Err(PtError::BadOutput(hpa(0x123)))
    );
    assert_eq!(
        ept.map(&mut mem, gpa(0), 0x1000, hpa(1 << 52), a, &mut tlb),
        Err(PtError::BadOutput(hpa(1 << 52)))
    );
    // Write without read; execute-only without support; SPP on a writable page.
    for attrs in [
        LeafAttrs::ram(Perms::W),
        LeafAttrs::ram(Perms::X),
        LeafAttrs::ram(Perms::NONE),
        LeafAttrs {
            spp: true,
            ..LeafAttrs::ram(Perms::RW)
        },
        LeafAttrs {
            spp: true,
            ..LeafAttrs::ram(Perms::X)
        },
    ] {
        assert_eq!(
            ept.map(&mut mem, gpa(0x5000), 0x1000, hpa(0x5000), attrs, &mut tlb),
            Err(PtError::Unrepresentable(attrs)),
            "{attrs:?}"
        );
    }
    assert_eq!(snapshot(&mem, ept.root().as_u64()), before);
    assert_eq!(mem.allocated(), 2);
    assert!(tlb.calls.is_empty());

    // Execute-only where the CPU supports it.
    let mut xo = Ept::<true>::new_ept(&mut mem, true).unwrap();
    xo.map(
        &mut mem,
        gpa(0),
        0x1000,
        hpa(0),
        LeafAttrs::ram(Perms::X),
        &mut tlb,
    )
    .unwrap();
    assert_eq!(ept_raw(&mem, xo.root().as_u64(), 0).unwrap().0 & 7, 4);
}

#[test]
fn ept_spp_only_on_4k_readonly_leaves() {
    let mut mem = FakePhysMem::new();
    let mut tlb = RecordingFlush::default();
    let mut ept = Ept::<false>::new_ept(&mut mem, true).unwrap();
    let spp = LeafAttrs {
        spp: true,
        ..LeafAttrs::ram(Perms::RX)
    };
    // A 2 MiB aligned range asked with SPP: must become 4 KiB leaves.
    ept.map(&mut mem, gpa(MIB2), MIB2, hpa(MIB2), spp, &mut tlb)
        .unwrap();
    let (raw, level) = ept_raw(&mem, ept.root().as_u64(), MIB2 + 0x1000).unwrap();
    assert_eq!(level, 0);
    assert_ne!(raw & (1 << 61), 0);
    assert_eq!(raw & 7, 5);
}

#[test]
fn out_of_frames_leaves_tables_unchanged() {
    let mut mem = FakePhysMem::with_limit(4);
    let mut tlb = RecordingFlush::default();
    let mut ept = Ept::<false>::new_ept(&mut mem, true).unwrap();
    ept.map(
        &mut mem,
        gpa(0),
        GIB,
        hpa(0),
        LeafAttrs::ram(Perms::RWX),
        &mut tlb,
    )
    .unwrap();
    let before = snapshot(&mem, ept.root().as_u64());
    assert_eq!(mem.allocated(), 2);
    mem.set_limit(Some(3)); // room for one more table, the split needs two
    assert_eq!(
        ept.map(
            &mut mem,
            gpa(0x3000),
            0x1000,
            hpa(0x3000),
            LeafAttrs::ram(Perms::R),
            &mut tlb
        ),
        Err(PtError::OutOfFrames)
    );
    assert_eq!(snapshot(&mem, ept.root().as_u64()), before);
    assert_eq!(mem.allocated(), 2);
    assert_eq!(ept.stats().table_pages, 2);
    assert!(tlb.calls.is_empty());
    mem.set_limit(Some(4));
    ept.map(
        &mut mem,
        gpa(0x3000),
        0x1000,
        hpa(0x3000),
        LeafAttrs::ram(Perms::R),
        &mut tlb,
    )
    .unwrap();
    assert_eq!(ept.stats().table_pages, 4);
    assert_eq!(mem.allocated(), 4);
    // Root allocation failure.
    assert!(matches!(
        Ept::<false>::new_ept(&mut mem, true),
        Err(PtError::OutOfFrames)
    ));
}

#[test]
fn stage2_config_and_registers() {
    let c = Stage2Config::from_parange(5).unwrap();
    assert_eq!((c.ipa_bits, c.root_level, c.ps), (48, 3, 5));
    assert_eq!(c.vtcr() & 0x3f, 16);
    assert_eq!((c.vtcr() >> 6) & 3, 0b10);
    assert_eq!((c.vtcr() >> 14) & 3, 0, "4K granule");
    assert_eq!((c.vtcr() >> 16) & 7, 5);
    assert_ne!(c.vtcr() & (1 << 31), 0);
    let c = Stage2Config::from_parange(2).unwrap();
    assert_eq!((c.ipa_bits, c.root_level, c.ps), (39, 2, 2));
    assert_eq!(c.vtcr() & 0x3f, 25);
    assert_eq!((c.vtcr() >> 6) & 3, 0b01);
    let c = Stage2Config::from_parange(6).unwrap();
    assert_eq!((c.ipa_bits, c.ps), (48, 5));
    assert_eq!(
        Stage2Config::from_parange(7),
        Err(super::stage2::UnknownPaRange(7))
    );

    let mut mem = FakePhysMem::new();
    let s2 = Stage2::new_stage2(&mut mem, Stage2Config::from_parange(4).unwrap()).unwrap();
    assert_eq!(s2.vttbr(3), s2.root().as_u64() | (3 << 48));
}

fn s2_raw(mem: &FakePhysMem, root: u64, root_level: u8, a: u64) -> Option<(u64, u8)> {
    let mut t = root;
    for level in (0..=root_level).rev() {
        let e = mem.read_u64(hpa(t + ((a >> (12 + 9 * level as u32)) & 511) * 8));
        if e & 1 == 0 {
            return None;
        }
        if level == 0 || e & 2 == 0 {
            return Some((e, level));
        }
        t = e & 0x0000_ffff_ffff_f000;
    }
    None
}

#[test]
fn stage2_descriptors_and_break_before_make() {
    let mut mem = FakePhysMem::new();
    let mut tlb = RecordingFlush::default();
    let cfg = Stage2Config::from_parange(2).unwrap();
    let mut s2 = Stage2::new_stage2(&mut mem, cfg).unwrap();
    // Guest RAM IPA 0x4000_0000 -> PA 0x4800_0000 (linear offset), 1 GiB.
    s2.map(
        &mut mem,
        gpa(GIB),
        GIB,
        hpa(GIB + 0x800_0000),
        LeafAttrs::ram(Perms::RWX),
        &mut tlb,
    )
    .unwrap();
    // Offset is 128 MiB: 2 MiB blocks, not 1 GiB.
    let root = s2.root().as_u64();
    let (raw, level) = s2_raw(&mem, root, 2, GIB + 0x1000).unwrap();
    assert_eq!(level, 1);
    assert_eq!(raw & 3, 0b01, "block");
    assert_eq!(raw & 0x0000_ffff_ffff_f000, GIB + 0x800_0000);
    assert_eq!((raw >> 2) & 0xf, 0xf, "normal WB");
    assert_eq!((raw >> 6) & 3, 3, "S2AP RW");
    assert_eq!((raw >> 8) & 3, 3, "inner shareable");
    assert_ne!(raw & (1 << 10), 0, "AF");
    assert_eq!(raw & (1 << 54), 0, "executable");
    // Device page.
    s2.map(
        &mut mem,
        gpa(0x0900_0000),
        0x1000,
        hpa(0x0900_0000),
        LeafAttrs::mmio(Perms::RW),
        &mut tlb,
    )
    .unwrap();
    let (raw, level) = s2_raw(&mem, root, 2, 0x0900_0000).unwrap();
    assert_eq!(level, 0);
    assert_eq!(raw & 3, 0b11, "page");
    assert_eq!((raw >> 2) & 0xf, 0b0001, "device nGnRE");
    assert_ne!(raw & (1 << 54), 0, "XN");
    assert!(tlb.calls.is_empty());
    // Read-only page inside a block: the block is broken (flush) before the table is made.
    let inv = s2
        .map(
            &mut mem,
            gpa(GIB + 0x5000),
            0x1000,
            hpa(GIB + 0x800_5000),
            LeafAttrs::ram(Perms::RX),
            &mut tlb,
        )
        .unwrap();
    assert!(inv.is_needed());
    assert_eq!(
        tlb.calls.len(),
        2,
        "break-before-make flush, then the final flush"
    );
    assert_eq!(tlb.calls[0], GpaRange::new(gpa(GIB), MIB2).unwrap());
    assert_eq!(
        tlb.blocks,
        [tlb.calls[0]],
        "the block is flushed as one entry"
    );
    assert_eq!(
        tlb.calls[1],
        GpaRange::new(gpa(GIB + 0x5000), 0x1000).unwrap(),
        "the final flush covers only what changed after the break"
    );
    // Every child of the split block maps its own 4 KiB of the block (none left unwritten in
    // the frame, which the fake fills with garbage).
    for i in 0..512u64 {
        let (raw, level) = s2_raw(&mem, root, 2, GIB + i * 0x1000).unwrap();
        assert_eq!(level, 0);
        assert_eq!(raw & 0x0000_ffff_ffff_f000, GIB + 0x800_0000 + i * 0x1000);
    }
    let (raw, level) = s2_raw(&mem, root, 2, GIB + 0x5000).unwrap();
    assert_eq!((level, (raw >> 6) & 3), (0, 1));
    // Stage 2 refuses execute-only and SPP.
    for attrs in [
        LeafAttrs::ram(Perms::X),
        LeafAttrs {
            spp: true,
            ..LeafAttrs::ram(Perms::R)
        },
    ] {
        assert_eq!(
            s2.map(&mut mem, gpa(GIB), 0x1000, hpa(GIB), attrs, &mut tlb),
            Err(PtError::Unrepresentable(attrs))
        );
    }
    // 39-bit IPA space.
    assert_eq!(
        s2.map(
            &mut mem,
            gpa(1 << 39),
            0x1000,
            hpa(0),
            LeafAttrs::ram(Perms::R),
            &mut tlb
        ),
        Err(PtError::OutOfRange)
    );
}

#[test]
fn sppt_paths_vectors_and_failure() {
    let mut mem = FakePhysMem::new();
    let mut sppt = Sppt::new(&mut mem).unwrap();
    assert_eq!(sppt.spptp(), sppt.spptp() & !0xfff);
    assert_eq!(sppt.get(&mem, gpa(0x5000)), None, "SPPT miss");
    let v = SppVector::from_writable_mask(0b101);
    assert_eq!(v.raw(), 0b10001);
    sppt.set(
        &mut mem,
        &[(gpa(0x5000), v), (gpa(0x6000), SppVector::default())],
    )
    .unwrap();
    assert_eq!(sppt.table_pages(), 4);
    assert_eq!(sppt.get(&mem, gpa(0x5000)), Some(v));
    assert_eq!(sppt.get(&mem, gpa(0x6000)), Some(SppVector::default()));
    assert_eq!(sppt.get(&mem, gpa(0x7000)), Some(SppVector::default()));
    assert_eq!(sppt.get(&mem, gpa(GIB)), None);
    // Odd bits are always zero.
    let all = SppVector::from_writable_mask(u32::MAX);
    assert_eq!(all.raw() & 0xaaaa_aaaa_aaaa_aaaa, 0);
    assert_eq!(all.raw(), 0x5555_5555_5555_5555);
    // Protected bytes -> vector.
    let mut bits = [0u64; 64];
    bits[2] = 1 << 63; // byte 191: sub-page 1
    bits[63] = 1; // byte 4032: sub-page 31
    let v = SppVector::from_protected_bytes(&bits);
    assert!(v.writable(0) && !v.writable(1) && v.writable(2) && !v.writable(31));
    // Byte 4032 is offset 64 of sub-page 31: beyond the reach of a store from sub-page 30.
    assert!(v.writable(30));
    bits[62] = 1; // byte 3968: the first of sub-page 31, which a store from sub-page 30 can reach
    let v = SppVector::from_protected_bytes(&bits);
    assert!(!v.writable(30) && v.writable(29) && !v.writable(31));
    // A protected byte within the first 63 bytes of a sub-page makes the one before it
    // non-writable; one at offset 63 or later does not (byte 191 is offset 63 of sub-page 1).
    let mut bits = [0u64; 64];
    bits[6] = 1 << 62; // byte 446: sub-page 3, offset 62
    let v = SppVector::from_protected_bytes(&bits);
    assert!(v.writable(1) && !v.writable(2) && !v.writable(3) && v.writable(4));
    // A longer reach (FXSAVE: 512 bytes): every sub-page whose 128 + 511 bytes hold byte 446.
    let r = SppVector::from_protected_bytes_reach(&bits, 511);
    assert!((0..4).all(|i| !r.writable(i)) && (4..32).all(|i| r.writable(i)));
    // Reach 0: only the sub-page itself; the page end bounds any reach.
    let r = SppVector::from_protected_bytes_reach(&bits, 0);
    assert!(r.writable(2) && !r.writable(3));
    let r = SppVector::from_protected_bytes_reach(&bits, u32::MAX);
    assert!((0..4).all(|i| !r.writable(i)) && r.writable(4));
    // The default equals reach STORE_REACH, for random maps.
    let mut x = 0x1234_5678_9abc_def1u64;
    for _ in 0..200 {
        let mut b = [0u64; 64];
        for w in b.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *w = if x.is_multiple_of(7) {
                x & (x >> 11) & (x >> 23)
            } else {
                0
            };
        }
        // The word-wise rule: sub-page i and the first STORE_REACH bytes of sub-page i + 1.
        let head = |j: usize| b.get(2 * j).map_or(0, |w| w & ((1u64 << STORE_REACH) - 1));
        let mut mask = 0u32;
        for (i, pair) in b.chunks_exact(2).enumerate() {
            if pair.iter().all(|w| *w == 0) && head(i + 1) == 0 {
                mask |= 1 << i;
            }
        }
        assert_eq!(
            SppVector::from_writable_mask(mask),
            SppVector::from_protected_bytes_reach(&b, STORE_REACH)
        );
    }
    // Failure leaves the table unchanged.
    mem.set_limit(Some(mem.allocated() + 1));
    let before = mem.allocated();
    assert!(sppt.set(&mut mem, &[(gpa(1 << 40), v)]).is_err());
    assert_eq!(mem.allocated(), before);
    assert_eq!(sppt.get(&mem, gpa(1 << 40)), None);
    assert!(sppt.set(&mut mem, &[(gpa(0x123), v)]).is_err());
    mem.set_limit(None);
    sppt.destroy(&mut mem);
    assert_eq!(mem.allocated(), 0);
}

/// Raw walk of a stage-1 table (levels from `root_level`).
fn s1_raw(mem: &FakePhysMem, root: u64, root_level: u8, a: u64) -> Option<(u64, u8)> {
    s2_raw(mem, root, root_level, a)
}

#[test]
fn stage1_descriptors() {
    use super::stage1::*;
    let mut mem = FakePhysMem::new();
    let mut tlb = RecordingFlush::default();
    let mut t = Stage1::new_stage1(&mut mem, 48).unwrap();
    assert_eq!(t.root_level(), 3);
    assert_eq!(Stage1::new_stage1(&mut mem, 39).unwrap().root_level(), 2);
    // IPA 1 GiB -> PA 1 GiB + 32 MiB, read/write: 2 MiB blocks.
    t.map(
        &mut mem,
        gpa(GIB),
        GIB,
        hpa(GIB + 0x200_0000),
        LeafAttrs::ram(Perms::RW),
        &mut tlb,
    )
    .unwrap();
    let root = t.root().as_u64();
    let (raw, level) = s1_raw(&mem, root, 3, GIB + 0x1000).unwrap();
    assert_eq!(level, 1);
    assert_eq!(raw & 3, 0b01, "block");
    assert_eq!(raw & S1_ADDR_MASK, GIB + 0x200_0000);
    assert_eq!(raw & (0b111 << 2), 0, "AttrIndx 0 = Normal WB");
    assert_eq!(raw & (0b11 << 6), 1 << 6, "AP = read/write, any privilege");
    assert_eq!(raw & (0b11 << 8), 0b11 << 8, "inner shareable");
    assert_ne!(raw & (1 << 10), 0, "AF");
    assert_eq!(raw & (0b11 << 53), 0b11 << 53, "PXN and UXN");
    // One page read-only: split down to a 4 KiB page with AP[2] set.
    t.map(
        &mut mem,
        gpa(GIB + 0x5000),
        0x1000,
        hpa(GIB + 0x200_5000),
        LeafAttrs::ram(Perms::R),
        &mut tlb,
    )
    .unwrap();
    let (raw, level) = s1_raw(&mem, root, 3, GIB + 0x5000).unwrap();
    assert_eq!(level, 0);
    assert_eq!(raw & 3, 0b11, "page");
    assert_eq!(raw & (0b11 << 6), 0b11 << 6, "AP = read-only");
    let (m, _) = t.translate(&mem, gpa(GIB + 0x5000)).unwrap();
    assert_eq!(m.attrs.perms, Perms::R);
    let (m, _) = t.translate(&mem, gpa(GIB + 0x6000)).unwrap();
    assert_eq!((m.hpa, m.attrs.perms), (hpa(GIB + 0x200_6000), Perms::RW));
    // Device memory: AttrIndx 1.
    t.map(
        &mut mem,
        gpa(0x900_0000),
        0x1000,
        hpa(0x900_0000),
        LeafAttrs::mmio(Perms::RW),
        &mut tlb,
    )
    .unwrap();
    let (raw, _) = s1_raw(&mem, root, 3, 0x900_0000).unwrap();
    assert_eq!((raw >> 2) & 0b111, S1_ATTR_DEVICE);
    assert_eq!(MAIR & 0xff, 0xff);
    assert_eq!((MAIR >> 8) & 0xff, 0x04);
    // Stage 1 cannot say "no read": write-only and none are refused, tables unchanged.
    let before = snapshot_s1(&mem, root);
    for p in [Perms::W, Perms::NONE.union(Perms::X)] {
        assert_eq!(
            t.map(
                &mut mem,
                gpa(GIB),
                0x1000,
                hpa(GIB),
                LeafAttrs::ram(p),
                &mut tlb
            ),
            Err(PtError::Unrepresentable(LeafAttrs::ram(p)))
        );
    }
    assert_eq!(before, snapshot_s1(&mem, root));
    // Break-before-make: changing a valid page's output flushes before the new entry.
    tlb.calls.clear();
    t.map(
        &mut mem,
        gpa(GIB + 0x5000),
        0x1000,
        hpa(0x7000_0000),
        LeafAttrs::ram(Perms::R),
        &mut tlb,
    )
    .unwrap();
    assert!(!tlb.calls.is_empty());
    // Unmapping leaves no valid entry.
    t.unmap(&mut mem, gpa(GIB), GIB, &mut tlb).unwrap();
    assert!(t.translate(&mem, gpa(GIB + 0x5000)).is_none());
}

fn snapshot_s1(mem: &FakePhysMem, root: u64) -> Vec<u64> {
    (0..512).map(|i| mem.read_u64(hpa(root + i * 8))).collect()
}

/// A split encodes the first child and adds the child size: that equals encoding each child,
/// for every attribute combination either format accepts, at both split levels.
#[test]
fn split_stride_equals_per_child_encoding() {
    use super::ept::EptFormat;
    use super::stage2::Stage2Format;
    fn check<F: Format>() {
        let mut tried = 0;
        for bits in 0..8u8 {
            for mem in [MemType::WriteBack, MemType::Uncached] {
                let attrs = LeafAttrs {
                    perms: Perms::from_bits_truncate(bits),
                    mem,
                    spp: false,
                };
                for child_level in [0u8, 1] {
                    let child = level_size(child_level);
                    let base = hpa(0x7f_c000_0000);
                    let m = |i: u64| Mapping {
                        hpa: hpa(base.as_u64() + i * child),
                        attrs,
                    };
                    let Ok(first) = F::encode_leaf(child_level, &m(0)) else {
                        continue;
                    };
                    tried += 1;
                    for i in [1u64, 2, 255, 511] {
                        assert_eq!(
                            F::encode_leaf(child_level, &m(i)),
                            Ok(first + i * child),
                            "{attrs:?} level {child_level} child {i}"
                        );
                    }
                }
            }
        }
        assert!(tried >= 8);
    }
    check::<EptFormat<true>>();
    check::<EptFormat<false>>();
    check::<Stage2Format>();
}
