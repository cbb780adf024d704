//! Fuzz-target bodies, shared by the `cargo fuzz` targets in `fuzz/` (nightly + libFuzzer) and
//! by the bounded randomized test `tests/fuzz_stable.rs` that runs on stable in CI.
//!
//! Each body takes arbitrary bytes, drives guest-reachable entry points with them and checks
//! invariants. A broken invariant is returned as `Err(text)`; the caller panics. Any panic
//! inside the core is a finding as well.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use bulwark_abi::cpuid::Features;
use bulwark_abi::errno::{decode_result, Errno};
use bulwark_abi::roe::{RoeRequest, KVM_HC_ROE};
use bulwark_abi::smccc::{self, Function};

use crate::addr::{GpaRange, GuestPhysAddr, GuestVirtAddr, HostPhysAddr, PAGE_SIZE};
use crate::exit::{Action, Hypercall};
use crate::guest::{
    Arch, Guest, GuestConfig, GuestTranslate, HypercallOutcome, MemRegion, RegionKind,
};
use crate::physmem::FakePhysMem;
use crate::pt::ept::Ept;
use crate::pt::{LeafAttrs, Perms, PtError, RecordingFlush};
use crate::store::{AttrStore, StoreError, StoreLimits};
use crate::violation::ViolationPolicy;

/// Reads little-endian words from fuzz input; missing bytes read as 0.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }
    fn u64(&mut self) -> u64 {
        let mut v = 0u64;
        for i in 0..8 {
            v |= u64::from(self.u8()) << (8 * i);
        }
        v
    }
    /// A value biased towards interesting edges.
    fn interesting(&mut self) -> u64 {
        match self.u8() % 8 {
            0 => 0,
            1 => u64::MAX - u64::from(self.u8()),
            2 => u64::from(self.u8()) * PAGE_SIZE,
            3 => 1 << (self.u8() % 64),
            4 => u64::from(self.u8()),
            5 => 0xffff_ffff_u64
                .wrapping_add(u64::from(self.u8()))
                .wrapping_sub(128),
            _ => self.u64(),
        }
    }
}

struct FuzzTr {
    /// gva page -> gpa page (byte 0xff: untranslatable).
    map: [u8; 16],
}

impl GuestTranslate for FuzzTr {
    fn translate(&mut self, gva: GuestVirtAddr) -> Result<GuestPhysAddr, ()> {
        let page = gva.as_u64() / PAGE_SIZE;
        let i = usize::try_from(page % 16).map_err(|_| ())?;
        match self.map.get(i) {
            Some(0xff) | None => Err(()),
            Some(p) => Ok(GuestPhysAddr::new(
                u64::from(*p) * PAGE_SIZE * 64 + gva.as_u64() % PAGE_SIZE,
            )),
        }
    }
}

fn guest(arch: Arch) -> Result<Guest, String> {
    Guest::new(GuestConfig {
        arch,
        regions: alloc::vec![
            MemRegion {
                gpa: GuestPhysAddr::new(0),
                len: 8 << 20,
                hpa: HostPhysAddr::new(0),
                kind: RegionKind::Ram,
            },
            MemRegion {
                gpa: GuestPhysAddr::new(0x0900_0000),
                len: 1 << 20,
                hpa: HostPhysAddr::new(0x0900_0000),
                kind: RegionKind::Device,
            },
        ],
        policy: ViolationPolicy::Skip,
        ratelimit: 4,
        exec_only: false,
        spp: true,
        limits: StoreLimits {
            max_runs: 64,
            max_chunk_pages: 8,
        },
    })
    .map_err(|e| format!("{e:?}"))
}

