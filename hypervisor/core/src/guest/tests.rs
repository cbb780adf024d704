use super::*;
use crate::physmem::FakePhysMem;
use crate::pt::ept::Ept;
use crate::pt::RecordingFlush;
use bulwark_abi::roe::{ROE_MPROTECT, ROE_MPROTECT_CHUNK, ROE_VERSION};

const MIB: u64 = 1 << 20;

/// Identity translation for gva < 64 MiB except the `holes`; `offset` added to the result.
struct Tr {
    holes: Vec<u64>,
    offset: u64,
}
impl GuestTranslate for Tr {
    fn translate(&mut self, gva: GuestVirtAddr) -> Result<GuestPhysAddr, ()> {
        let a = gva.as_u64();
        if a >= 64 * MIB || self.holes.contains(&(a & !0xfff)) {
            return Err(());
        }
        Ok(GuestPhysAddr::new(a + self.offset))
    }
}
fn tr() -> Tr {
    Tr {
        holes: Vec::new(),
        offset: 0,
    }
}

fn cfg(arch: Arch, policy: ViolationPolicy, spp: bool) -> GuestConfig {
    GuestConfig {
        arch,
        regions: alloc::vec![
            MemRegion {
                gpa: GuestPhysAddr::new(0),
                len: 16 * MIB,
                hpa: HostPhysAddr::new(0),
                kind: RegionKind::Ram,
            },
            // A hole (Bulwark's own memory on x86) at 16..32 MiB, then more RAM.
            MemRegion {
                gpa: GuestPhysAddr::new(32 * MIB),
                len: 16 * MIB,
                hpa: HostPhysAddr::new(32 * MIB),
                kind: RegionKind::Ram,
            },
            MemRegion {
                gpa: GuestPhysAddr::new(0x0900_0000),
                len: 0x10_0000,
                hpa: HostPhysAddr::new(0x0900_0000),
                kind: RegionKind::Device,
            },
        ],
        policy,
        ratelimit: 10,
        exec_only: false,
        spp,
        limits: StoreLimits::default(),
    }
}

fn hc(nr: u64, args: [u64; 3]) -> Hypercall {
    Hypercall {
        nr,
        args: [args[0], args[1], args[2], 0],
        from_user: false,
        narrow: false,
    }
}

fn result(o: HypercallOutcome) -> (u64, Option<GpaRange>) {
    match o {
        HypercallOutcome::Handled {
            action: Action::AdvanceWithResult(v),
            rederive,
        } => (v, rederive),
        other => panic!("unexpected {other:?}"),
    }
}

const EINVAL: u64 = (-22i64) as u64;
const ENOSYS: u64 = (-1000i64) as u64;

#[test]
fn x86_roe_version_and_errors() {
    let mut g = Guest::new(cfg(Arch::X86_64, ViolationPolicy::Skip, false)).unwrap();
    let mut t = tr();
    assert_eq!(
        result(g.handle_hypercall(&hc(11, [ROE_VERSION, 0, 0]), &mut t)).0,
        2
    );
    assert_eq!(
        result(g.handle_hypercall(&hc(12, [0, 0, 0]), &mut t)).0,
        ENOSYS
    );
    assert_eq!(
        result(g.handle_hypercall(&hc(11, [3, 0, 0]), &mut t)).0,
        EINVAL
    );
    // Ring 3: -1000 and nothing protected.
    let mut user = hc(11, [ROE_MPROTECT, 0x1000, 1]);
    user.from_user = true;
    assert_eq!(result(g.handle_hypercall(&user, &mut t)).0, ENOSYS);
    user.args[0] = ROE_VERSION;
    assert_eq!(result(g.handle_hypercall(&user, &mut t)).0, ENOSYS);
    assert_eq!(g.store().run_count(), 0);
    for (a1, a2) in [
        (0x1000, 0),                // zero count
        (0x1001, 1),                // unaligned
        (!0xfff, 2),                // wraps
        (0x1000, u64::MAX),         // overflow of pages * 4096
        (0x1000, 1 << 40),          // more pages than guest RAM
        (17 * MIB, 1),              // translates into the hole
        (15 * MIB, 2 * MIB / 4096), // crosses into the hole: nothing protected
        (63 * MIB, 2 * MIB / 4096), // runs past the translated space
    ] {
        let (v, r) = result(g.handle_hypercall(&hc(11, [ROE_MPROTECT, a1, a2]), &mut t));
        assert_eq!((v, r), (EINVAL, None), "a1={a1:#x} a2={a2:#x}");
    }
    // Device memory is not guest RAM.
    assert_eq!(
        result(g.handle_hypercall(&hc(11, [ROE_MPROTECT, 0x0900_0000, 1]), &mut t)).0,
        EINVAL
    );
    // A page that does not translate in the middle: nothing protected.
    let mut holey = Tr {
        holes: alloc::vec![0x3000],
        offset: 0,
    };
    assert_eq!(
        result(g.handle_hypercall(&hc(11, [ROE_MPROTECT, 0x1000, 4]), &mut holey)).0,
        EINVAL
    );
    assert_eq!(g.store().run_count(), 0);
    for (a1, a2) in [(0x1000, 0), (u64::MAX, 2), (17 * MIB, 1), (0x0900_0000, 4)] {
        assert_eq!(
            result(g.handle_hypercall(&hc(11, [ROE_MPROTECT_CHUNK, a1, a2]), &mut t)).0,
            EINVAL
        );
    }
    assert_eq!(g.store().run_count(), 0);
    assert!(g.counters().hypercall_errors >= 16);
}

