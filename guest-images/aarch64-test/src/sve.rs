//! `scenario=sve`: the guest's whole SVE state survives VM exits at vector lengths above 128
//! bits (old Bulwark kept only V0-V31, so bits 128 and up of every Z register read back zero).
//!
//! With SVE on at EL1 and ZCR_EL1.LEN = 15 (the longest length the CPU and ZCR_EL2 allow), one
//! assembly block loads Z0-Z31, P0-P15 and FFR with a pattern, takes VM exits — three HVCs
//! (PSCI_VERSION), a store Bulwark completes from the abort syndrome and an STP it completes
//! through the software step (both to unprotected bytes of a ROE chunk page) — and stores every
//! register back; every bit is compared. Nothing else runs in between (the guest's own Rust code
//! uses NEON, which would itself zero the upper bits).
//!
//! With SME (ID_AA64PFR1_EL1.SME): the same in streaming mode (SMSTART, SMCR_EL1.LEN = 15;
//! Z0-Z31 and P0-P15 at the streaming length, FFR too with FEAT_SME_FA64 and SMCR_EL1.FA64),
//! with ZA on and its first rows loaded and checked too.
//!
//! Ends with SYSTEM_OFF when every check passed, else GUEST_EXIT(1).

use core::fmt::Write as _;

use super::{guest_exit, roe, system_off, Checks, Page, Uart};
use bulwark_abi::roe::ROE_MPROTECT_CHUNK;
use bulwark_abi::smccc as ids;

/// Longest vector the architecture allows (2048 bits), bytes.
const VL_MAX: usize = 256;
/// Z0-Z31, then P0-P15 and FFR (VL/8 bytes each), as `mul vl` offsets lay them out.
const AREA: usize = 32 * VL_MAX + 17 * (VL_MAX / 8);
/// ZA rows checked in streaming mode.
const ZA_ROWS: usize = 4;

#[repr(C, align(16))]
struct Area(core::cell::UnsafeCell<[u8; AREA]>);
// SAFETY: one CPU; only `run` touches the areas, through raw pointers.
unsafe impl Sync for Area {}
static IN: Area = Area(core::cell::UnsafeCell::new([0; AREA]));
static OUT: Area = Area(core::cell::UnsafeCell::new([0; AREA]));
#[repr(C, align(16))]
struct ZaArea(core::cell::UnsafeCell<[u8; ZA_ROWS * VL_MAX]>);
// SAFETY: as `Area`.
unsafe impl Sync for ZaArea {}
static ZA_IN: ZaArea = ZaArea(core::cell::UnsafeCell::new([0; ZA_ROWS * VL_MAX]));
static ZA_OUT: ZaArea = ZaArea(core::cell::UnsafeCell::new([0; ZA_ROWS * VL_MAX]));
static CHUNK: Page = Page(core::cell::UnsafeCell::new([0; 512]));

fn pattern(i: usize, seed: u8) -> u8 {
    (i as u8)
        .wrapping_mul(37)
        .wrapping_add((i >> 8) as u8)
        .wrapping_add(seed)
        | 1
}

/// Fill the input area: Z and P registers with a pattern, FFR with a monotonic predicate (the
/// first half of its bits set: WRFFR of a non-monotonic value is CONSTRAINED UNPREDICTABLE).
fn fill(vl: usize, seed: u8, ffr: bool) {
    let a = IN.0.get().cast::<u8>();
    let o = OUT.0.get().cast::<u8>();
    let pl = vl / 8;
    for i in 0..(32 * vl + 16 * pl) {
        // SAFETY: inside IN (32*VL + 17*VL/8 <= AREA for VL <= VL_MAX).
        unsafe { a.add(i).write_volatile(pattern(i, seed)) };
    }
    for k in 0..pl {
        let v = if ffr && k < pl / 2 { 0xff } else { 0 };
        // SAFETY: the FFR slot, inside IN.
        unsafe { a.add(32 * vl + 16 * pl + k).write_volatile(v) };
    }
    for i in 0..AREA {
        // SAFETY: inside OUT.
        unsafe { o.add(i).write_volatile(0) };
    }
}

