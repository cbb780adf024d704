//! Model-based property test of the whole protection engine.
//!
//! Random sequences of operations (ROE page and chunk protection through the hypercall
//! dispatcher, host attributes, MMIO-guard enrol/map/unmap, ranges that split 1 GiB and 2 MiB
//! leaves) run against `bulwark_core::guest::Guest`; after every operation the range it
//! reports is re-derived into EPT (+SPPT) or stage-2 tables over fake memory, exactly as a back
//! end does. At the end an independent walker in this file decodes the raw table bits (its own
//! decoding, not the engine's) and compares the effective permission of every byte with a plain
//! reference model (sets and maps, no runs, no page tables). Bytes that the tables refuse are
//! resolved through `Guest::handle_fault`, because that is what the guest experiences.
//!
//! Cases: 10,000 by default; `BULWARK_PROPTEST_CASES=N` for more (or fewer).

use std::collections::{BTreeMap, BTreeSet};

use bulwark_abi::roe::{KVM_HC_ROE, ROE_MPROTECT, ROE_MPROTECT_CHUNK};
use bulwark_abi::smccc;
use bulwark_core::addr::{GpaRange, GuestPhysAddr, GuestVirtAddr, HostPhysAddr};
use bulwark_core::exit::{Access, Action, Hypercall, MemFault};
use bulwark_core::guest::{
    Arch, FaultKind, Guest, GuestConfig, GuestTranslate, HypercallOutcome, MemRegion, RegionKind,
};
use bulwark_core::physmem::{FakePhysMem, PhysMem};
use bulwark_core::pt::ept::Ept;
use bulwark_core::pt::sppt::Sppt;
use bulwark_core::pt::stage2::{Stage2, Stage2Config};
use bulwark_core::pt::RecordingFlush;
use bulwark_core::store::StoreLimits;
use bulwark_core::violation::ViolationPolicy;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

// ----- the plain reference model ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ram,
    Dev,
}

#[derive(Clone, Debug)]
struct Reg {
    gpa: u64,
    len: u64,
    hpa: u64,
    kind: Kind,
}

#[derive(Clone, Debug)]
struct Model {
    regions: Vec<Reg>,
    exec_only: bool,
    spp: bool,
    /// frame -> allowed rights (R=1, W=2, X=4); absent = 7.
    attrs: BTreeMap<u64, u8>,
    roe: BTreeSet<u64>,
    /// frame -> protected byte offsets.
    chunk: BTreeMap<u64, BTreeSet<u64>>,
    enrolled: bool,
    mapped: BTreeSet<u64>,
}

impl Model {
    fn region(&self, gpa: u64) -> Option<&Reg> {
        self.regions
            .iter()
            .find(|r| r.gpa <= gpa && gpa < r.gpa + r.len)
    }
    fn is_ram(&self, gpa: u64) -> bool {
        self.region(gpa).is_some_and(|r| r.kind == Kind::Ram)
    }
    fn allowed(&self, frame: u64) -> u8 {
        *self.attrs.get(&frame).unwrap_or(&7)
    }
    /// Page-level rights as the tables should show them (RAM only).
    fn page_perms(&self, frame: u64) -> u8 {
        let a = self.allowed(frame);
        if self.roe.contains(&frame) || self.chunk.contains_key(&frame) {
            a & !2
        } else {
            a
        }
    }
    /// Can the guest change byte `gpa` (RAM)?
    fn byte_writable(&self, gpa: u64) -> bool {
        let f = gpa / PAGE;
        self.allowed(f) & 2 != 0
            && !self.roe.contains(&f)
            && !self
                .chunk
                .get(&f)
                .is_some_and(|s| s.contains(&(gpa % PAGE)))
    }
}