#[test]
fn x86_roe_success_idempotent_and_translated() {
    let mut g = Guest::new(cfg(Arch::X86_64, ViolationPolicy::Skip, false)).unwrap();
    // Virtual 0x1000 maps to physical 0x1000 + 32 MiB.
    let mut t = Tr {
        holes: Vec::new(),
        offset: 32 * MIB,
    };
    let (v, r) = result(g.handle_hypercall(&hc(11, [ROE_MPROTECT, 0x1000, 3]), &mut t));
    assert_eq!(v, 3);
    assert_eq!(
        r,
        GpaRange::new(GuestPhysAddr::new(32 * MIB + 0x1000), 0x3000)
    );
    assert!(g.store().state((32 * MIB + 0x2000) / 4096).roe);
    assert!(!g.store().state(0x2).roe);
    // Again: same count, nothing to re-derive.
    assert_eq!(
        result(g.handle_hypercall(&hc(11, [ROE_MPROTECT, 0x1000, 3]), &mut t)),
        (3, None)
    );
    // Chunk: any start, spans pages, exact bytes.
    let (v, r) = result(g.handle_hypercall(&hc(11, [ROE_MPROTECT_CHUNK, 0x8ff0, 0x20]), &mut t));
    assert_eq!(v, 0x20);
    assert_eq!(
        r,
        GpaRange::new(GuestPhysAddr::new(32 * MIB + 0x8000), 0x2000)
    );
    let base = 32 * MIB;
    assert!(!g.store().byte_locked(GuestPhysAddr::new(base + 0x8fef)));
    assert!(g.store().byte_locked(GuestPhysAddr::new(base + 0x8ff0)));
    assert!(g.store().byte_locked(GuestPhysAddr::new(base + 0x900f)));
    assert!(!g.store().byte_locked(GuestPhysAddr::new(base + 0x9010)));
    assert_eq!(
        result(g.handle_hypercall(&hc(11, [ROE_MPROTECT_CHUNK, 0x8ff0, 0x20]), &mut t)),
        (0x20, None)
    );
    assert_eq!(g.counters().roe_pages_requested, 6);
}

#[test]
fn narrow_mode_ignores_upper_halves() {
    let mut g = Guest::new(cfg(Arch::X86_64, ViolationPolicy::Skip, false)).unwrap();
    let mut t = tr();
    let mut c = hc(
        0xdead_beef_0000_000b,
        [
            0xffff_0000_0000_0001,
            0x1234_0000_0000_5000,
            0xffff_ffff_0000_0001,
        ],
    );
    c.narrow = true;
    assert_eq!(result(g.handle_hypercall(&c, &mut t)).0, 1);
    assert!(g.store().state(5).roe);
    // Errors come back as 32-bit values.
    c.args[2] = 0xffff_ffff_0000_0000; // count 0 after truncation
    assert_eq!(result(g.handle_hypercall(&c, &mut t)).0, 0xffff_ffea);
    // A 32-bit range that would pass 4 GiB is refused.
    c.args = [ROE_MPROTECT_CHUNK, 0xffff_fff0, 0x20, 0];
    assert_eq!(result(g.handle_hypercall(&c, &mut t)).0, 0xffff_ffea);
}

#[test]
fn arm64_calls_and_mmio_guard() {
    let mut g = Guest::new(cfg(Arch::Aarch64, ViolationPolicy::Skip, false)).unwrap();
    let mut t = tr();
    use bulwark_abi::smccc::*;
    let ns = u64::MAX;
    let call = |g: &mut Guest, fid: u32, a: [u64; 3]| {
        let mut t = tr();
        g.handle_hypercall(&hc(u64::from(fid), a), &mut t)
    };
    assert_eq!(result(call(&mut g, BULWARK_ROE, [ROE_VERSION, 0, 0])).0, 2);
    assert_eq!(
        result(g.handle_hypercall(
            &hc(u64::from(BULWARK_ROE), [ROE_MPROTECT, 0x2000, 1]),
            &mut t
        ))
        .0,
        1
    );
    // Discovery is the back end's dispatcher's (arch/aarch64/src/smccc.rs), not the core's.
    assert_eq!(
        call(&mut g, VENDOR_HYP_CALL_UID, [0; 3]),
        HypercallOutcome::NotMine
    );
    assert_eq!(
        call(&mut g, VENDOR_HYP_FEATURES, [0; 3]),
        HypercallOutcome::NotMine
    );
    assert_eq!(
        call(&mut g, PSCI_CPU_ON_64, [0; 3]),
        HypercallOutcome::NotMine
    );
    assert_eq!(call(&mut g, 0xC600_0007, [0; 3]), HypercallOutcome::NotMine);
    assert_eq!(result(call(&mut g, MMIO_GUARD_INFO, [0; 3])).0, 4096);
    // MAP/UNMAP before ENROLL fail.
    assert_eq!(
        result(call(&mut g, MMIO_GUARD_MAP, [0x0900_0000, 0, 0])).0,
        ns
    );
    assert_eq!(
        result(call(&mut g, MMIO_GUARD_UNMAP, [0x0900_0000, 0, 0])).0,
        ns
    );
    let (v, r) = result(call(&mut g, MMIO_GUARD_ENROLL, [0; 3]));
    assert_eq!(v, 0);
    assert_eq!(r, GpaRange::new(GuestPhysAddr::new(0x0900_0000), 0x10_0000));
    assert_eq!(
        result(call(&mut g, MMIO_GUARD_ENROLL, [0; 3])),
        (0, None),
        "idempotent"
    );
    // MAP rules: aligned, device (not RAM, not unmapped space), idempotent.
    assert_eq!(
        result(call(&mut g, MMIO_GUARD_MAP, [0x0900_0010, 0, 0])).0,
        ns
    );
    assert_eq!(result(call(&mut g, MMIO_GUARD_MAP, [0x1000, 0, 0])).0, ns);
    assert_eq!(
        result(call(&mut g, MMIO_GUARD_MAP, [0x0a00_0000, 0, 0])).0,
        ns
    );
    let (v, r) = result(call(&mut g, MMIO_GUARD_MAP, [0x0900_0000, 0, 0]));
    assert_eq!(
        (v, r),
        (0, GpaRange::new(GuestPhysAddr::new(0x0900_0000), 4096))
    );
    assert_eq!(
        result(call(&mut g, MMIO_GUARD_MAP, [0x0900_0000, 0, 0])),
        (0, None)
    );
    assert!(g.mmio_guard().is_mapped(0x9000));
    // UNMAP of an unmapped IPA fails; of a mapped one succeeds once.
    assert_eq!(
        result(call(&mut g, MMIO_GUARD_UNMAP, [0x0900_1000, 0, 0])).0,
        ns
    );
    assert_eq!(
        result(call(&mut g, MMIO_GUARD_UNMAP, [0x0900_0000, 0, 0])).0,
        0
    );
    assert_eq!(
        result(call(&mut g, MMIO_GUARD_UNMAP, [0x0900_0000, 0, 0])).0,
        ns
    );
    // From EL0: refused.
    let mut u = hc(u64::from(MMIO_GUARD_MAP), [0x0900_0000, 0, 0]);
    u.from_user = true;
    assert_eq!(result(g.handle_hypercall(&u, &mut t)).0, ns);
}

fn fault(gpa: u64, access: Access, size: Option<u8>) -> MemFault {
    MemFault {
        gpa: GuestPhysAddr::new(gpa),
        gva: Some(GuestVirtAddr::new(gpa + 0xffff_8000_0000_0000)),
        ip: GuestVirtAddr::new(0x10_0000),
        access,
        size,
    }
}

