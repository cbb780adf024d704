//! `scenario=spp-subpage` (run with `violation=skip`): the SPP exit-count scenario
//! (docs/x86_64-spp.md, `cargo xtask test spp`).
//!
//! 1. ROE_MPROTECT a page of its own and store once into it: under `skip` the store is dropped
//!    by Bulwark after exactly **one** EPT-violation exit. That exit is the counter's sanity
//!    check: Bulwark's `exit counts: ... ept-violation=N` line must then say 1 on an SPP CPU.
//! 2. ROE_MPROTECT_CHUNK [`PROT_START`, +[`PROT_LEN`]) of another page (sub-pages 2 and 3),
//!    then [`ROUNDS`] x 29 quadword stores, one into each sub-page Bulwark leaves writable (all
//!    but 1, 2 and 3: see [`spp_writable`]), and check every one took effect and no protected
//!    byte changed. With SPP these stores cause no exit at all; without SPP each one goes
//!    through Bulwark's software path (one exit or more each).
//! 3. Print `spp-subpage: stores=N ...` (the xtask reads N) and the TSC cost of a store to the
//!    chunk page and to an unprotected page, and the number of failed checks so far.
//! 4. CHUNK-protect 8 bytes of sub-page 10 (written in step 2: only the SPP vector changes, so
//!    this exercises the INVEPT rule for SPPT changes) and store 8 bytes starting 4 bytes
//!    before them (in sub-page 9, which holds no protected byte): it must exit
//!    (so the chunk page really is write-protected in the EPT and the zero count of step 2 is
//!    SPP's doing) and change none of the protected bytes.
//! 5. A report, not a check: stores to writable sub-pages followed at once by one to a
//!    protected byte; prints `warm protected store: dropped|WRITTEN` (WRITTEN: the Bochs 2.7
//!    SPP defect, docs/x86_64-spp.md). Then exit with the number of failed checks.

use core::arch::asm;
use core::fmt::Write as _;

use bulwark_abi::cpuid;
use bulwark_abi::roe::{KVM_HC_ROE, ROE_MPROTECT, ROE_MPROTECT_CHUNK};

use super::{exit, Com1};

/// First protected byte and length on the chunk page: bytes 0x123..0x1a8, i.e. sub-pages 2
/// (0x100..0x180) and 3 (0x180..0x200) hold protected bytes; the other 30 do not.
pub const PROT_START: u64 = 0x123;
pub const PROT_LEN: u64 = 0x85;
/// Rounds of one store per unprotected sub-page.
pub const ROUNDS: u64 = 8;
const SUBPAGE: u64 = 128;
/// Step 4 protects [LATE_OFF, +8) (sub-page 10) after the stores wrote it.
const LATE_OFF: u64 = 0x500;
/// The crossing store of step 4.
const CROSS_VAL: u64 = 0xdddd_dddd_dddd_dddd;

#[repr(C, align(4096))]
struct Page([u8; 4096]);

static mut CHUNK_PAGE: Page = Page([0; 4096]);
static mut ROE_PAGE: Page = Page([0; 4096]);
static mut PLAIN_PAGE: Page = Page([0; 4096]);

/// Is `s` this module's scenario?
pub fn handles(s: &str) -> bool {
    s == "spp-subpage"
}

fn roe(op: u64, a1: u64, a2: u64) -> i64 {
    let ret: u64;
    // SAFETY: VMCALL traps to Bulwark, which answers in RAX. RBX is swapped because the
    // compiler reserves it.
    unsafe {
        asm!(
            "xchg rbx, {op}",
            "vmcall",
            "xchg rbx, {op}",
            op = inout(reg) op => _,
            inout("rax") KVM_HC_ROE => ret,
            in("rcx") a1,
            in("rdx") a2,
        );
    }
    ret as i64
}

