#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use crate::cpuid::*;
use crate::errno::*;
use crate::policy::*;
use crate::roe::*;
use crate::smccc::*;

#[test]
fn roe_ops_round_trip_and_unknown_is_error() {
    for op in [RoeOp::Version, RoeOp::Mprotect, RoeOp::MprotectChunk] {
        assert_eq!(RoeOp::decode(op.encode()), Ok(op));
    }
    for v in [3u64, 4, 0x100, u64::MAX, 1 << 32] {
        assert_eq!(RoeOp::decode(v), Err(UnknownRoeOp(v)));
    }
    assert_eq!(KVM_HC_ROE, 11);
    assert_eq!(ROE_IMPL_VERSION, 2);
    assert_eq!(RoeOp::MprotectChunk.since_version(), 2);
    for r in [
        RoeRequest::Version,
        RoeRequest::Mprotect {
            start: 0x1000,
            pages: 3,
        },
        RoeRequest::MprotectChunk {
            start: 0x1003,
            len: 17,
        },
    ] {
        let (op, a1, a2) = r.encode();
        assert_eq!(RoeRequest::decode(op, a1, a2), Ok(r));
        assert_eq!(r.op().encode(), op);
    }
    assert_eq!(RoeRequest::decode(7, 0, 0), Err(UnknownRoeOp(7)));
}

#[test]
fn errno_values_and_registers() {
    assert_eq!(Errno::NoSys.as_i64(), -1000);
    assert_eq!(Errno::Inval.as_i64(), -22);
    assert_eq!(Errno::NoMem.as_i64(), -12);
    for e in [Errno::NoSys, Errno::Inval, Errno::NoMem] {
        assert_eq!(Errno::from_i64(e.as_i64()), Ok(e));
        assert_eq!(decode_result(e.to_reg(false), false), Err(Ok(e)));
        assert_eq!(decode_result(e.to_reg(true), true), Err(Ok(e)));
        assert_eq!(e.to_reg(true) >> 32, 0);
    }
    assert_eq!(Errno::Inval.to_reg(false), (-22i64) as u64);
    assert_eq!(Errno::Inval.to_reg(true), 0xffff_ffea);
    assert_eq!(Errno::from_i64(-5), Err(UnknownErrno(-5)));
    assert_eq!(Errno::from_i64(0), Err(UnknownErrno(0)));
    assert_eq!(decode_result(5, false), Ok(5));
    assert_eq!(
        decode_result((-7i64) as u64, false),
        Err(Err(UnknownErrno(-7)))
    );
    assert_eq!(smccc_ret::NOT_SUPPORTED_REG, u64::MAX);
}

#[test]
fn cpuid_signature_and_features() {
    let l = signature_leaf();
    assert_eq!(l[0], LEAF_FEATURES);
    let mut bytes = [0u8; 12];
    bytes[0..4].copy_from_slice(&l[1].to_le_bytes());
    bytes[4..8].copy_from_slice(&l[2].to_le_bytes());
    bytes[8..12].copy_from_slice(&l[3].to_le_bytes());
    assert_eq!(&bytes, b"BulwarkBulwa");
    assert!(is_bulwark(l[1], l[2], l[3]));
    assert!(!is_bulwark(0x4b4d564b, 0x564b4d56, 0x4d));
    let f = Features {
        roe_version: 2,
        roe_mprotect: true,
        roe_chunk: true,
        chunk_spp: true,
        policy: ViolationPolicy::Halt,
    };
    let regs = f.encode();
    assert_eq!(regs, [0x702, 2, 0, 0]);
    assert_eq!(Features::decode(regs), Ok(f));
    assert_eq!(
        Features::decode([1 << 11, 0, 0, 0]),
        Err(BadFeatures::ReservedBits {
            reg: "eax",
            bits: 1 << 11
        })
    );
    assert_eq!(
        Features::decode([2, 4, 0, 0]),
        Err(BadFeatures::ReservedBits {
            reg: "ebx",
            bits: 4
        })
    );
    assert_eq!(
        Features::decode([2, 3, 0, 0]),
        Err(BadFeatures::UnknownPolicy(3))
    );
    assert_eq!(
        Features::decode([2, 0, 1, 0]),
        Err(BadFeatures::ReservedBits {
            reg: "ecx",
            bits: 1
        })
    );
    assert_eq!(
        Features::decode([2, 0, 0, 9]),
        Err(BadFeatures::ReservedBits {
            reg: "edx",
            bits: 9
        })
    );
}