#[test]
fn fault_decisions_per_policy() {
    for policy in [
        ViolationPolicy::Skip,
        ViolationPolicy::Inject,
        ViolationPolicy::Halt,
    ] {
        let mut g = Guest::new(cfg(Arch::X86_64, policy, false)).unwrap();
        let mut t = tr();
        g.handle_hypercall(&hc(11, [ROE_MPROTECT, 0x5000, 1]), &mut t);
        g.handle_hypercall(&hc(11, [ROE_MPROTECT_CHUNK, 0x6008, 4]), &mut t);
        g.set_host_attributes(0x7000, 0x1000, 1, 0).unwrap(); // read-only, no exec
        let viol_action = |skip: Action| match policy {
            ViolationPolicy::Skip => skip,
            ViolationPolicy::Inject => Action::InjectFault,
            ViolationPolicy::Halt => Action::Stop(StopReason {
                status: STATUS_BULWARK_FAILURE,
                reason: reason::VIOLATION_HALT,
            }),
        };
        let d = g.handle_fault(0, &fault(0x5010, Access::Write, Some(8)));
        assert_eq!(d.kind, FaultKind::Violation(ViolationKind::Roe));
        assert_eq!(d.action, viol_action(Action::Advance));
        // Chunk: unprotected bytes pass through (emulated), no violation.
        let d = g.handle_fault(0, &fault(0x6000, Access::Write, Some(8)));
        assert_eq!(d.kind, FaultKind::ChunkPassThrough);
        assert!(matches!(
            d.action,
            Action::EmulateStore(StoreEmulation {
                protected: 0,
                size: 8,
                ..
            })
        ));
        // Straddling protected bytes 0x6008..0x600c: bytes 4..8 of the access protected.
        let d = g.handle_fault(0, &fault(0x6004, Access::Write, Some(8)));
        assert_eq!(d.kind, FaultKind::Violation(ViolationKind::RoeChunk));
        assert_eq!(
            d.action,
            viol_action(Action::EmulateStore(StoreEmulation {
                gpa: GuestPhysAddr::new(0x6004),
                size: 8,
                protected: 0xf0,
                crosses_page: false,
            }))
        );
        // Fully protected bytes under skip: just advance.
        let d = g.handle_fault(0, &fault(0x6008, Access::Write, Some(4)));
        assert_eq!(d.action, viol_action(Action::Advance));
        // No size for a chunk page: the back end must decode; never guessed.
        let d = g.handle_fault(0, &fault(0x6000, Access::Write, None));
        assert_eq!(d.kind, FaultKind::NeedsAccessSize);
        assert!(matches!(d.action, Action::Stop(_)));
        // Reads of a chunk page are spurious (allowed).
        assert_eq!(
            g.handle_fault(0, &fault(0x6008, Access::Read, Some(4)))
                .kind,
            FaultKind::Spurious
        );
        // Attribute: exec on a read-only page is injected under skip too.
        let d = g.handle_fault(0, &fault(0x7000, Access::Exec, None));
        assert_eq!(d.kind, FaultKind::Violation(ViolationKind::Attr));
        assert_eq!(
            d.action,
            if policy == ViolationPolicy::Skip {
                Action::InjectFault
            } else {
                viol_action(Action::InjectFault)
            }
        );
        let d = g.handle_fault(0, &fault(0x7000, Access::Write, Some(1)));
        assert_eq!(d.kind, FaultKind::Violation(ViolationKind::Attr));
        // Spurious: the store allows it; re-derive the page.
        let d = g.handle_fault(0, &fault(0x8000, Access::Write, Some(1)));
        assert_eq!(
            (d.kind, d.action, d.rederive),
            (
                FaultKind::Spurious,
                Action::Retry,
                GpaRange::new(GuestPhysAddr::new(0x8000), 4096)
            )
        );
        // The hole (Bulwark's memory) is not guest memory: stop.
        let d = g.handle_fault(0, &fault(17 * MIB, Access::Read, None));
        assert_eq!(d.kind, FaultKind::NotGuestMemory);
        assert!(matches!(d.action, Action::Stop(_)));
        let c = g.counters();
        assert_eq!(c.violations, [1, 2, 0, 2]);
    }
}

#[test]
fn mmio_guard_faults() {
    let mut g = Guest::new(cfg(Arch::Aarch64, ViolationPolicy::Skip, false)).unwrap();
    let mut t = tr();
    let f = fault(0x0900_1000, Access::Read, Some(4));
    assert_eq!(
        g.handle_fault(0, &f).kind,
        FaultKind::Spurious,
        "not enrolled"
    );
    let enroll = hc(u64::from(bulwark_abi::smccc::MMIO_GUARD_ENROLL), [0; 3]);
    g.handle_hypercall(&enroll, &mut t);
    let d = g.handle_fault(0, &f);
    assert_eq!(d.kind, FaultKind::Violation(ViolationKind::MmioGuard));
    assert_eq!(d.action, Action::InjectFault, "MMIO guard is never skipped");
    let map = hc(
        u64::from(bulwark_abi::smccc::MMIO_GUARD_MAP),
        [0x0900_1000, 0, 0],
    );
    g.handle_hypercall(&map, &mut t);
    assert_eq!(g.handle_fault(0, &f).kind, FaultKind::Spurious);
}

#[test]
fn device_exec_is_an_attr_violation() {
    for (policy, action) in [
        (ViolationPolicy::Skip, Action::InjectFault),
        (ViolationPolicy::Inject, Action::InjectFault),
    ] {
        for arch in [Arch::Aarch64, Arch::X86_64] {
            let mut g = Guest::new(cfg(arch, policy, false)).unwrap();
            let f = fault(0x0900_2000, Access::Exec, None);
            let d = g.handle_fault(0, &f);
            assert_eq!(d.kind, FaultKind::Violation(ViolationKind::Attr));
            assert_eq!(d.action, action, "a fetch cannot be skipped");
            assert_eq!(g.counters().violations[kind_index(ViolationKind::Attr)], 1);
            // Reads and writes of the device region stay spurious (re-derived, retried).
            let r = fault(0x0900_2000, Access::Read, Some(4));
            assert_eq!(g.handle_fault(0, &r).kind, FaultKind::Spurious);
        }
    }
    let mut g = Guest::new(cfg(Arch::Aarch64, ViolationPolicy::Halt, false)).unwrap();
    let d = g.handle_fault(0, &fault(0x0900_0000, Access::Exec, None));
    assert_eq!(d.kind, FaultKind::Violation(ViolationKind::Attr));
    assert!(matches!(d.action, Action::Stop(_)));
}