/// First differing byte of the areas over `len` bytes.
fn compare(len: usize) -> Option<usize> {
    let (a, o) = (IN.0.get().cast::<u8>(), OUT.0.get().cast::<u8>());
    // SAFETY: both areas hold AREA >= len bytes.
    (0..len).find(|&i| unsafe { a.add(i).read_volatile() != o.add(i).read_volatile() })
}

fn rdvl() -> usize {
    let vl: u64;
    // SAFETY: RDVL only reads the vector length (SVE enabled at EL1 by the caller).
    unsafe {
        core::arch::asm!(".arch_extension sve", "rdvl {}, #1", out(reg) vl, options(nomem, nostack))
    };
    vl as usize
}

/// Load everything from IN, take the exits, store everything to OUT. `ffr`: non-streaming
/// (FFR exists); `za`: SMSTART first (streaming mode, ZA on), also ZA rows 0..ZA_ROWS, SMSTOP
/// at the end.
fn round_trip(chunk: u64, ffr: bool, za: bool) {
    let (a, o) = (IN.0.get() as u64, OUT.0.get() as u64);
    let (zi, zo) = (ZA_IN.0.get() as u64, ZA_OUT.0.get() as u64);
    let psci = u64::from(ids::PSCI_VERSION);
    // SAFETY: reads IN/ZA_IN and writes OUT/ZA_OUT (sized for the longest vector length); the
    // stores to `chunk` hit unprotected bytes of this module's chunk page; every vector,
    // predicate and general register the block uses is declared clobbered.
    unsafe {
        core::arch::asm!(
            ".arch_extension sve",
            ".arch_extension sme",
            // Streaming mode and ZA rows first (SMSTART zeroes Z/P; the rows use x12/x13).
            "cbz {za}, 2f",
            "smstart",
            "mov w12, #0",
            "mov x13, {zi}",
            "1:",
            "ldr za[w12, 0], [x13]",
            "addsvl x13, x13, #1",
            "add w12, w12, #1",
            "cmp w12, #{rows}",
            "b.lo 1b",
            "2:",
            // P area = a + 32 VL; FFR at P area + 16 PL.
            "mov x14, {a}",
            "addvl x14, x14, #16",
            "addvl x14, x14, #16",
            "cbz {ffr}, 3f",
            "ldr p0, [x14, #16, mul vl]",
            "wrffr p0.b",
            "3:",
            "ldr p0, [x14, #0, mul vl]", "ldr p1, [x14, #1, mul vl]",
            "ldr p2, [x14, #2, mul vl]", "ldr p3, [x14, #3, mul vl]",
            "ldr p4, [x14, #4, mul vl]", "ldr p5, [x14, #5, mul vl]",
            "ldr p6, [x14, #6, mul vl]", "ldr p7, [x14, #7, mul vl]",
            "ldr p8, [x14, #8, mul vl]", "ldr p9, [x14, #9, mul vl]",
            "ldr p10, [x14, #10, mul vl]", "ldr p11, [x14, #11, mul vl]",
            "ldr p12, [x14, #12, mul vl]", "ldr p13, [x14, #13, mul vl]",
            "ldr p14, [x14, #14, mul vl]", "ldr p15, [x14, #15, mul vl]",
            "mov x14, {a}",
            "ldr z0, [x14, #0, mul vl]", "ldr z1, [x14, #1, mul vl]",
            "ldr z2, [x14, #2, mul vl]", "ldr z3, [x14, #3, mul vl]",
            "ldr z4, [x14, #4, mul vl]", "ldr z5, [x14, #5, mul vl]",
            "ldr z6, [x14, #6, mul vl]", "ldr z7, [x14, #7, mul vl]",
            "ldr z8, [x14, #8, mul vl]", "ldr z9, [x14, #9, mul vl]",
            "ldr z10, [x14, #10, mul vl]", "ldr z11, [x14, #11, mul vl]",
            "ldr z12, [x14, #12, mul vl]", "ldr z13, [x14, #13, mul vl]",
            "ldr z14, [x14, #14, mul vl]", "ldr z15, [x14, #15, mul vl]",
            "ldr z16, [x14, #16, mul vl]", "ldr z17, [x14, #17, mul vl]",
            "ldr z18, [x14, #18, mul vl]", "ldr z19, [x14, #19, mul vl]",
            "ldr z20, [x14, #20, mul vl]", "ldr z21, [x14, #21, mul vl]",
            "ldr z22, [x14, #22, mul vl]", "ldr z23, [x14, #23, mul vl]",
            "ldr z24, [x14, #24, mul vl]", "ldr z25, [x14, #25, mul vl]",
            "ldr z26, [x14, #26, mul vl]", "ldr z27, [x14, #27, mul vl]",
            "ldr z28, [x14, #28, mul vl]", "ldr z29, [x14, #29, mul vl]",
            "ldr z30, [x14, #30, mul vl]", "ldr z31, [x14, #31, mul vl]",
            // Exits: three HVCs, a store completed from the syndrome, an STP stepped.
            "mov x0, {psci}", "hvc #0",
            "mov x0, {psci}", "hvc #0",
            "mov x0, {psci}", "hvc #0",
            "mov x15, #0x5a5a",
            "str x15, [{chunk}, #0x100]",
            "add x16, {chunk}, #0x200",
            "stp x15, x15, [x16]",
            // Everything back out.
            "mov x14, {o}",
            "str z0, [x14, #0, mul vl]", "str z1, [x14, #1, mul vl]",
            "str z2, [x14, #2, mul vl]", "str z3, [x14, #3, mul vl]",
            "str z4, [x14, #4, mul vl]", "str z5, [x14, #5, mul vl]",
            "str z6, [x14, #6, mul vl]", "str z7, [x14, #7, mul vl]",
            "str z8, [x14, #8, mul vl]", "str z9, [x14, #9, mul vl]",
            "str z10, [x14, #10, mul vl]", "str z11, [x14, #11, mul vl]",
            "str z12, [x14, #12, mul vl]", "str z13, [x14, #13, mul vl]",
            "str z14, [x14, #14, mul vl]", "str z15, [x14, #15, mul vl]",
            "str z16, [x14, #16, mul vl]", "str z17, [x14, #17, mul vl]",
            "str z18, [x14, #18, mul vl]", "str z19, [x14, #19, mul vl]",
            "str z20, [x14, #20, mul vl]", "str z21, [x14, #21, mul vl]",
            "str z22, [x14, #22, mul vl]", "str z23, [x14, #23, mul vl]",
            "str z24, [x14, #24, mul vl]", "str z25, [x14, #25, mul vl]",
            "str z26, [x14, #26, mul vl]", "str z27, [x14, #27, mul vl]",
            "str z28, [x14, #28, mul vl]", "str z29, [x14, #29, mul vl]",
            "str z30, [x14, #30, mul vl]", "str z31, [x14, #31, mul vl]",
            "addvl x14, x14, #16",
            "addvl x14, x14, #16",
            "str p0, [x14, #0, mul vl]", "str p1, [x14, #1, mul vl]",
            "str p2, [x14, #2, mul vl]", "str p3, [x14, #3, mul vl]",
            "str p4, [x14, #4, mul vl]", "str p5, [x14, #5, mul vl]",
            "str p6, [x14, #6, mul vl]", "str p7, [x14, #7, mul vl]",
            "str p8, [x14, #8, mul vl]", "str p9, [x14, #9, mul vl]",
            "str p10, [x14, #10, mul vl]", "str p11, [x14, #11, mul vl]",
            "str p12, [x14, #12, mul vl]", "str p13, [x14, #13, mul vl]",
            "str p14, [x14, #14, mul vl]", "str p15, [x14, #15, mul vl]",
            "cbz {ffr}, 4f",
            "rdffr p0.b",
            "str p0, [x14, #16, mul vl]",
            "4:",
            "cbz {za}, 6f",
            "mov w12, #0",
            "mov x13, {zo}",
            "5:",
            "str za[w12, 0], [x13]",
            "addsvl x13, x13, #1",
            "add w12, w12, #1",
            "cmp w12, #{rows}",
            "b.lo 5b",
            "smstop",
            "6:",
            a = in(reg) a,
            o = in(reg) o,
            zi = in(reg) zi,
            zo = in(reg) zo,
            chunk = in(reg) chunk,
            psci = in(reg) psci,
            ffr = in(reg) u64::from(ffr),
            za = in(reg) u64::from(za),
            rows = const ZA_ROWS,
            out("x0") _, out("x1") _, out("x2") _, out("x3") _, out("x4") _, out("x5") _,
            out("x6") _, out("x7") _, out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
            out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _, out("v16") _, out("v17") _,
            out("v18") _, out("v19") _, out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
            out("v30") _, out("v31") _,
            out("p0") _, out("p1") _, out("p2") _, out("p3") _, out("p4") _, out("p5") _,
            out("p6") _, out("p7") _, out("p8") _, out("p9") _, out("p10") _, out("p11") _,
            out("p12") _, out("p13") _, out("p14") _, out("p15") _, out("ffr") _,
            options(nostack)
        )
    };
}