// ----- operations -----------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Protect {
        gva_page: u64,
        pages: u64,
    },
    Chunk {
        gva: u64,
        len: u64,
    },
    Attr {
        page: u64,
        pages: u64,
        attrs: u64,
        flags: u64,
        misalign: u64,
    },
    Enroll,
    Map {
        page: u64,
        misalign: u64,
    },
    Unmap {
        page: u64,
    },
    User {
        gva_page: u64,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..40, 0u64..6).prop_map(|(gva_page, pages)| Op::Protect { gva_page, pages }),
        6 => (0u64..40 * PAGE, prop_oneof![0u64..300, 4000u64..9000])
            .prop_map(|(gva, len)| Op::Chunk { gva, len }),
        3 => (0u64..CANDIDATES, prop_oneof![1u64..4, 500u64..1100], 0u64..9, prop_oneof![9 => Just(0u64), 1 => 1u64..3], prop_oneof![9 => Just(0u64), 1 => 1u64..PAGE])
            .prop_map(|(page, pages, attrs, flags, misalign)| Op::Attr { page, pages, attrs, flags, misalign }),
        1 => Just(Op::Enroll),
        2 => (0u64..CANDIDATES, prop_oneof![9 => Just(0u64), 1 => 1u64..PAGE]).prop_map(|(page, misalign)| Op::Map { page, misalign }),
        1 => (0u64..CANDIDATES).prop_map(|page| Op::Unmap { page }),
        1 => (0u64..40).prop_map(|gva_page| Op::User { gva_page }),
    ]
}

/// Number of candidate guest-physical pages the operations pick from.
const CANDIDATES: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    X86 { spp: bool, exec_only: bool },
    Arm,
}

fn flavor_strategy() -> impl Strategy<Value = Flavor> {
    prop_oneof![
        (any::<bool>(), any::<bool>()).prop_map(|(spp, exec_only)| Flavor::X86 { spp, exec_only }),
        Just(Flavor::Arm),
    ]
}

fn regions(fl: Flavor) -> Vec<Reg> {
    match fl {
        Flavor::X86 { .. } => vec![
            Reg {
                gpa: 0,
                len: 16 * MIB,
                hpa: 0,
                kind: Kind::Ram,
            },
            // 16..32 MiB: Bulwark's hole.
            Reg {
                gpa: 32 * MIB,
                len: 32 * MIB,
                hpa: 32 * MIB,
                kind: Kind::Ram,
            },
            Reg {
                gpa: 0x0900_0000,
                len: 2 * MIB,
                hpa: 0x0900_0000,
                kind: Kind::Dev,
            },
            Reg {
                gpa: GIB,
                len: GIB,
                hpa: GIB,
                kind: Kind::Ram,
            },
        ],
        Flavor::Arm => vec![
            Reg {
                gpa: 0x0900_0000,
                len: 2 * MIB,
                hpa: 0x0900_0000,
                kind: Kind::Dev,
            },
            // Guest RAM IPA 1 GiB.. maps to PA 1 GiB + 2 MiB.. (Bulwark sits below).
            Reg {
                gpa: GIB,
                len: GIB,
                hpa: GIB + 2 * MIB,
                kind: Kind::Ram,
            },
        ],
    }
}

/// Candidate page `i`: RAM near region starts and 2 MiB / 1 GiB boundaries, the hole, devices.
fn candidate(fl: Flavor, i: u64) -> u64 {
    let ram_base = match fl {
        Flavor::X86 { .. } => 0,
        Flavor::Arm => GIB,
    };
    match i % 8 {
        0 | 1 => ram_base + (i % 16) * PAGE,
        2 => ram_base + 2 * MIB - 8 * PAGE + (i % 16) * PAGE,
        3 => GIB + 2 * MIB - 4 * PAGE + (i % 8) * PAGE,
        4 => 16 * MIB + (i % 4) * PAGE, // hole (x86) / nothing (arm)
        5 => 0x0900_0000 + (i % 16) * PAGE,
        6 => GIB + (i % 16) * PAGE,
        _ => 32 * MIB - PAGE + (i % 4) * PAGE,
    }
}

/// The guest's virtual-to-physical map: 40 pages, some untranslatable.
#[derive(Clone, Debug)]
struct Tr(Vec<Option<u64>>);

impl GuestTranslate for Tr {
    fn translate(&mut self, gva: GuestVirtAddr) -> Result<GuestPhysAddr, ()> {
        let a = gva.as_u64();
        match self.0.get((a / PAGE) as usize) {
            Some(Some(p)) => Ok(GuestPhysAddr::new(p + a % PAGE)),
            _ => Err(()),
        }
    }
}

fn tr_strategy(fl: Flavor) -> impl Strategy<Value = Tr> {
    prop::collection::vec(
        prop_oneof![9 => (0u64..CANDIDATES).prop_map(move |i| Some(candidate(fl, i))), 1 => Just(None)],
        40,
    )
    .prop_map(Tr)
}