#[test]
fn config_and_host_attribute_errors() {
    let mut c = cfg(Arch::X86_64, ViolationPolicy::Skip, false);
    c.regions.push(MemRegion {
        gpa: GuestPhysAddr::new(MIB),
        len: 4096,
        hpa: HostPhysAddr::new(0),
        kind: RegionKind::Device,
    });
    assert!(matches!(Guest::new(c), Err(ConfigError::Overlap(..))));
    let mut c = cfg(Arch::X86_64, ViolationPolicy::Skip, false);
    c.regions[0].len = 100;
    assert!(matches!(Guest::new(c), Err(ConfigError::BadRegion(_))));
    let mut g = Guest::new(cfg(Arch::X86_64, ViolationPolicy::Skip, false)).unwrap();
    assert_eq!(
        g.set_host_attributes(0x1000, 0x1000, 1, 1),
        Err(ConfigError::Attr(StoreError::NonZeroFlags))
    );
    assert_eq!(
        g.set_host_attributes(15 * MIB, 2 * MIB, 1, 0),
        Err(ConfigError::AttrOutsideRam {
            address: 15 * MIB,
            size: 2 * MIB
        })
    );
    assert_eq!(
        g.set_host_attributes(0x1000, 0x1000, 4, 0),
        Err(ConfigError::Attr(StoreError::Unsupported(Perms::X)))
    );
    assert!(g
        .set_host_attributes(0x1000, 0x1000, 5, 0)
        .unwrap()
        .is_some());
}

#[test]
fn derivation_into_ept_and_sppt() {
    let mut g = Guest::new(cfg(Arch::X86_64, ViolationPolicy::Skip, true)).unwrap();
    let mut mem = FakePhysMem::new();
    let mut tlb = RecordingFlush::default();
    let mut ept = Ept::<false>::new_ept(&mut mem, true).unwrap();
    let mut sppt = Sppt::new(&mut mem).unwrap();
    let full = g.full_range().unwrap();
    g.sync_ept(&mut mem, &mut ept, Some(&mut sppt), full, &mut tlb)
        .unwrap();
    let pages0 = ept.stats().table_pages;
    let (m, level) = ept.translate(&mem, GuestPhysAddr::new(0x5000)).unwrap();
    assert_eq!((m.attrs.perms, level), (Perms::RWX, 1));
    assert!(
        ept.translate(&mem, GuestPhysAddr::new(17 * MIB)).is_none(),
        "hole"
    );
    let (m, _) = ept
        .translate(&mem, GuestPhysAddr::new(0x0900_0000))
        .unwrap();
    assert_eq!(
        (m.attrs.perms, m.attrs.mem),
        (Perms::RW, crate::pt::MemType::Uncached)
    );
    let mut t = tr();
    let (_, r) = result(g.handle_hypercall(&hc(11, [ROE_MPROTECT_CHUNK, 0x6080, 1]), &mut t));
    let inv = g
        .sync_ept(&mut mem, &mut ept, Some(&mut sppt), r.unwrap(), &mut tlb)
        .unwrap();
    assert!(inv.is_needed());
    let (m, level) = ept.translate(&mem, GuestPhysAddr::new(0x6000)).unwrap();
    assert_eq!((m.attrs.perms, m.attrs.spp, level), (Perms::RX, true, 0));
    let v = sppt.get(&mem, GuestPhysAddr::new(0x6000)).unwrap();
    // Byte 0x80 is the first of sub-page 1: sub-page 0 is not writable either (a store
    // starting there can reach it).
    assert!(!v.writable(0) && !v.writable(1) && v.writable(2));
    assert!(ept.stats().table_pages > pages0);
    // ROE on the same page: no SPP any more, plain read-only.
    let (_, r) = result(g.handle_hypercall(&hc(11, [ROE_MPROTECT, 0x6000, 1]), &mut t));
    g.sync_ept(&mut mem, &mut ept, Some(&mut sppt), r.unwrap(), &mut tlb)
        .unwrap();
    let (m, _) = ept.translate(&mem, GuestPhysAddr::new(0x6000)).unwrap();
    assert_eq!((m.attrs.perms, m.attrs.spp), (Perms::RX, false));
}

#[test]
fn store_exhaustion_returns_enomem_and_protects_nothing() {
    let mut c = cfg(Arch::X86_64, ViolationPolicy::Skip, false);
    c.limits = StoreLimits {
        max_runs: 4,
        max_chunk_pages: 2,
    };
    let mut g = Guest::new(c).unwrap();
    let mut t = tr();
    const ENOMEM: u64 = (-12i64) as u64;
    assert_eq!(
        result(g.handle_hypercall(&hc(11, [ROE_MPROTECT_CHUNK, 0x1000, 0x1001]), &mut t)).0,
        0x1001
    );
    // A third chunk page exceeds the limit: -ENOMEM, nothing recorded.
    assert_eq!(
        result(g.handle_hypercall(&hc(11, [ROE_MPROTECT_CHUNK, 0x5000, 1]), &mut t)),
        (ENOMEM, None)
    );
    assert!(!g.store().byte_locked(GuestPhysAddr::new(0x5000)));
    assert_eq!(g.store().chunk_pages(), 2);
    // Scattered pages need more runs than allowed: -ENOMEM, none locked.
    // Every second page, via a translator with a stride of two.
    struct Stride;
    impl GuestTranslate for Stride {
        fn translate(&mut self, gva: GuestVirtAddr) -> Result<GuestPhysAddr, ()> {
            Ok(GuestPhysAddr::new(0x40_0000 + gva.as_u64() * 2))
        }
    }
    assert_eq!(
        result(g.handle_hypercall(&hc(11, [ROE_MPROTECT, 0, 8]), &mut Stride)),
        (ENOMEM, None)
    );
    assert!(!g.store().state(0x400).roe);
    assert!(!g.store().state(0x402).roe);
    assert_eq!(g.store().chunk_pages(), 2);
}

#[test]
fn repeated_spurious_fault_stops_instead_of_looping() {
    let mut g = Guest::new(cfg(Arch::X86_64, ViolationPolicy::Skip, false)).unwrap();
    let f = fault(0x8000, Access::Write, Some(1));
    for _ in 0..SPURIOUS_LIMIT {
        assert_eq!(g.handle_fault(0, &f).action, Action::Retry);
    }
    let d = g.handle_fault(0, &f);
    assert_eq!(d.kind, FaultKind::Spurious);
    assert!(matches!(d.action, Action::Stop(_)));
    // Another address starts a new streak.
    assert_eq!(
        g.handle_fault(0, &fault(0x9000, Access::Write, Some(1)))
            .action,
        Action::Retry
    );
}

