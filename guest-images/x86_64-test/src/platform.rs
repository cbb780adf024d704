//! `scenario=platform`: the pass-through platform model (docs/x86_64.md, "Platform model").
//! The guest reads its local APIC ID (what kvm-unit-tests does first), writes an APIC register
//! through Bulwark's write emulation and reads it back, sends INIT and Start-up IPIs (Bulwark
//! must swallow them: the ICR must not show them), reaches the I/O APIC by MMIO, programs the
//! PIC through passed-through ports, and waits in HLT for timer interrupts delivered straight to
//! it. Every check prints PASS/FAIL; the run's status is the number of failures.

use core::fmt::Write as _;
use core::sync::atomic::{AtomicU64, Ordering};

use super::{exit, inb, outb, Checks, Com1};

const LAPIC: u64 = 0xfee0_0000;
const IOAPIC: u64 = 0xfec0_0000;

pub fn handles(s: &str) -> bool {
    s == "platform" || s == "platform-smp"
}

fn rd(a: u64) -> u32 {
    // SAFETY: a 32-bit device register the platform passes through (identity mapped).
    unsafe { core::ptr::read_volatile(a as *const u32) }
}

fn wr(a: u64, v: u32) {
    // SAFETY: as above; a plain `mov [reg], reg32`, the form Bulwark's APIC emulation decodes.
    unsafe {
        core::arch::asm!("mov dword ptr [{a}], {v:e}", a = in(reg) a, v = in(reg) v, options(nostack))
    };
}

static TICKS: AtomicU64 = AtomicU64::new(0);

#[no_mangle]
extern "C" fn platform_tick() {
    TICKS.fetch_add(1, Ordering::SeqCst);
}

core::arch::global_asm!(
    r#"
    .section .text
    .balign 16
platform_irq0:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    push rbx
    mov rbx, rsp
    and rsp, -16
    call platform_tick
    mov rsp, rbx
    pop rbx
    mov al, 0x20
    out 0x20, al
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    iretq
"#
);

extern "C" {
    fn platform_irq0();
}

#[repr(C, align(16))]
struct Idt([u64; 96]);
static mut IDT: Idt = Idt([0; 96]);

/// Copy the exception IDT and add vector 0x20 (PIT through the remapped PIC).
fn install_irq0() {
    let mut old = [0u8; 10];
    // SAFETY: SIDT stores 10 bytes into `old`; single-threaded guest, interrupts still off.
    unsafe {
        core::arch::asm!("sidt [{}]", in(reg) old.as_mut_ptr(), options(nostack));
        let limit = usize::from(u16::from_le_bytes([old[0], old[1]]));
        let base = u64::from_le_bytes([
            old[2], old[3], old[4], old[5], old[6], old[7], old[8], old[9],
        ]);
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        let words = ((limit + 1) / 8).min(64);
        for (i, w) in idt.0.iter_mut().enumerate().take(words) {
            *w = core::ptr::read_volatile((base + 8 * i as u64) as *const u64);
        }
        let a = platform_irq0 as *const () as u64;
        let cs: u16;
        core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nostack));
        idt.0[2 * 0x20] =
            (a & 0xffff) | (u64::from(cs) << 16) | (0x8e00u64 << 32) | ((a >> 16) & 0xffff) << 48;
        idt.0[2 * 0x20 + 1] = a >> 32;
        let b = idt as *const Idt as u64;
        let idtr: [u16; 5] = [
            (core::mem::size_of::<Idt>() - 1) as u16,
            b as u16,
            (b >> 16) as u16,
            (b >> 32) as u16,
            (b >> 48) as u16,
        ];
        core::arch::asm!("lidt [{}]", in(reg) &idtr, options(nostack));
    }
}