// ----- the system under test, wired like a back end -------------------------------------------

enum Tables {
    Ept {
        ept: Ept<true>,
        ept_no_xo: Option<Ept<false>>,
        sppt: Sppt,
    },
    S2(Stage2),
}

struct Sut {
    fl: Flavor,
    guest: Guest,
    mem: FakePhysMem,
    tables: Tables,
}

impl Sut {
    fn new(fl: Flavor) -> Sut {
        let regs = regions(fl);
        let (arch, spp, exec_only) = match fl {
            Flavor::X86 { spp, exec_only } => (Arch::X86_64, spp, exec_only),
            Flavor::Arm => (Arch::Aarch64, false, false),
        };
        let guest = Guest::new(GuestConfig {
            arch,
            regions: regs
                .iter()
                .map(|r| MemRegion {
                    gpa: GuestPhysAddr::new(r.gpa),
                    len: r.len,
                    hpa: HostPhysAddr::new(r.hpa),
                    kind: if r.kind == Kind::Ram {
                        RegionKind::Ram
                    } else {
                        RegionKind::Device
                    },
                })
                .collect(),
            policy: ViolationPolicy::Skip,
            ratelimit: 1,
            exec_only,
            spp,
            limits: StoreLimits::default(),
        })
        .unwrap();
        let mut mem = FakePhysMem::new();
        let tables = match fl {
            Flavor::X86 { exec_only, .. } => Tables::Ept {
                ept: Ept::<true>::new_ept(&mut mem, true).unwrap(),
                ept_no_xo: (!exec_only).then(|| Ept::<false>::new_ept(&mut mem, true).unwrap()),
                sppt: Sppt::new(&mut mem).unwrap(),
            },
            Flavor::Arm => Tables::S2(
                Stage2::new_stage2(&mut mem, Stage2Config::from_parange(2).unwrap()).unwrap(),
            ),
        };
        let mut s = Sut {
            fl,
            guest,
            mem,
            tables,
        };
        let full = s.guest.full_range().unwrap();
        s.sync(full);
        s
    }

    fn sync(&mut self, range: GpaRange) {
        let mut tlb = RecordingFlush::default();
        match &mut self.tables {
            Tables::Ept {
                ept,
                ept_no_xo,
                sppt,
            } => {
                // Without execute-only support the engine is instantiated without it.
                match ept_no_xo {
                    Some(e) => {
                        self.guest
                            .sync_ept(&mut self.mem, e, Some(sppt), range, &mut tlb)
                            .unwrap();
                    }
                    None => {
                        self.guest
                            .sync_ept(&mut self.mem, ept, Some(sppt), range, &mut tlb)
                            .unwrap();
                    }
                }
            }
            Tables::S2(s2) => {
                self.guest
                    .sync_stage2(&mut self.mem, s2, range, &mut tlb)
                    .unwrap();
            }
        }
    }

    fn call(&mut self, nr: u64, args: [u64; 3], user: bool, tr: &mut Tr) -> Option<u64> {
        let hc = Hypercall {
            nr,
            args: [args[0], args[1], args[2], 0],
            from_user: user,
            narrow: false,
        };
        match self.guest.handle_hypercall(&hc, tr) {
            HypercallOutcome::Handled { action, rederive } => {
                if let Some(r) = rederive {
                    self.sync(r);
                }
                match action {
                    Action::AdvanceWithResult(v) => Some(v),
                    other => panic!("unexpected action {other:?}"),
                }
            }
            HypercallOutcome::NotMine => None,
        }
    }

    fn roe_nr(&self) -> u64 {
        match self.fl {
            Flavor::X86 { .. } => KVM_HC_ROE,
            Flavor::Arm => u64::from(smccc::BULWARK_ROE),
        }
    }
}

const EINVAL: u64 = (-22i64) as u64;
const ENOSYS: u64 = (-1000i64) as u64;
const NOT_SUPPORTED: u64 = u64::MAX;