#[test]
fn shadow_step_decisions_per_policy() {
    for policy in [
        ViolationPolicy::Skip,
        ViolationPolicy::Inject,
        ViolationPolicy::Halt,
    ] {
        let mut g = Guest::new(cfg(Arch::X86_64, policy, false)).unwrap();
        let mut t = tr();
        g.handle_hypercall(&hc(11, [ROE_MPROTECT, 0x5000, 1]), &mut t);
        g.handle_hypercall(&hc(11, [ROE_MPROTECT_CHUNK, 0x6008, 4]), &mut t);
        let viol_action = match policy {
            ViolationPolicy::Skip => Action::Advance,
            ViolationPolicy::Inject => Action::InjectFault,
            ViolationPolicy::Halt => Action::Stop(StopReason {
                status: STATUS_BULWARK_FAILURE,
                reason: reason::VIOLATION_HALT,
            }),
        };
        // Without the opt-in an unsized chunk write is never guessed.
        let d = g.handle_fault(0, &fault(0x6000, Access::Write, None));
        assert_eq!(d.kind, FaultKind::NeedsAccessSize);
        g.enable_shadow_step();
        // Unprotected faulting byte: step first, decide afterwards.
        let f = fault(0x6004, Access::Write, None);
        let d = g.handle_fault(0, &f);
        assert_eq!((d.kind, d.action), (FaultKind::ShadowStep, Action::Retry));
        assert_eq!(g.counters().violations, [0, 0, 0, 0]);
        // Nothing protected changed: an emulated store, no violation.
        let d = g.shadow_step_done(0, &f, None);
        assert_eq!(
            (d.kind, d.action),
            (FaultKind::ChunkPassThrough, Action::Advance)
        );
        assert_eq!(g.counters().emulated_stores, 1);
        // A protected byte changed: a roe-chunk violation at that byte, per policy.
        let d = g.shadow_step_done(0, &f, Some(GuestPhysAddr::new(0x6009)));
        assert_eq!(d.kind, FaultKind::Violation(ViolationKind::RoeChunk));
        assert_eq!(d.action, viol_action);
        // ... or a roe violation when the changed byte is on a ROE page (a straddling store).
        let d = g.shadow_step_done(0, &f, Some(GuestPhysAddr::new(0x5000)));
        assert_eq!(d.kind, FaultKind::Violation(ViolationKind::Roe));
        // Protected faulting byte: a violation at once (skip: step with the bytes dropped).
        let d = g.handle_fault(0, &fault(0x600b, Access::Write, None));
        assert_eq!(d.kind, FaultKind::Violation(ViolationKind::RoeChunk));
        assert_eq!(d.action, viol_action);
        // ROE page: unchanged decision.
        let d = g.handle_fault(0, &fault(0x5ff8, Access::Write, None));
        assert_eq!(d.kind, FaultKind::Violation(ViolationKind::Roe));
        assert_eq!(d.action, viol_action);
        assert_eq!(g.counters().violations, [2, 2, 0, 0]);
        // Masks: whole ROE page, exact chunk bytes, nothing elsewhere.
        assert_eq!(g.protected_page(5), [u64::MAX; 64]);
        let m = g.protected_page(6);
        assert_eq!(m[0], 0xf00);
        assert!(m[1..].iter().all(|w| *w == 0));
        assert_eq!(g.protected_page(7), [0; 64]);
    }
}

#[test]
fn shadow_mapping_and_restore() {
    let mut g = Guest::new(cfg(Arch::X86_64, ViolationPolicy::Skip, true)).unwrap();
    let mut mem = FakePhysMem::new();
    let mut tlb = RecordingFlush::default();
    let mut ept = Ept::<false>::new_ept(&mut mem, true).unwrap();
    let mut sppt = Sppt::new(&mut mem).unwrap();
    let full = g.full_range().unwrap();
    g.sync_ept(&mut mem, &mut ept, Some(&mut sppt), full, &mut tlb)
        .unwrap();
    let pages0 = ept.stats().table_pages;
    let mut t = tr();
    g.handle_hypercall(&hc(11, [ROE_MPROTECT_CHUNK, 0x6080, 1]), &mut t);
    g.handle_hypercall(&hc(11, [ROE_MPROTECT, 0x0020_0000, 1]), &mut t);
    g.set_host_attributes(0x9000, 0x1000, 1, 0).unwrap();
    let r = GpaRange::new(GuestPhysAddr::new(0), 4 * MIB).unwrap();
    g.sync_ept(&mut mem, &mut ept, Some(&mut sppt), r, &mut tlb)
        .unwrap();
    let before: Vec<_> = (0..1024u64)
        .map(|p| ept.translate(&mem, GuestPhysAddr::new(p * 4096)))
        .collect();
    let shadow = HostPhysAddr::new(0x7777_0000);
    for page in [0x6000u64, 0x0020_0000, 0x0030_0000] {
        let gpa = GuestPhysAddr::new(page);
        let inv = g
            .sync_ept_shadow(
                &mut mem,
                &mut ept,
                GuestPhysAddr::new(page + 0x123),
                shadow,
                &mut tlb,
            )
            .unwrap();
        assert!(inv.is_needed(), "a valid leaf changed: flushed");
        let (m, level) = ept.translate(&mem, gpa).unwrap();
        assert_eq!(
            (m.hpa, m.attrs.perms, m.attrs.spp, level),
            (shadow, Perms::RWX, false, 0)
        );
        // Every other page is unchanged.
        for p in 0..1024u64 {
            if p * 4096 != page {
                let now = ept.translate(&mem, GuestPhysAddr::new(p * 4096));
                assert_eq!(
                    now.map(|x| x.0),
                    before[p as usize].map(|x| x.0),
                    "page {p:#x}"
                );
            }
        }
        // Restored through the ordinary derivation (a split large page merges back).
        g.sync_ept(
            &mut mem,
            &mut ept,
            Some(&mut sppt),
            GpaRange::new(gpa, 4096).unwrap(),
            &mut tlb,
        )
        .unwrap();
        for p in 0..1024u64 {
            assert_eq!(
                ept.translate(&mem, GuestPhysAddr::new(p * 4096)),
                before[p as usize]
            );
        }
    }
    // Refused, tables unchanged: a page the host attributes make read-only, not RAM,
    // an unaligned shadow.
    let t0 = ept.stats().table_pages;
    assert!(g
        .sync_ept_shadow(
            &mut mem,
            &mut ept,
            GuestPhysAddr::new(0x9000),
            shadow,
            &mut tlb
        )
        .is_err());
    assert!(g
        .sync_ept_shadow(
            &mut mem,
            &mut ept,
            GuestPhysAddr::new(17 * MIB),
            shadow,
            &mut tlb
        )
        .is_err());
    assert!(g
        .sync_ept_shadow(
            &mut mem,
            &mut ept,
            GuestPhysAddr::new(0x6000),
            HostPhysAddr::new(0x7777_0008),
            &mut tlb
        )
        .is_err());
    assert_eq!(ept.stats().table_pages, t0);
    assert!(t0 >= pages0);
}