fn check_round(c: &mut Checks, what: &str, vl: usize, ffr: bool) {
    let pl = vl / 8;
    let len = 32 * vl + 16 * pl + if ffr { pl } else { 0 };
    let bad = compare(len);
    let where_ = match bad {
        None => reg_byte('n', 0, 0),
        Some(i) if i < 32 * vl => reg_byte('z', i / vl, i % vl),
        Some(i) if i < 32 * vl + 16 * pl => reg_byte('p', (i - 32 * vl) / pl, (i - 32 * vl) % pl),
        Some(i) => reg_byte('f', 0, i - 32 * vl - 16 * pl),
    };
    c.check(
        bad.is_none(),
        format_args!(
            "sve: {what}: Z0-Z31 ({} bits each), P0-P15{} intact across 5 exits (first difference: {where_})",
            vl * 8,
            if ffr { ", FFR" } else { "" }
        ),
    );
}

/// Where a difference is, printed as "z3 byte 17", "p2 byte 1" or "FFR byte 0".
fn reg_byte(kind: char, reg: usize, byte: usize) -> Name {
    Name { kind, reg, byte }
}
struct Name {
    kind: char,
    reg: usize,
    byte: usize,
}
impl core::fmt::Display for Name {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.kind {
            'f' => write!(f, "FFR byte {}", self.byte),
            'n' => write!(f, "none"),
            k => write!(f, "{k}{} byte {}", self.reg, self.byte),
        }
    }
}