fn chunk_spp() -> bool {
    let r = core::arch::x86_64::__cpuid_count(cpuid::LEAF_SIGNATURE, 0);
    if !cpuid::is_bulwark(r.ebx, r.ecx, r.edx) {
        return false;
    }
    let f = core::arch::x86_64::__cpuid_count(cpuid::LEAF_FEATURES, 0);
    cpuid::Features::decode([f.eax, f.ebx, f.ecx, f.edx])
        .map(|f| f.chunk_spp)
        .unwrap_or(false)
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC reads the time-stamp counter (Bochs `clock: sync=none`: instructions).
    unsafe { asm!("lfence", "rdtsc", "lfence", out("eax") lo, out("edx") hi, options(nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn rd8(a: u64) -> u8 {
    // SAFETY: `a` lies in one of this module's static pages (identity mapped).
    unsafe { core::ptr::read_volatile(a as *const u8) }
}

fn rd64(a: u64) -> u64 {
    // SAFETY: as above, 8-byte aligned.
    unsafe { core::ptr::read_volatile(a as *const u64) }
}

fn wr8(a: u64, v: u8) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(a as *mut u8, v) }
}

fn wr64(a: u64, v: u64) {
    // SAFETY: as above, 8-byte aligned.
    unsafe { core::ptr::write_volatile(a as *mut u64, v) }
}

fn pattern(o: u64) -> u8 {
    (o as u8).wrapping_mul(13) ^ 0xa5
}

/// The quadword stored in round `r` at sub-page `sp`.
fn value(r: u64, sp: u64) -> u64 {
    0x5350_5000_0000_0000 | (r << 16) | sp
}

/// Does Bulwark leave sub-page `sp` writable under SPP? Not when it holds a protected byte,
/// nor when the bytes after it that one store (FXSAVE, XSAVE) starting in `sp` could reach do
/// (`SppVector::from_protected_bytes_reach`): of [`PROT_START`, +[`PROT_LEN`]) that excludes
/// sub-pages 0 to 3.
fn spp_writable(sp: u64) -> bool {
    let (s, e) = (sp * SUBPAGE, (sp + 1) * SUBPAGE + store_reach());
    !(s < PROT_START + PROT_LEN && PROT_START < e)
}

/// How far one store can reach past its first sub-page, as Bulwark computes it for SPP: FXSAVE's
/// 512 bytes or the largest XSAVE area (CPUID 0xD.0 ECX), less one.
fn store_reach() -> u64 {
    let xsave = super::cpuid(1, 0)[2] & (1 << 26) != 0;
    let max = if xsave { super::cpuid(0xd, 0)[2] } else { 0 };
    u64::from(max.max(512)) - 1
}

/// Cost of one quadword store at `a`, in TSC ticks (the best of 4).
fn store_cost(a: u64) -> u64 {
    (0..4)
        .map(|i| {
            let t0 = rdtsc();
            wr64(a, i);
            rdtsc() - t0
        })
        .min()
        .unwrap_or(0)
}

struct T {
    failed: u32,
}

impl T {
    fn check(&mut self, name: &str, ok: bool, detail: core::fmt::Arguments) {
        if ok {
            say!("PASS {name}");
        } else {
            self.failed += 1;
            say!("FAIL {name}: {detail}");
        }
    }
}

/// Run the scenario; never returns.
pub fn run(_s: &str) -> ! {
    let mut t = T { failed: 0 };
    let spp = chunk_spp();
    say!(
        "spp-subpage: CPUID 0x40000001 chunk-spp={}",
        if spp { 1 } else { 0 }
    );

    // 1. One store to a ROE page: exactly one EPT-violation exit (the counter's sanity check).
    let roe_page = core::ptr::addr_of_mut!(ROE_PAGE) as u64;
    wr8(roe_page + 8, 0x11);
    let r = roe(ROE_MPROTECT, roe_page, 1);
    t.check("mprotect", r == 1, format_args!("returned {r}, expected 1"));
    wr8(roe_page + 8, 0x22);
    let v = rd8(roe_page + 8);
    t.check(
        "roe-store-dropped",
        v == 0x11,
        format_args!("byte is {v:#x}, expected 0x11"),
    );

    // 2. Chunk page: protect sub-pages 2 and 3 (partly), store into every other sub-page.
    let page = core::ptr::addr_of_mut!(CHUNK_PAGE) as u64;
    for o in 0..4096 {
        wr8(page + o, pattern(o));
    }
    let r = roe(ROE_MPROTECT_CHUNK, page + PROT_START, PROT_LEN);
    t.check(
        "chunk-protect",
        r == PROT_LEN as i64,
        format_args!("returned {r}, expected {PROT_LEN}"),
    );
    let mut stores = 0u64;
    let t0 = rdtsc();
    for round in 0..ROUNDS {
        for sp in (0..32).filter(|&sp| spp_writable(sp)) {
            // A different quadword of the sub-page each round.
            let a = page + sp * SUBPAGE + (round * 8) % SUBPAGE;
            wr64(a, value(round, sp));
            stores += 1;
        }
    }
    let ticks = rdtsc() - t0;
    let mut bad = None;
    for round in 0..ROUNDS {
        for sp in (0..32).filter(|&sp| spp_writable(sp)) {
            let a = page + sp * SUBPAGE + (round * 8) % SUBPAGE;
            if rd64(a) != value(round, sp) && bad.is_none() {
                bad = Some(a);
            }
        }
    }
    t.check(
        "unprotected-subpage-stores-took-effect",
        bad.is_none(),
        format_args!("quadword at {:#x} not written", bad.unwrap_or(0)),
    );
    let changed = (PROT_START..PROT_START + PROT_LEN).find(|&o| rd8(page + o) != pattern(o));
    t.check(
        "protected-bytes-unchanged",
        changed.is_none(),
        format_args!("offset {:#x} changed", changed.unwrap_or(0)),
    );

    // 3. Timing (path length under Bochs): a chunk-page sub-page vs a plain page.
    let plain = core::ptr::addr_of_mut!(PLAIN_PAGE) as u64;
    let base = store_cost(plain + 0x800);
    let chunk = store_cost(page + 0x800);
    say!(
        "spp-subpage: stores={stores} ticks={ticks} store-cost plain={base} chunk-subpage={chunk}"
    );
    if spp {
        t.check(
            "spp-no-exit-timing",
            chunk <= 4 * base + 100,
            format_args!("a store to an unprotected sub-page cost {chunk} ticks vs {base}"),
        );
    }
    say!(
        "spp-subpage: {} check(s) failed before the protected store",
        t.failed
    );

    // 4. Protect 8 more bytes, in sub-page 10, which the stores above wrote (so the CPU may
    //    hold its old, writable sub-page permission): only the page's SPP vector changes, not
    //    its EPT leaf, so this checks Bulwark's INVEPT rule for SPPT changes. A store running
    //    into them must then exit (Bulwark's `ept-violation` count goes up by one) and change
    //    none of them.
    //    Until the x86 software path for chunk pages exists, Bulwark stops the run at this store.
    let late = page + LATE_OFF;
    let r = roe(ROE_MPROTECT_CHUNK, late, 8);
    t.check(
        "chunk-protect-written-subpage",
        r == 8,
        format_args!("returned {r}, expected 8"),
    );
    // The store starts 4 bytes before them, in sub-page 9, which has no protected byte: an SPP
    // check of the first byte's sub-page alone would let it through (Bochs 2.7 does that), so
    // Bulwark must not mark sub-page 9 writable either.
    let prot_before = rd64(late);
    say!(
        "spp-subpage: storing 8 bytes at {:#x}, 4 of them protected after their sub-page was written (must exit)",
        late - 4
    );
    // SAFETY: 8 bytes inside CHUNK_PAGE (identity mapped); unaligned on purpose.
    unsafe { core::ptr::write_unaligned((late - 4) as *mut u64, CROSS_VAL) };
    let v = rd64(late);
    let want = prot_before;
    t.check(
        "protected-store-dropped",
        v == want,
        format_args!("protected bytes read {v:#x}, expected {want:#x}"),
    );
    let low: [u8; 4] = core::array::from_fn(|i| rd8(late - 4 + i as u64));
    t.check(
        "unprotected-part-written",
        low.iter().all(|&b| b == CROSS_VAL as u8),
        format_args!("bytes before the protected ones read {low:x?}"),
    );

    // 5. Not a check, a report (docs/x86_64-spp.md): store into writable sub-pages, then at
    //    once — no exit in between — into a protected byte. Bulwark's software path drops it;
    //    under Bochs 2.7's SPP emulation it goes through (the page stays writable in Bochs'
    //    TLB after the SPP-allowed stores), which is why SPP is off unless `spp=on`.
    let warm = page + PROT_START + 0x10;
    let old = rd8(warm);
    wr64(page + 0x800, 1);
    wr64(page + 0x880, 2);
    wr8(warm, !old);
    let v = rd8(warm);
    say!(
        "spp-subpage: warm protected store: {}",
        if v == old { "dropped" } else { "WRITTEN" }
    );
    say!("spp-subpage: {} check(s) failed", t.failed);
    exit(t.failed)
}