/// The DMA view (an IOMMU's table, here in the stage-1 format an SMMU without stage 2 uses):
/// RAM only, read/write at most, ROE/chunk pages read-only, `attr=` rights, re-derived with the
/// CPU's stage 2 after a lock.
#[test]
fn dma_view_follows_the_store() {
    use crate::pt::stage1::Stage1;
    use bulwark_abi::smccc::BULWARK_ROE;
    let mut g = Guest::new(cfg(Arch::Aarch64, ViolationPolicy::Skip, false)).unwrap();
    g.set_host_attributes(0x7000, 0x1000, 1, 0).unwrap(); // r--
    g.set_host_attributes(0x9000, 0x1000, 0, 0).unwrap(); // ---
    let mut mem = FakePhysMem::new();
    let mut tlb = RecordingFlush::default();
    let mut t1 = Stage1::new_stage1(&mut mem, 39).unwrap();
    let full = g.full_range().unwrap();
    g.sync_dma(&mut mem, &mut t1, full, &mut tlb).unwrap();
    let perms = |mem: &FakePhysMem, t1: &Stage1, a: u64| {
        t1.translate(mem, GuestPhysAddr::new(a))
            .map(|(m, _)| (m.hpa.as_u64(), m.attrs.perms))
    };
    // Ordinary RAM: read/write, never executable, same host address as the CPU's view.
    assert_eq!(perms(&mem, &t1, 0x1000), Some((0x1000, Perms::RW)));
    assert_eq!(perms(&mem, &t1, 33 * MIB), Some((33 * MIB, Perms::RW)));
    // attr= r--: read-only; attr= ---: absent.
    assert_eq!(perms(&mem, &t1, 0x7000), Some((0x7000, Perms::R)));
    assert_eq!(perms(&mem, &t1, 0x9000), None);
    // The hole between the RAM regions and the passed-through device: absent.
    assert_eq!(perms(&mem, &t1, 20 * MIB), None);
    assert_eq!(perms(&mem, &t1, 0x0900_0000), None);
    assert_eq!(
        g.dma_fault_kind(GuestPhysAddr::new(20 * MIB), true),
        Some("unmapped")
    );
    assert_eq!(
        g.dma_fault_kind(GuestPhysAddr::new(0x7000), true),
        Some("attr")
    );
    assert_eq!(
        g.dma_fault_kind(GuestPhysAddr::new(0x9000), false),
        Some("attr")
    );
    assert_eq!(g.dma_fault_kind(GuestPhysAddr::new(0x7000), false), None);
    assert_eq!(g.dma_fault_kind(GuestPhysAddr::new(0x2000), true), None);

    // A ROE lock: the hypercall names the range to re-derive; the DMA view of it turns
    // read-only (and the engine asks for the invalidation of exactly that page).
    let mut t = tr();
    let (v, r) = result(g.handle_hypercall(
        &hc(u64::from(BULWARK_ROE), [ROE_MPROTECT, 0x2000, 1]),
        &mut t,
    ));
    assert_eq!(v, 1);
    let r = r.unwrap();
    tlb.calls.clear();
    let inv = g.sync_dma(&mut mem, &mut t1, r, &mut tlb).unwrap();
    assert_eq!(perms(&mem, &t1, 0x2000), Some((0x2000, Perms::R)));
    assert_eq!(perms(&mem, &t1, 0x3000), Some((0x3000, Perms::RW)));
    let inv = inv.range.unwrap();
    assert!(inv.start().as_u64() <= 0x2000 && inv.end().as_u64() >= 0x3000);
    assert!(!tlb.calls.is_empty());
    assert_eq!(
        g.dma_fault_kind(GuestPhysAddr::new(0x2000), true),
        Some("roe")
    );
    assert_eq!(g.dma_fault_kind(GuestPhysAddr::new(0x2000), false), None);

    // Chunk-protected bytes: the whole page is read-only for devices.
    let (v, r) = result(g.handle_hypercall(
        &hc(u64::from(BULWARK_ROE), [ROE_MPROTECT_CHUNK, 0x4010, 8]),
        &mut t,
    ));
    assert_eq!(v, 8);
    g.sync_dma(&mut mem, &mut t1, r.unwrap(), &mut tlb).unwrap();
    assert_eq!(perms(&mem, &t1, 0x4000), Some((0x4000, Perms::R)));
    assert_eq!(
        g.dma_fault_kind(GuestPhysAddr::new(0x4800), true),
        Some("roe-chunk")
    );

    // A full re-derivation changes nothing more (the view is a function of the store).
    tlb.calls.clear();
    let inv = g.sync_dma(&mut mem, &mut t1, full, &mut tlb).unwrap();
    assert_eq!(inv.range, None);
    assert!(tlb.calls.is_empty());
}