/// Page the second CPU would write (below 1 MiB, reachable from real mode), locked with ROE.
const SMP_LOCKED: u64 = 0x7000;
/// Start-up vector 8: the second CPU would start at 0x8000 in real mode.
const SMP_TRAMPOLINE: u64 = 0x8000;
/// Byte the second CPU would set to 0xa5 first.
const SMP_MARKER: u64 = 0x8ff0;
/// Real-mode code for the second CPU: `xor ax, ax; mov ds, ax; mov byte [0x8ff0], 0xa5;
/// mov byte [0x7000], 0x22; hlt; jmp $-1`. It runs outside VMX, where no EPT applies: were it
/// ever started, the locked page would change.
const SMP_CODE: [u8; 17] = [
    0x31, 0xc0, 0x8e, 0xd8, 0xc6, 0x06, 0xf0, 0x8f, 0xa5, 0xc6, 0x06, 0x00, 0x70, 0x22, 0xf4, 0xeb,
    0xfd,
];

fn spin(n: u64) {
    for i in 0..n {
        core::hint::black_box(i);
    }
}

/// `scenario=platform-smp` (Bochs with two CPUs, issue 16 item 6): lock a low page with ROE,
/// place real-mode code for the second CPU that writes it, and send INIT, then Start-up twice
/// (the MP-specification sequence). Bulwark must swallow all three: the second CPU never runs
/// (its marker stays 0) and the locked page is unchanged.
fn smp() -> ! {
    use bulwark_abi::roe::{KVM_HC_ROE, ROE_MPROTECT};
    let mut c = Checks { failed: 0 };
    // SAFETY: low guest RAM the guest owns (identity mapped), unused by anything else.
    unsafe {
        core::ptr::write_bytes(SMP_LOCKED as *mut u8, 0x11, 4096);
        core::ptr::write_bytes(SMP_TRAMPOLINE as *mut u8, 0xf4, 4096);
        core::ptr::copy_nonoverlapping(
            SMP_CODE.as_ptr(),
            SMP_TRAMPOLINE as *mut u8,
            SMP_CODE.len(),
        );
        core::ptr::write_volatile(SMP_MARKER as *mut u8, 0);
    }
    let r = super::vmcall(KVM_HC_ROE, ROE_MPROTECT, SMP_LOCKED, 1);
    c.check(
        "smp-lock",
        r == 1,
        format_args!("ROE_MPROTECT {SMP_LOCKED:#x}: {r}"),
    );
    wr(LAPIC + 0x310, 0);
    wr(LAPIC + 0x300, 0x000c_4500); // INIT, assert, all excluding self
    spin(200_000);
    for _ in 0..2 {
        wr(LAPIC + 0x300, 0x000c_4600 | (SMP_TRAMPOLINE >> 12) as u32); // Start-up
        spin(200_000);
    }
    spin(2_000_000);
    // SAFETY: reading the guest's own low pages.
    let (marker, byte) = unsafe {
        (
            core::ptr::read_volatile(SMP_MARKER as *const u8),
            core::ptr::read_volatile(SMP_LOCKED as *const u8),
        )
    };
    c.check(
        "smp-ap-not-started",
        marker == 0,
        format_args!("second CPU's marker {marker:#x}"),
    );
    c.check(
        "smp-locked-page-unchanged",
        byte == 0x11,
        format_args!("locked byte {byte:#x}"),
    );
    say!("{} check(s) failed", c.failed);
    exit(c.failed)
}