fn step(sut: &mut Sut, model: &mut Model, tr: &mut Tr, op: &Op) -> Result<(), TestCaseError> {
    let fl = sut.fl;
    match *op {
        Op::Protect { gva_page, pages } => {
            let nr = sut.roe_nr();
            let got = sut.call(nr, [ROE_MPROTECT, gva_page * PAGE, pages], false, tr);
            // Model: every page translates to RAM, else EINVAL and nothing changes.
            let mut frames = Vec::new();
            let mut ok = pages > 0;
            for i in 0..pages {
                match tr.0.get((gva_page + i) as usize).copied().flatten() {
                    Some(g) if model.is_ram(g) => frames.push(g / PAGE),
                    _ => ok = false,
                }
            }
            if ok {
                model.roe.extend(frames);
                prop_assert_eq!(got, Some(pages));
            } else {
                prop_assert_eq!(got, Some(EINVAL));
            }
        }
        Op::Chunk { gva, len } => {
            let nr = sut.roe_nr();
            let got = sut.call(nr, [ROE_MPROTECT_CHUNK, gva, len], false, tr);
            let mut bytes = Vec::new();
            let mut ok = len > 0;
            if ok {
                let mut p = gva;
                while p < gva + len {
                    match tr.0.get((p / PAGE) as usize).copied().flatten() {
                        Some(g) if model.is_ram(g) => bytes.push(g + p % PAGE),
                        _ => {
                            ok = false;
                            break;
                        }
                    }
                    p += 1;
                }
            }
            if ok {
                for b in bytes {
                    let f = b / PAGE;
                    if !model.roe.contains(&f) {
                        model.chunk.entry(f).or_default().insert(b % PAGE);
                    }
                }
                prop_assert_eq!(got, Some(len));
            } else {
                prop_assert_eq!(got, Some(EINVAL));
            }
        }
        Op::Attr {
            page,
            pages,
            attrs,
            flags,
            misalign,
        } => {
            let address = candidate(fl, page) + misalign;
            let size = pages * PAGE;
            let got = sut.guest.set_host_attributes(address, size, attrs, flags);
            let perms = (attrs & 7) as u8;
            let valid = flags == 0
                && attrs < 8
                && address.is_multiple_of(PAGE)
                && !(perms & 2 != 0 && perms & 1 == 0)
                && !(perms & 4 != 0 && perms & 1 == 0 && !model.exec_only)
                && (0..pages).all(|i| model.is_ram(address + i * PAGE));
            prop_assert_eq!(
                got.is_ok(),
                valid,
                "attr {:#x}+{:#x}={} flags={} -> {:?}",
                address,
                size,
                attrs,
                flags,
                got
            );
            if let Ok(r) = got {
                for i in 0..pages {
                    let f = address / PAGE + i;
                    if perms == 7 {
                        model.attrs.remove(&f);
                    } else {
                        model.attrs.insert(f, perms);
                    }
                }
                if let Some(r) = r {
                    sut.sync(r);
                }
            }
        }
        Op::Enroll => {
            let got = sut.call(u64::from(smccc::MMIO_GUARD_ENROLL), [0; 3], false, tr);
            if fl == Flavor::Arm {
                model.enrolled = true;
                prop_assert_eq!(got, Some(0));
            }
        }
        Op::Map { page, misalign } => {
            let ipa = candidate(fl, page) + misalign;
            let got = sut.call(u64::from(smccc::MMIO_GUARD_MAP), [ipa, 0, 0], false, tr);
            if fl == Flavor::Arm {
                let ok = model.enrolled
                    && ipa.is_multiple_of(PAGE)
                    && model.region(ipa).is_some_and(|r| r.kind == Kind::Dev);
                if ok {
                    model.mapped.insert(ipa / PAGE);
                }
                prop_assert_eq!(got, Some(if ok { 0 } else { NOT_SUPPORTED }));
            } else {
                prop_assert_eq!(got, Some(ENOSYS));
            }
        }
        Op::Unmap { page } => {
            let ipa = candidate(fl, page);
            let got = sut.call(u64::from(smccc::MMIO_GUARD_UNMAP), [ipa, 0, 0], false, tr);
            if fl == Flavor::Arm {
                let ok = model.enrolled && model.mapped.remove(&(ipa / PAGE));
                prop_assert_eq!(got, Some(if ok { 0 } else { NOT_SUPPORTED }));
            }
        }
        Op::User { gva_page } => {
            let nr = sut.roe_nr();
            let got = sut.call(nr, [ROE_MPROTECT, gva_page * PAGE, 1], true, tr);
            prop_assert_eq!(got, Some(ENOSYS));
        }
    }
    Ok(())
}