/// Issue 18.3, measured with Linux 6.12 (`CONFIG_ARM_PKVM_GUEST`): its ioremap hook registers
/// the whole GICv3 redistributor region, whose RD_base control pages Bulwark emulates (not in
/// the memory map); MMIO_GUARD refused the first one and the kernel WARNed at boot. An emulated
/// page is accepted (it enrols like any registration, maps nothing); everything else keeps its
/// rules, and the seed's MAP is unchanged.
#[test]
fn arm64_upstream_mmio_guard_accepts_emulated_pages() {
    use bulwark_abi::smccc::*;
    let inval = (-3i64) as u64;
    let call = |g: &mut Guest, fid: u32, a: [u64; 3]| {
        let mut t = tr();
        g.handle_hypercall(&hc(u64::from(fid), a), &mut t)
    };
    let mut g = Guest::new(cfg(Arch::Aarch64, ViolationPolicy::Skip, false)).unwrap();
    g.set_hyp_abi(HypAbi::Upstream);
    // RAM (0x3000), an unaligned page and a passed-through device page are never "emulated".
    g.set_emulated_mmio(&[0x080a_0000, 0x3000, 0x080c_0010, 0x0900_0000, 0x080a_0000]);
    for a in [
        [0x080a_0000, 1, 0],
        [0x080a_0000, 0, 1],
        [0x080a_0010, 0, 0],
        [0x080b_0000, 0, 0],
        [0x080c_0000, 0, 0],
        [0x3000, 0, 0],
    ] {
        assert_eq!(result(call(&mut g, PKVM_MMIO_GUARD, a)).0, inval, "{a:x?}");
    }
    assert!(!g.mmio_guard().enrolled());
    // The first registration, of an emulated page, enrols: the device range is re-derived.
    let (v, r) = result(call(&mut g, PKVM_MMIO_GUARD, [0x080a_0000, 0, 0]));
    assert_eq!(v, 0);
    assert_eq!(r, GpaRange::new(GuestPhysAddr::new(0x0900_0000), 0x10_0000));
    assert!(g.mmio_guard().enrolled());
    assert_eq!(g.mmio_guard().mapped_count(), 0, "nothing mapped for it");
    assert_eq!(g.counters().mmio_maps, 0);
    assert_eq!(
        result(call(&mut g, PKVM_MMIO_GUARD, [0x080a_0000, 0, 0])),
        (0, None)
    );
    // A passed-through page still registers (and is what mmio_maps counts).
    let (v, r) = result(call(&mut g, PKVM_MMIO_GUARD, [0x0900_0000, 0, 0]));
    assert_eq!(
        (v, r),
        (0, GpaRange::new(GuestPhysAddr::new(0x0900_0000), 4096))
    );
    assert_eq!(g.counters().mmio_maps, 1);
    // Under the seed ABI the emulated page is no MAP target (its rules are unchanged).
    let mut s = Guest::new(cfg(Arch::Aarch64, ViolationPolicy::Skip, false)).unwrap();
    s.set_emulated_mmio(&[0x080a_0000]);
    assert_eq!(result(call(&mut s, MMIO_GUARD_ENROLL, [0; 3])).0, 0);
    assert_ne!(
        result(call(&mut s, MMIO_GUARD_MAP, [0x080a_0000, 0, 0])).0,
        0
    );
}

/// The upstream pKVM ABI (`hyp-abi=upstream`): its own semantics, never the seed's, and the
/// seed's numbers are not served. The measured breach: MEM_SHARE(RAM page) enrolled the
/// guest in the MMIO guard (it landed on ENROLL), MEM_UNSHARE landed on MAP.
#[test]
fn arm64_upstream_pkvm_abi() {
    use bulwark_abi::smccc::*;
    let mut g = Guest::new(cfg(Arch::Aarch64, ViolationPolicy::Skip, false)).unwrap();
    g.set_hyp_abi(HypAbi::Upstream);
    let inval = (-3i64) as u64;
    let call = |g: &mut Guest, fid: u32, a: [u64; 3]| {
        let mut t = tr();
        g.handle_hypercall(&hc(u64::from(fid), a), &mut t)
    };
    assert_eq!(result(call(&mut g, PKVM_HYP_MEMINFO, [0; 3])).0, 4096);
    assert_eq!(result(call(&mut g, PKVM_HYP_MEMINFO, [1, 0, 0])).0, inval);
    // MEM_SHARE / MEM_UNSHARE of a RAM page: success, nothing changes.
    for fid in [PKVM_MEM_SHARE, PKVM_MEM_UNSHARE, PKVM_MEM_SHARE] {
        assert_eq!(result(call(&mut g, fid, [0x3000, 0, 0])), (0, None));
        assert!(
            !g.mmio_guard().enrolled(),
            "MEM_SHARE/UNSHARE enrolled the guard"
        );
        assert_eq!(g.mmio_guard().mapped_count(), 0);
    }
    // Bad arguments: unaligned, a device page, outside the map, non-zero x2.
    for a in [
        [0x3010, 0, 0],
        [0x0900_0000, 0, 0],
        [0x0a00_0000, 0, 0],
        [0x3000, 1, 0],
    ] {
        assert_eq!(result(call(&mut g, PKVM_MEM_SHARE, a)).0, inval);
        assert_eq!(result(call(&mut g, PKVM_MEM_UNSHARE, a)).0, inval);
    }
    assert!(!g.mmio_guard().enrolled());
    // The seed's UNMAP (5) is not served; the seed's ENROLL number (3) is MEM_SHARE here.
    assert_eq!(
        call(&mut g, MMIO_GUARD_UNMAP, [0x0900_0000, 0, 0]),
        HypercallOutcome::NotMine
    );
    assert_eq!(result(call(&mut g, MMIO_GUARD_ENROLL, [0; 3])), (0, None)); // share of page 0
    assert!(!g.mmio_guard().enrolled());
    // MMIO_GUARD: refused for RAM / unaligned / unmapped space without enrolling.
    for a in [
        [0x3000, 0, 0],
        [0x0900_0010, 0, 0],
        [0x0a00_0000, 0, 0],
        [0x0900_0000, 0, 1],
    ] {
        assert_eq!(result(call(&mut g, PKVM_MMIO_GUARD, a)).0, inval);
    }
    assert!(!g.mmio_guard().enrolled());
    // The first registration enrols: the whole device range is re-derived.
    let (v, r) = result(call(&mut g, PKVM_MMIO_GUARD, [0x0900_0000, 0, 0]));
    assert_eq!(v, 0);
    assert_eq!(r, GpaRange::new(GuestPhysAddr::new(0x0900_0000), 0x10_0000));
    assert!(g.mmio_guard().enrolled());
    assert!(g.mmio_guard().is_mapped(0x9000));
    assert_eq!(
        result(call(&mut g, PKVM_MMIO_GUARD, [0x0900_0000, 0, 0])),
        (0, None),
        "idempotent"
    );
    let (v, r) = result(call(&mut g, PKVM_MMIO_GUARD, [0x0900_1000, 0, 0]));
    assert_eq!(
        (v, r),
        (0, GpaRange::new(GuestPhysAddr::new(0x0900_1000), 4096))
    );
    // MEM_UNSHARE of a registered device page does not unregister it (it is not MAP/UNMAP).
    assert_eq!(
        result(call(&mut g, PKVM_MEM_UNSHARE, [0x0900_0000, 0, 0])).0,
        inval
    );
    assert!(g.mmio_guard().is_mapped(0x9000));
    assert_eq!(g.mmio_guard().mapped_count(), 2);
    // An unregistered device page is a violation.
    let d = g.handle_fault(
        0,
        &MemFault {
            gpa: GuestPhysAddr::new(0x0900_2000),
            gva: None,
            ip: GuestVirtAddr::new(0x1000),
            access: Access::Read,
            size: Some(4),
        },
    );
    assert_eq!(d.kind, FaultKind::Violation(ViolationKind::MmioGuard));
    // From EL0: refused.
    let mut u = hc(u64::from(PKVM_MMIO_GUARD), [0x0900_3000, 0, 0]);
    u.from_user = true;
    let mut t = tr();
    assert_eq!(result(g.handle_hypercall(&u, &mut t)).0, inval);
    assert!(!g.mmio_guard().is_mapped(0x9003));
}