/// Fuzz target 1: the hypercall argument decoder and dispatcher (plus the ABI decoders).
pub fn hypercall(data: &[u8]) -> Result<(), String> {
    let mut inp = Input { data, pos: 0 };
    // ABI decoders: unknown values are errors, known ones round-trip.
    let (a, b, c) = (inp.interesting(), inp.interesting(), inp.interesting());
    if let Ok(r) = RoeRequest::decode(a, b, c) {
        if r.encode() != (a, if a == 0 { 0 } else { b }, if a == 0 { 0 } else { c }) {
            return Err(format!("RoeRequest round trip {a:#x} {b:#x} {c:#x}"));
        }
    } else if a <= 2 {
        return Err(format!("known sub-op {a} refused"));
    }
    let fid = (inp.u64() & 0xffff_ffff) as u32;
    for abi in smccc::HypAbi::ALL {
        if let Ok(f) = Function::decode(fid, abi) {
            if f.encode() != fid {
                return Err(format!("Function round trip {fid:#x}"));
            }
        }
    }
    let regs = [
        inp.u64() as u32,
        inp.u64() as u32,
        inp.u64() as u32,
        inp.u64() as u32,
    ];
    if let Ok(f) = Features::decode(regs) {
        if f.encode() != regs {
            return Err(format!("Features round trip {regs:x?}"));
        }
    }
    let v = inp.interesting() as i64;
    if let Ok(e) = Errno::from_i64(v) {
        if e.as_i64() != v {
            return Err(format!("Errno round trip {v}"));
        }
    }

    // Dispatcher.
    let arch = if inp.u8() & 1 == 0 {
        Arch::X86_64
    } else {
        Arch::Aarch64
    };
    let mut g = guest(arch)?;
    let abi = if inp.u8() & 1 == 0 {
        smccc::HypAbi::Seed
    } else {
        smccc::HypAbi::Upstream
    };
    g.set_hyp_abi(abi);
    let mut tr = FuzzTr { map: [0; 16] };
    for m in tr.map.iter_mut() {
        *m = inp.u8() % 0x90;
        if *m >= 0x80 {
            *m = 0xff;
        }
    }
    let calls = 1 + inp.u8() % 8;
    for _ in 0..calls {
        let sel = inp.u8();
        let nr = match (arch, sel % 4) {
            (Arch::X86_64, 0..=2) => KVM_HC_ROE | (inp.interesting() & !0xffff_ffff),
            (Arch::Aarch64, 0 | 1) => u64::from(smccc::BULWARK_ROE),
            (Arch::Aarch64, 2) => u64::from(0xC600_0002 + u32::from(inp.u8() % 7)),
            _ => inp.interesting(),
        };
        let hc = Hypercall {
            nr,
            args: [
                inp.interesting() % 4,
                inp.interesting(),
                inp.interesting(),
                inp.u64(),
            ],
            from_user: inp.u8().is_multiple_of(8),
            narrow: inp.u8().is_multiple_of(4),
        };
        let runs = g.store().run_count();
        let chunks = g.store().chunk_pages();
        let guard = (g.mmio_guard().enrolled(), g.mmio_guard().mapped_count());
        let out = g.handle_hypercall(&hc, &mut tr);
        // No call of one vendor-hyp ABI may act as the other's: upstream MEM_SHARE/UNSHARE
        // (3, 4) and the seed's unserved 6..=7 / upstream's unserved 5..=6 never touch the guard.
        let fid = hc.nr as u32;
        let inert = match abi {
            smccc::HypAbi::Upstream => {
                matches!(
                    fid,
                    smccc::PKVM_MEM_SHARE | smccc::PKVM_MEM_UNSHARE | 0xC600_0005 | 0xC600_0006
                )
            }
            smccc::HypAbi::Seed => matches!(fid, 0xC600_0006 | smccc::PKVM_MMIO_GUARD),
        };
        if inert && guard != (g.mmio_guard().enrolled(), g.mmio_guard().mapped_count()) {
            return Err(format!("{abi:?}: {hc:?} changed the MMIO guard"));
        }
        let HypercallOutcome::Handled { action, rederive } = out else {
            continue;
        };
        let reg = match action {
            Action::AdvanceWithResult(v) => v,
            Action::AdvanceWithResults(_) => continue,
            other => return Err(format!("hypercall gave {other:?}")),
        };
        if hc.narrow && reg >> 32 != 0 {
            return Err(format!("32-bit caller got {reg:#x}"));
        }
        if let Err(e) = decode_result(reg, hc.narrow) {
            // An error: nothing may have changed.
            if rederive.is_some()
                || g.store().run_count() != runs
                || g.store().chunk_pages() != chunks
            {
                return Err(format!("error {e:?} but state changed for {hc:?}"));
            }
            let is_roe = match arch {
                Arch::X86_64 => hc.nr & 0xffff_ffff == KVM_HC_ROE,
                Arch::Aarch64 => hc.nr & 0xffff_ffff == u64::from(smccc::BULWARK_ROE),
            };
            if is_roe && e.is_err() {
                return Err(format!("unknown errno {e:?}"));
            }
        } else if hc.from_user && (arch == Arch::X86_64 || hc.nr == u64::from(smccc::BULWARK_ROE)) {
            return Err(format!("user-mode call succeeded: {hc:?}"));
        }
    }
    Ok(())
}