pub fn run() -> ! {
    let mut c = Checks { failed: 0 };
    let (pfr0, pfr1): (u64, u64);
    // SAFETY: reading ID registers.
    unsafe {
        core::arch::asm!("mrs {}, id_aa64pfr0_el1", out(reg) pfr0, options(nomem, nostack));
        core::arch::asm!("mrs {}, id_aa64pfr1_el1", out(reg) pfr1, options(nomem, nostack));
    }
    let (sve, sme) = ((pfr0 >> 32) & 0xf, (pfr1 >> 24) & 0xf);
    say!("testguest: sve: ID_AA64PFR0_EL1.SVE = {sve}, ID_AA64PFR1_EL1.SME = {sme}");
    if sve == 0 {
        say!("testguest: FAIL sve: the CPU has no SVE");
        guest_exit(1)
    }
    // SVE (and SME) on at EL1: CPACR_EL1.ZEN = 0b11, SMEN = 0b11; the longest vector length.
    // SAFETY: the guest's own EL1 configuration.
    unsafe {
        core::arch::asm!(
            "mrs {t}, cpacr_el1",
            "orr {t}, {t}, #(3 << 16)",
            "orr {t}, {t}, {smen}",
            "msr cpacr_el1, {t}",
            "isb",
            "mov {t}, #15",
            "msr S3_0_C1_C2_0, {t}", // ZCR_EL1.LEN
            "isb",
            t = out(reg) _,
            smen = in(reg) if sme != 0 { 3u64 << 24 } else { 0 },
            options(nostack)
        )
    };
    let vl = rdvl();
    c.check(
        (32..=VL_MAX).contains(&vl) && vl.is_multiple_of(16),
        format_args!("sve: vector length {} bits (at least 256)", vl * 8),
    );
    let chunk = CHUNK.0.get() as u64;
    let r = roe(ROE_MPROTECT_CHUNK, chunk + 0x800, 8);
    c.check(
        r == 8,
        format_args!("sve: ROE_MPROTECT_CHUNK {:#x}+8 -> {r}", chunk + 0x800),
    );

    fill(vl, 0x11, true);
    round_trip(chunk, true, false);
    check_round(&mut c, "non-streaming", vl, true);
    let (s1, s2): (u64, u64);
    // SAFETY: reads of this module's chunk page.
    unsafe {
        s1 = core::ptr::read_volatile((chunk + 0x100) as *const u64);
        s2 = core::ptr::read_volatile((chunk + 0x208) as *const u64);
    }
    c.check(
        s1 == 0x5a5a && s2 == 0x5a5a,
        format_args!("sve: the two chunk-page stores landed ({s1:#x}, {s2:#x})"),
    );

    if sme != 0 {
        let smfr0: u64;
        // SAFETY: reading ID_AA64SMFR0_EL1 (SME is present).
        unsafe {
            core::arch::asm!("mrs {}, S3_0_C0_C4_5", out(reg) smfr0, options(nomem, nostack))
        };
        let fa64 = smfr0 >> 63 != 0;
        let fa64_bit: u64 = if fa64 { 1 << 31 } else { 0 };
        say!("testguest: sve: SME FA64 = {}", u8::from(fa64));
        // Streaming mode at the longest streaming length, ZA on (inside `round_trip`); with
        // FA64 the full instruction set, FFR included.
        // SAFETY: the guest's own EL1 configuration.
        unsafe {
            core::arch::asm!(
                ".arch_extension sme",
                "msr S3_0_C1_C2_6, {t}", // SMCR_EL1.FA64, LEN
                "isb",
                t = in(reg) fa64_bit | 15,
                options(nostack)
            )
        };
        let svl: u64;
        // SAFETY: RDSVL reads the streaming vector length.
        unsafe {
            core::arch::asm!(".arch_extension sme", "rdsvl {}, #1", out(reg) svl, options(nomem, nostack))
        };
        let svl = svl as usize;
        say!("testguest: sve: streaming vector length {} bits", svl * 8);
        fill(svl, 0x77, fa64);
        for i in 0..ZA_ROWS * VL_MAX {
            // SAFETY: inside ZA_IN / ZA_OUT.
            unsafe {
                ZA_IN
                    .0
                    .get()
                    .cast::<u8>()
                    .add(i)
                    .write_volatile(pattern(i, 0x33));
                ZA_OUT.0.get().cast::<u8>().add(i).write_volatile(0);
            }
        }
        round_trip(chunk, fa64, true);
        check_round(&mut c, "streaming", svl, fa64);
        let n = ZA_ROWS * svl;
        // SAFETY: both ZA areas hold ZA_ROWS * VL_MAX >= n bytes.
        let za_bad = (0..n).find(|&i| unsafe {
            ZA_IN.0.get().cast::<u8>().add(i).read_volatile()
                != ZA_OUT.0.get().cast::<u8>().add(i).read_volatile()
        });
        c.check(
            za_bad.is_none(),
            format_args!(
                "sve: ZA rows 0-{} intact across the exits (first difference: {za_bad:?})",
                ZA_ROWS - 1
            ),
        );
    } else {
        say!("testguest: sve: no SME on this CPU: streaming mode not tested");
    }

    if c.failed != 0 {
        say!("testguest: sve: {} check(s) FAILED", c.failed);
        guest_exit(1)
    }
    say!("testguest: sve: all checks passed");
    system_off()
}