/// Under the seed ABI (the default) the upstream numbers are not served: MMIO_GUARD (7) is not
/// a call, and 3/4 are the seed's ENROLL/MAP with the seed's rules.
#[test]
fn arm64_seed_abi_does_not_serve_upstream_numbers() {
    use bulwark_abi::smccc::*;
    let mut g = Guest::new(cfg(Arch::Aarch64, ViolationPolicy::Skip, false)).unwrap();
    assert_eq!(g.hyp_abi(), HypAbi::Seed);
    let mut t = tr();
    assert_eq!(
        g.handle_hypercall(&hc(u64::from(PKVM_MMIO_GUARD), [0x0900_0000, 0, 0]), &mut t),
        HypercallOutcome::NotMine
    );
    assert!(!g.mmio_guard().enrolled());
}

/// Issue 12: the core hands its store to the translator for every ROE translation, so a back
/// end's walk can refuse paging structures the guest may not read (-EINVAL, nothing locked).
#[test]
fn roe_translation_sees_the_store() {
    /// Pretends the guest's page table for every address lives in frame 7.
    struct TableInFrame7;
    impl GuestTranslate for TableInFrame7 {
        fn translate(&mut self, _gva: GuestVirtAddr) -> Result<GuestPhysAddr, ()> {
            panic!("the core must call translate_checked");
        }
        fn translate_checked(
            &mut self,
            store: &AttrStore,
            gva: GuestVirtAddr,
        ) -> Result<GuestPhysAddr, ()> {
            if !store.state(7).allowed.read() {
                return Err(());
            }
            Ok(GuestPhysAddr::new(gva.as_u64()))
        }
    }
    let mut g = Guest::new(cfg(Arch::X86_64, ViolationPolicy::Skip, false)).unwrap();
    let mut t = TableInFrame7;
    let (v, _) = result(g.handle_hypercall(&hc(11, [ROE_MPROTECT_CHUNK, 0x1000, 8]), &mut t));
    assert_eq!(v, 8);
    let mut g = Guest::new(cfg(Arch::X86_64, ViolationPolicy::Skip, false)).unwrap();
    g.set_host_attributes(0x7000, 0x1000, 0, 0).unwrap();
    for call in [[ROE_MPROTECT_CHUNK, 0x1000, 8], [ROE_MPROTECT, 0x1000, 1]] {
        let (v, r) = result(g.handle_hypercall(&hc(11, call), &mut t));
        assert_eq!((v, r), (EINVAL, None));
    }
    assert!(!g.store().state(1).roe && !g.store().state(1).chunk);
}

/// ROE_MPROTECT through a real walker: the range path (one walk per guest leaf, RAM checked
/// per piece) gives the same results and the same store as translating every page.
#[test]
fn mprotect_range_path_matches_per_page() {
    use crate::gwalk::x86::{X86PagingState, X86Walker};
    use crate::gwalk::{FakeGuestMem, WalkTranslate};

    struct PerPage<'a, T: GuestTranslate>(&'a mut T);
    impl<T: GuestTranslate> GuestTranslate for PerPage<'_, T> {
        fn translate(&mut self, gva: GuestVirtAddr) -> Result<GuestPhysAddr, ()> {
            self.0.translate(gva)
        }
    }

    // 4-level paging: VA 0..2 MiB by 4 KiB pages (the first half contiguous at 4 MiB, the
    // second half backwards from 8 MiB), VA 2..4 MiB one 2 MiB page at 6 MiB, VA 4..6 MiB one
    // 2 MiB page at 16 MiB (the hole the core knows; the walker's memory calls it RAM).
    let mut mem = FakeGuestMem::new();
    mem.add_ram(GpaRange::new(GuestPhysAddr::new(0), 64 * MIB).unwrap());
    let w = |m: &mut FakeGuestMem, a: u64, v: u64| assert!(m.write_u64(GuestPhysAddr::new(a), v));
    w(&mut mem, 0x1000, 0x2000 | 3);
    w(&mut mem, 0x2000, 0x3000 | 3);
    w(&mut mem, 0x3000, 0x4000 | 3);
    w(&mut mem, 0x3008, 0x60_0000 | 0x83);
    w(&mut mem, 0x3010, 0x100_0000 | 0x83);
    for i in 0..512u64 {
        let page = if i < 256 {
            0x40_0000 + i * 0x1000
        } else {
            0x80_0000 + (511 - i) * 0x1000
        };
        w(&mut mem, 0x4000 + i * 8, page | 3);
    }
    let state = X86PagingState::new(1 | 1 << 31, 0x1000, 1 << 5, 1 << 8 | 1 << 10);
    let cases: [(u64, u64, bool); 6] = [
        (0, 1024, true),
        (0x1ff000, 2, true),
        (0xff000, 3, true),
        (0x3ff000, 2, false),
        (0x60_0000, 1, false),
        (0x20_0000, 512, true),
    ];
    for (start, pages, ok) in cases {
        let mut a = Guest::new(cfg(Arch::X86_64, ViolationPolicy::Skip, false)).unwrap();
        let mut b = Guest::new(cfg(Arch::X86_64, ViolationPolicy::Skip, false)).unwrap();
        let call = hc(11, [ROE_MPROTECT, start, pages]);
        let mut ta = WalkTranslate::new(X86Walker::new(state), &mem);
        let ra = result(a.handle_hypercall(&call, &mut ta));
        let mut tb = WalkTranslate::new(X86Walker::new(state), &mem);
        let rb = result(b.handle_hypercall(&call, &mut PerPage(&mut tb)));
        assert_eq!(ra, rb, "start {start:#x} pages {pages}");
        assert_eq!(ra.0 == pages, ok, "start {start:#x} pages {pages}: {ra:?}");
        for f in 0..0x3000 {
            assert_eq!(a.store().state(f), b.store().state(f), "frame {f:#x}");
        }
    }
}