#[test]
fn smccc_ids_round_trip_unknown_is_error() {
    for abi in HypAbi::ALL {
        assert_eq!(HypAbi::parse(abi.as_str()), Ok(abi));
        for f in Function::ALL {
            // Each function is served under its own ABI (or both) and nowhere decodes to a
            // different function.
            match Function::decode(f.encode(), abi) {
                Ok(g) => assert!(g == f || g.encode() == f.encode()),
                Err(UnknownFunction(v)) => assert_eq!(v, f.encode()),
            }
        }
        for v in [
            0xC600_0000u32,
            0xC600_0001,
            0xC600_0006,
            0xC600_0008,
            0x8600_0001,
            PSCI_CPU_SUSPEND_32,
            PSCI_CPU_SUSPEND_64,
            0,
            u32::MAX,
        ] {
            assert_eq!(Function::decode(v, abi), Err(UnknownFunction(v)));
        }
    }
    assert_eq!(HypAbi::default(), HypAbi::Seed);
    assert_eq!(HypAbi::parse("Seed"), Err(UnknownHypAbi));
    for f in Function::ALL {
        let seed = Function::decode(f.encode(), HypAbi::Seed) == Ok(f);
        let up = Function::decode(f.encode(), HypAbi::Upstream) == Ok(f);
        assert!(seed || up, "{f:?} served under no ABI");
    }
    // The two numberings collide on 2..=4 and never decode across.
    assert_eq!(
        Function::decode(0xC600_0003, HypAbi::Seed),
        Ok(Function::MmioGuardEnroll)
    );
    assert_eq!(
        Function::decode(0xC600_0003, HypAbi::Upstream),
        Ok(Function::PkvmMemShare)
    );
    assert_eq!(
        Function::decode(0xC600_0004, HypAbi::Upstream),
        Ok(Function::PkvmMemUnshare)
    );
    assert!(Function::decode(MMIO_GUARD_UNMAP, HypAbi::Upstream).is_err());
    assert!(Function::decode(PKVM_MMIO_GUARD, HypAbi::Seed).is_err());
    // Distinct IDs within one ABI.
    for abi in HypAbi::ALL {
        let served = |f: &&Function| Function::decode(f.encode(), abi) == Ok(**f);
        for (i, a) in Function::ALL.iter().filter(served).enumerate() {
            for b in Function::ALL.iter().filter(served).skip(i + 1) {
                assert_ne!(a.encode(), b.encode());
            }
        }
    }
    assert_eq!(MMIO_GUARD_INFO, 0xC600_0002);
    assert_eq!(MMIO_GUARD_UNMAP, 0xC600_0005);
    assert_eq!(PKVM_MMIO_GUARD, 0xC600_0007);
    assert!((0xC600_0040..=0xC600_FFFF).contains(&BULWARK_ROE));
    // Vendor range, SMC64 fast, outside KVM's numbers.
    assert_eq!(BULWARK_ROE >> 24, 0xC6);
    assert!(function_number(BULWARK_ROE) >= 0x40);
}

#[test]
fn vendor_hyp_features_in_kvm_layout() {
    // Seed: FEATURES (0) and MMIO guard 2..=5 in x0; ROE (64) and GUEST_EXIT (65) in x2 bits 0-1.
    assert_eq!(vendor_hyp_features(HypAbi::Seed), [0b11_1101, 0, 0b11, 0]);
    // Upstream: FEATURES, HYP_MEMINFO, MEM_SHARE, MEM_UNSHARE, MMIO_GUARD (7); no bit 5.
    assert_eq!(
        vendor_hyp_features(HypAbi::Upstream),
        [0b1001_1101, 0, 0b11, 0]
    );
    for abi in HypAbi::ALL {
        let f = vendor_hyp_features(abi);
        // Linux's kvm_arm_hyp_service_available(64) is ROE.
        assert!(hyp_service_available(f, function_number(BULWARK_ROE)));
        assert!(hyp_service_available(
            f,
            function_number(BULWARK_GUEST_EXIT)
        ));
        assert!(!hyp_service_available(f, 1)); // PTP: not offered
        assert!(!hyp_service_available(f, 32));
        assert!(!hyp_service_available(f, 200));
        for n in 0..128 {
            let fid = 0xC600_0000 | n;
            let fid32 = 0x8600_0000 | n;
            let served = Function::decode(fid, abi).is_ok() || Function::decode(fid32, abi).is_ok();
            assert_eq!(
                hyp_service_available(f, n),
                served,
                "function {n} under {abi:?}"
            );
        }
    }
}

#[test]
fn policy_and_kind_words() {
    for p in [
        ViolationPolicy::Skip,
        ViolationPolicy::Inject,
        ViolationPolicy::Halt,
    ] {
        assert_eq!(ViolationPolicy::parse(p.as_str()), Ok(p));
        assert_eq!(ViolationPolicy::decode(p.encode()), Ok(p));
    }
    assert_eq!(ViolationPolicy::default(), ViolationPolicy::Skip);
    assert_eq!(ViolationPolicy::parse("Skip"), Err(UnknownPolicy));
    assert_eq!(ViolationPolicy::decode(3), Err(UnknownPolicy));
    for k in [
        ViolationKind::Roe,
        ViolationKind::RoeChunk,
        ViolationKind::MmioGuard,
        ViolationKind::Attr,
    ] {
        assert_eq!(ViolationKind::parse(k.as_str()), Ok(k));
    }
    assert_eq!(ViolationKind::parse("rop"), Err(UnknownKind));
}

#[test]
fn dropped_note_parses_only_its_own_format() {
    use crate::console::parse_dropped_note;
    assert_eq!(
        parse_dropped_note("bulwark: WARN console dropped=3 (violation lines) seq=9 mac=00"),
        Some(3)
    );
    assert_eq!(
        parse_dropped_note("bulwark: WARN console dropped=12"),
        Some(12)
    );
    assert_eq!(parse_dropped_note("bulwark: WARN console dropped= 3"), None);
    assert_eq!(parse_dropped_note("bulwark: WARN console dropped=3x"), None);
    assert_eq!(parse_dropped_note("bulwark: WARN console dropped=-1"), None);
    assert_eq!(parse_dropped_note("bulwark: INFO console dropped=3"), None);
    assert_eq!(
        parse_dropped_note("guest| bulwark: WARN console dropped=3"),
        None
    );
}