pub fn run(s: &str) -> ! {
    if s == "platform-smp" {
        smp();
    }
    let mut c = Checks { failed: 0 };

    // Local APIC reads go straight to the device (kvm-unit-tests' first access).
    let id = rd(LAPIC + 0x20);
    let ver = rd(LAPIC + 0x30);
    c.check(
        "lapic-read",
        (0x10..=0x15).contains(&(ver & 0xff)),
        format_args!("APIC ID register {id:#x}, version {ver:#x}"),
    );

    // A write goes through Bulwark's emulation to the real APIC: TPR reads back.
    let tpr = rd(LAPIC + 0x80);
    wr(LAPIC + 0x80, 0x20);
    let now = rd(LAPIC + 0x80);
    wr(LAPIC + 0x80, tpr);
    c.check(
        "lapic-write-forwarded",
        now & 0xff == 0x20 && rd(LAPIC + 0x80) == tpr,
        format_args!("TPR {tpr:#x} -> wrote 0x20, read {now:#x}"),
    );

    // A fixed IPI (vector 0x40) to every other CPU is forwarded: the ICR holds it afterwards
    // (with one CPU nobody receives it). INIT and Start-up IPIs are swallowed: the ICR keeps
    // the fixed IPI.
    wr(LAPIC + 0x310, 0x0100_0000);
    let high = rd(LAPIC + 0x310);
    wr(LAPIC + 0x300, 0x000c_0040);
    let fixed = rd(LAPIC + 0x300);
    wr(LAPIC + 0x300, 0x000c_4500); // INIT, assert, all excluding self
    let after_init = rd(LAPIC + 0x300);
    wr(LAPIC + 0x300, 0x000c_4608); // Start-up, vector 8
    let after_sipi = rd(LAPIC + 0x300);
    c.check(
        "lapic-icr-forwarded",
        high == 0x0100_0000 && fixed & 0xfffff == 0xc0040,
        format_args!("ICR high {high:#x}, ICR low after a fixed IPI {fixed:#x}"),
    );
    c.check(
        "lapic-init-sipi-refused",
        after_init & 0xfffff == 0xc0040 && after_sipi & 0xfffff == 0xc0040,
        format_args!("ICR low after INIT {after_init:#x}, after SIPI {after_sipi:#x}"),
    );

    // The I/O APIC by MMIO: version register (index 1).
    wr(IOAPIC, 1);
    let iov = rd(IOAPIC + 0x10);
    c.check(
        "ioapic-mmio",
        iov & 0xff != 0 && iov != u32::MAX && (iov >> 16) & 0xff > 0,
        format_args!("I/O APIC version {iov:#x}"),
    );

    // Ports pass through: remap the PIC to vectors 0x20/0x28 and read its mask back.
    outb(0x20, 0x11);
    outb(0xa0, 0x11);
    outb(0x21, 0x20);
    outb(0xa1, 0x28);
    outb(0x21, 4);
    outb(0xa1, 2);
    outb(0x21, 1);
    outb(0xa1, 1);
    outb(0xa1, 0xff);
    outb(0x21, 0xfe); // IRQ0 (PIT) only
    let mask = inb(0x21);
    c.check(
        "port-passthrough",
        mask == 0xfe,
        format_args!("PIC mask read back {mask:#x}"),
    );

    // Timer interrupts reach the guest without Bulwark; HLT waits for them.
    install_irq0();
    // PIT channel 0, mode 2, divisor 11932 (~100 Hz).
    outb(0x43, 0x34);
    outb(0x40, (11932u16 & 0xff) as u8);
    outb(0x40, (11932u16 >> 8) as u8);
    let mut halts = 0u64;
    // SAFETY: vector 0x20 is installed; STI;HLT waits for the next interrupt.
    unsafe { core::arch::asm!("sti", options(nostack)) };
    while TICKS.load(Ordering::SeqCst) < 5 && halts < 100_000 {
        // SAFETY: interrupts are enabled: the next tick ends the HLT.
        unsafe { core::arch::asm!("hlt", options(nostack)) };
        halts += 1;
    }
    // SAFETY: stop the timer's interrupts before reporting.
    unsafe { core::arch::asm!("cli", options(nostack)) };
    outb(0x21, 0xff);
    let ticks = TICKS.load(Ordering::SeqCst);
    c.check(
        "interrupts-to-guest",
        ticks >= 5 && halts <= ticks + 1,
        format_args!("{ticks} timer interrupts over {halts} HLTs"),
    );
    say!("{} check(s) failed", c.failed);
    exit(c.failed)
}