/// Fuzz target 2: range validation of host attributes, ROE chunk pieces and table edits.
pub fn ranges(data: &[u8]) -> Result<(), String> {
    let mut inp = Input { data, pos: 0 };
    let mut store = AttrStore::new(
        StoreLimits {
            max_runs: 16,
            max_chunk_pages: 4,
        },
        inp.u8() & 1 == 0,
    );
    let mut mem = FakePhysMem::with_limit(usize::from(inp.u8() % 12) + 1);
    let mut tlb = RecordingFlush::default();
    let Ok(mut ept) = Ept::<false>::new_ept(&mut mem, inp.u8() & 1 == 0) else {
        return Err("root allocation failed with room".into());
    };
    let ops = 1 + inp.u8() % 16;
    for _ in 0..ops {
        match inp.u8() % 3 {
            0 => {
                let (address, size, attrs, flags) = (
                    inp.interesting(),
                    inp.interesting(),
                    inp.interesting() % 16,
                    u64::from(inp.u8().is_multiple_of(8)),
                );
                let before: Vec<_> = store.runs().collect();
                let r = store.set_attributes(address, size, attrs, flags);
                let must_fail = flags != 0
                    || attrs > 7
                    || size == 0
                    || address.checked_add(size).is_none()
                    || !address.is_multiple_of(PAGE_SIZE)
                    || !size.is_multiple_of(PAGE_SIZE);
                match r {
                    Ok(_) if must_fail => {
                        return Err(format!("accepted {address:#x}+{size:#x} {attrs} {flags}"))
                    }
                    Err(_) if store.runs().collect::<Vec<_>>() != before => {
                        return Err("refused but changed".into())
                    }
                    _ => {}
                }
            }
            1 => {
                let n = usize::from(inp.u8() % 4);
                let mut pieces = Vec::new();
                for _ in 0..n {
                    pieces.push((GuestPhysAddr::new(inp.interesting()), inp.interesting()));
                }
                let before: Vec<_> = store.runs().collect();
                let chunks = store.chunk_pages();
                match store.chunk_protect(&pieces) {
                    Err(StoreError::NoMem | StoreError::Unaligned | StoreError::Wraps) => {
                        if store.runs().collect::<Vec<_>>() != before
                            || store.chunk_pages() != chunks
                        {
                            return Err("chunk refused but changed".into());
                        }
                    }
                    Err(e) => return Err(format!("unexpected chunk error {e:?}")),
                    Ok(_) => {
                        for (gpa, len) in &pieces {
                            if !store.byte_locked(*gpa)
                                || !store.byte_locked(GuestPhysAddr::new(gpa.as_u64() + len - 1))
                            {
                                return Err(format!("chunk {gpa:?}+{len} not locked"));
                            }
                        }
                    }
                }
            }
            _ => {
                let gpa = GuestPhysAddr::new(inp.interesting() & !0xfff);
                let len = inp.interesting() % (1 << 32);
                let hpa = HostPhysAddr::new(inp.interesting());
                let attrs = LeafAttrs {
                    spp: inp.u8().is_multiple_of(4),
                    ..LeafAttrs::ram(Perms::from_bits_truncate(inp.u8()))
                };
                if len > (1 << 26) {
                    continue; // keep single cases fast
                }
                let frames = mem.allocated();
                let pages = ept.stats().table_pages;
                match ept.map(&mut mem, gpa, len, hpa, attrs, &mut tlb) {
                    Ok(_) => {
                        if let Some(r) = GpaRange::new(gpa, len) {
                            let probe = r.start();
                            match ept.translate(&mem, probe) {
                                Some((m, _)) if m.hpa == hpa && m.attrs == attrs => {}
                                other => return Err(format!("mapped {probe:?} reads {other:?}")),
                            }
                        }
                    }
                    Err(PtError::OutOfFrames)
                    | Err(PtError::Unaligned)
                    | Err(PtError::OutOfRange)
                    | Err(PtError::BadOutput(_))
                    | Err(PtError::Unrepresentable(_)) => {
                        if mem.allocated() != frames || ept.stats().table_pages != pages {
                            return Err("table edit refused but frames changed".into());
                        }
                    }
                }
                if mem.stray_accesses != 0 || mem.bad_frees != 0 {
                    return Err("stray physical-memory access".into());
                }
            }
        }
    }
    Ok(())
}