// ----- the independent walker -------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Leaf {
    gpa: u64,
    size: u64,
    hpa: u64,
    /// R=1, W=2, X=4.
    perms: u8,
    uncached: bool,
    spp: bool,
}

fn walk_ept(mem: &FakePhysMem, root: u64) -> Vec<Leaf> {
    fn rec(mem: &FakePhysMem, t: u64, level: u32, base: u64, out: &mut Vec<Leaf>) {
        for i in 0..512u64 {
            let e = mem.read_u64(HostPhysAddr::new(t + i * 8));
            let gpa = base + (i << (12 + 9 * level));
            if e & 7 == 0 {
                continue;
            }
            let addr = e & 0x000f_ffff_ffff_f000;
            if level == 0 || e & 0x80 != 0 {
                assert!(level <= 2, "leaf at level {level}");
                out.push(Leaf {
                    gpa,
                    size: 1 << (12 + 9 * level),
                    hpa: addr,
                    perms: (e & 7) as u8,
                    uncached: (e >> 3) & 7 == 0,
                    spp: e & (1 << 61) != 0,
                });
            } else {
                rec(mem, addr, level - 1, gpa, out);
            }
        }
    }
    let mut out = Vec::new();
    rec(mem, root, 3, 0, &mut out);
    out
}

fn walk_s2(mem: &FakePhysMem, root: u64, root_level: u32) -> Vec<Leaf> {
    fn rec(mem: &FakePhysMem, t: u64, level: u32, base: u64, out: &mut Vec<Leaf>) {
        for i in 0..512u64 {
            let e = mem.read_u64(HostPhysAddr::new(t + i * 8));
            let gpa = base + (i << (12 + 9 * level));
            if e & 1 == 0 {
                continue;
            }
            let addr = e & 0x0000_ffff_ffff_f000;
            if level > 0 && e & 2 != 0 {
                rec(mem, addr, level - 1, gpa, out);
            } else {
                assert!(level == 0 || level <= 2, "block at level {level}");
                assert!(level > 0 || e & 2 != 0, "reserved level-3 encoding");
                assert_ne!(e & (1 << 10), 0, "AF must be set");
                let mut perms = 0u8;
                if e & (1 << 6) != 0 {
                    perms |= 1;
                }
                if e & (1 << 7) != 0 {
                    perms |= 2;
                }
                if e & (1 << 54) == 0 {
                    perms |= 4;
                }
                out.push(Leaf {
                    gpa,
                    size: 1 << (12 + 9 * level),
                    hpa: addr,
                    perms,
                    uncached: (e >> 2) & 0xf != 0xf,
                    spp: false,
                });
            }
        }
    }
    let mut out = Vec::new();
    rec(mem, root, root_level, 0, &mut out);
    out
}

/// SPPT vector of `gpa`'s page, own decoding.
fn sppt_vector(mem: &FakePhysMem, root: u64, gpa: u64) -> Option<u64> {
    let mut t = root;
    for level in (1..=3u32).rev() {
        let e = mem.read_u64(HostPhysAddr::new(t + ((gpa >> (12 + 9 * level)) & 511) * 8));
        if e & 1 == 0 {
            return None;
        }
        assert_eq!(e & 0xffe, 0, "reserved SPPT bits");
        t = e & 0x000f_ffff_ffff_f000;
    }
    Some(mem.read_u64(HostPhysAddr::new(t + ((gpa >> 12) & 511) * 8)))
}

fn check(sut: &mut Sut, model: &Model) -> Result<(), TestCaseError> {
    let (leaves, sppt_root, spp_on) = match &sut.tables {
        Tables::Ept {
            ept,
            ept_no_xo,
            sppt,
        } => {
            let root = match ept_no_xo {
                Some(e) => e.root().as_u64(),
                None => ept.root().as_u64(),
            };
            (walk_ept(&sut.mem, root), Some(sppt.spptp()), model.spp)
        }
        Tables::S2(s2) => (
            walk_s2(&sut.mem, s2.root().as_u64(), u32::from(s2.root_level())),
            None,
            false,
        ),
    };
    prop_assert_eq!(sut.mem.stray_accesses, 0);
    prop_assert_eq!(sut.mem.bad_frees, 0);
    // Leaves are sorted by construction of the walk.
    let special: BTreeSet<u64> = model
        .attrs
        .keys()
        .chain(model.roe.iter())
        .chain(model.chunk.keys())
        .copied()
        .collect();
    let mut covered: Vec<(u64, u64)> = Vec::new();
    for l in &leaves {
        let r = model.region(l.gpa);
        prop_assert!(r.is_some(), "leaf outside guest memory: {:?}", l);
        let r = r.unwrap().clone();
        prop_assert!(
            l.gpa + l.size <= r.gpa + r.len,
            "leaf crosses region end: {:?}",
            l
        );
        prop_assert_eq!(l.hpa, r.hpa + (l.gpa - r.gpa), "output address {:?}", l);
        prop_assert_eq!(l.uncached, r.kind == Kind::Dev);
        covered.push((l.gpa, l.gpa + l.size));
        let (f0, f1) = (l.gpa / PAGE, (l.gpa + l.size) / PAGE);
        match r.kind {
            Kind::Dev => {
                prop_assert_eq!(l.perms, 3, "device rights {:?}", l);
                if model.enrolled {
                    prop_assert!(
                        (f0..f1).all(|f| model.mapped.contains(&f)),
                        "unmapped granule mapped {:?}",
                        l
                    );
                }
            }
            Kind::Ram => {
                let sp: Vec<u64> = special.range(f0..f1).copied().collect();
                if (sp.len() as u64) < f1 - f0 {
                    prop_assert_eq!(l.perms, 7, "default page in leaf {:?}", l);
                }
                for f in sp {
                    let want = model.page_perms(f);
                    prop_assert!(want != 0, "no-access page {:#x} is mapped", f * PAGE);
                    prop_assert_eq!(l.perms, want, "page {:#x} in {:?}", f * PAGE, l);
                    let want_spp = spp_on
                        && model.chunk.contains_key(&f)
                        && !model.roe.contains(&f)
                        && model.allowed(f) & 2 != 0;
                    prop_assert_eq!(l.spp, want_spp, "spp of page {:#x}", f * PAGE);
                    if want_spp {
                        prop_assert_eq!(l.size, PAGE);
                    }
                }
                if l.size > PAGE {
                    prop_assert!(!l.spp);
                }
            }
        }
    }
    // Everything of guest memory that no leaf covers must be denied in the model.
    for r in &model.regions {
        let mut pos = r.gpa;
        let end = r.gpa + r.len;
        let mut gaps = Vec::new();
        for &(s, e) in covered.iter().filter(|(s, e)| *e > r.gpa && *s < end) {
            if s > pos {
                gaps.push((pos, s));
            }
            pos = pos.max(e);
        }
        if pos < end {
            gaps.push((pos, end));
        }
        for (s, e) in gaps {
            let (f0, f1) = (s / PAGE, e / PAGE);
            match r.kind {
                Kind::Ram => {
                    let n = model
                        .attrs
                        .range(f0..f1)
                        .filter(|(f, _)| model.page_perms(**f) == 0)
                        .count() as u64;
                    prop_assert_eq!(n, f1 - f0, "RAM {:#x}..{:#x} unmapped", s, e);
                }
                Kind::Dev => {
                    prop_assert!(
                        model.enrolled,
                        "device {:#x}..{:#x} unmapped before enrolment",
                        s,
                        e
                    );
                    prop_assert!(
                        model.mapped.range(f0..f1).next().is_none(),
                        "mapped granule missing in {:#x}..{:#x}",
                        s,
                        e
                    );
                }
            }
        }
    }
    // Byte-level writes of every special page (chunk pages byte by byte through 64-byte
    // windows; others by one probe), composing tables + SPPT + the core's fault handler.
    let leaf_of = |gpa: u64| {
        leaves
            .iter()
            .find(|l| l.gpa <= gpa && gpa < l.gpa + l.size)
            .copied()
    };
    for &f in &special {
        let page = f * PAGE;
        if !model.is_ram(page) {
            continue;
        }
        let leaf = leaf_of(page);
        let vector = match (sppt_root, leaf) {
            (Some(root), Some(l)) if l.spp => sppt_vector(&sut.mem, root, page),
            _ => None,
        };
        if leaf.is_some_and(|l| l.spp) {
            prop_assert!(vector.is_some(), "SPP page {:#x} without SPPT entry", page);
            prop_assert_eq!(vector.unwrap() & 0xaaaa_aaaa_aaaa_aaaa, 0, "odd SPP bits");
        }
        let windows: Vec<u64> = if model.chunk.contains_key(&f) {
            (0..64).collect()
        } else {
            vec![0]
        };
        for w in windows {
            let gpa = page + w * 64;
            let hw = |b: u64| -> bool {
                match leaf {
                    Some(l) if l.perms & 2 != 0 => true,
                    Some(l) if l.spp => {
                        vector.is_some_and(|v| v & (1 << (2 * ((b % PAGE) / 128))) != 0)
                    }
                    _ => false,
                }
            };
            let all_hw = (0..64).all(|i| hw(gpa + i));
            let mut protected: u64 = 0;
            if !all_hw {
                let d = sut.guest.handle_fault(
                    0,
                    &MemFault {
                        gpa: GuestPhysAddr::new(gpa),
                        gva: None,
                        ip: GuestVirtAddr::new(0x1000),
                        access: Access::Write,
                        size: Some(64),
                    },
                );
                protected = match (d.kind, d.action) {
                    (FaultKind::ChunkPassThrough, Action::EmulateStore(e)) => e.protected,
                    (FaultKind::Violation(_), Action::EmulateStore(e)) => e.protected,
                    (FaultKind::Violation(_), Action::Advance) => u64::MAX,
                    other => {
                        return Err(TestCaseError::fail(format!(
                            "page {page:#x}: write decision {other:?}"
                        )))
                    }
                };
            }
            for i in 0..64 {
                let b = gpa + i;
                let eff = hw(b) || protected & (1 << i) == 0;
                prop_assert_eq!(eff, model.byte_writable(b), "byte {:#x} writable", b);
                if !model.chunk.contains_key(&f) {
                    break;
                }
            }
            // SPP: a sub-page without protected bytes, none in the first 63 bytes of the next
            // sub-page of the page either (a store starting in it can reach them), must not exit.
            if leaf.is_some_and(|l| l.spp) && w % 2 == 0 {
                let next_head_free = (gpa + 128).is_multiple_of(PAGE)
                    || (0..63).all(|i| model.byte_writable(gpa + 128 + i));
                let sub_free = (0..128).all(|i| model.byte_writable(gpa + i)) && next_head_free;
                prop_assert_eq!(hw(gpa), sub_free, "SPP sub-page {:#x}", gpa);
            }
        }
        // Reads and executes.
        let want = model.page_perms(f);
        for (acc, bit) in [(Access::Read, 1u8), (Access::Exec, 4u8)] {
            let hw_ok = leaf.is_some_and(|l| l.perms & bit != 0);
            if !hw_ok {
                let d = sut.guest.handle_fault(
                    0,
                    &MemFault {
                        gpa: GuestPhysAddr::new(page),
                        gva: None,
                        ip: GuestVirtAddr::new(0x1000),
                        access: acc,
                        size: Some(1),
                    },
                );
                prop_assert!(
                    matches!(d.kind, FaultKind::Violation(_)),
                    "{:?} of {:#x}: {:?}",
                    acc,
                    page,
                    d
                );
            }
            prop_assert_eq!(hw_ok, want & bit != 0, "{:?} right of {:#x}", acc, page);
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("BULWARK_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

#[test]
fn tables_match_reference_model() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = flavor_strategy().prop_flat_map(|fl| {
        (
            Just(fl),
            tr_strategy(fl),
            prop::collection::vec(op_strategy(), 1..24),
        )
    });
    let result = runner.run(&strategy, |(fl, tr, ops)| run_case(fl, tr, &ops));
    if let Err(e) = result {
        panic!("divergence from the reference model: {e}");
    }
    eprintln!("model test: {} cases, 0 divergences", cases());
}

fn run_case(fl: Flavor, mut tr: Tr, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut sut = Sut::new(fl);
    let mut model = Model {
        regions: regions(fl),
        exec_only: matches!(
            fl,
            Flavor::X86 {
                exec_only: true,
                ..
            }
        ),
        spp: matches!(fl, Flavor::X86 { spp: true, .. }),
        attrs: BTreeMap::new(),
        roe: BTreeSet::new(),
        chunk: BTreeMap::new(),
        enrolled: false,
        mapped: BTreeSet::new(),
    };
    for op in ops {
        step(&mut sut, &mut model, &mut tr, op)?;
    }
    check(&mut sut, &model)
}

/// Cases that once diverged, kept as plain tests.
#[test]
fn regressions() {
    let mut t = vec![Some(0u64); 40];
    t[17] = Some(0x200_2000);
    let r = run_case(
        Flavor::X86 {
            spp: true,
            exec_only: false,
        },
        Tr(t),
        &[
            Op::Attr {
                page: 7,
                pages: 1,
                attrs: 5,
                flags: 0,
                misalign: 0,
            },
            Op::Chunk {
                gva: 69351,
                len: 282,
            },
        ],
    );
    assert!(r.is_ok(), "{r:?}");
    // More bytes on a page that is already chunk-protected: the SPP vector must follow.
    let r = run_case(
        Flavor::X86 {
            spp: true,
            exec_only: false,
        },
        Tr(vec![Some(0x5000); 40]),
        &[
            Op::Chunk { gva: 0x10, len: 1 },
            Op::Chunk { gva: 0x810, len: 1 },
        ],
    );
    assert!(r.is_ok(), "{r:?}");
}

// ----- allocation failure leaves tables unchanged ----------------------------------------------

/// (gpa, size, hpa, perms, uncached) of every leaf.
type LeafKey = (u64, u64, u64, u8, bool);

fn snapshot(mem: &FakePhysMem, leaves: &[Leaf]) -> (usize, Vec<LeafKey>) {
    (
        mem.allocated(),
        leaves
            .iter()
            .map(|l| (l.gpa, l.size, l.hpa, l.perms, l.uncached))
            .collect(),
    )
}

#[test]
fn out_of_frames_never_changes_tables() {
    let mut runner = TestRunner::new(Config {
        cases: cases() / 5,
        failure_persistence: None,
        ..Config::default()
    });
    let op = (0u64..1024, 1u64..700, 0u8..4, 0usize..6);
    let strategy = prop::collection::vec(op, 1..30);
    let result = runner.run(&strategy, |ops| {
        let mut mem = FakePhysMem::new();
        let mut tlb = RecordingFlush::default();
        let mut ept = Ept::<false>::new_ept(&mut mem, true).unwrap();
        ept.map(
            &mut mem,
            GuestPhysAddr::new(0),
            GIB,
            HostPhysAddr::new(0),
            bulwark_core::pt::LeafAttrs::ram(bulwark_core::pt::Perms::RWX),
            &mut tlb,
        )
        .unwrap();
        for (page, pages, p, slack) in ops {
            let perms = [1u8, 3, 5, 7][p as usize];
            let before = snapshot(&mem, &walk_ept(&mem, ept.root().as_u64()));
            let table_pages = ept.stats().table_pages;
            prop_assert_eq!(table_pages, mem.allocated());
            mem.set_limit(Some(mem.allocated() + slack));
            let r = ept.map(
                &mut mem,
                GuestPhysAddr::new(page * PAGE),
                pages * PAGE,
                HostPhysAddr::new(page * PAGE),
                bulwark_core::pt::LeafAttrs::ram(bulwark_core::pt::Perms::from_bits_truncate(
                    perms,
                )),
                &mut tlb,
            );
            mem.set_limit(None);
            let after = walk_ept(&mem, ept.root().as_u64());
            match r {
                Err(bulwark_core::pt::PtError::OutOfFrames) => {
                    prop_assert_eq!(&snapshot(&mem, &after), &before);
                    prop_assert_eq!(ept.stats().table_pages, table_pages);
                }
                Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
                Ok(_) => {
                    // Every page of the range now has the new rights.
                    for l in after
                        .iter()
                        .filter(|l| l.gpa < (page + pages) * PAGE && l.gpa + l.size > page * PAGE)
                    {
                        prop_assert_eq!(l.perms, perms);
                    }
                    prop_assert_eq!(ept.stats().table_pages, mem.allocated());
                }
            }
        }
        prop_assert_eq!(mem.stray_accesses, 0);
        prop_assert_eq!(mem.bad_frees, 0);
        Ok(())
    });
    if let Err(e) = result {
        panic!("allocation failure changed the tables: {e}");
    }
}
