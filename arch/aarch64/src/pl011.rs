//! PL011 console output (transmit only). QEMU's PL011 needs no set-up to transmit; on hardware
//! the firmware has configured it. The base comes from the device tree once it is parsed; before
//! that, and when the tree names none, QEMU virt's 0x0900_0000 is used.

use core::sync::atomic::{AtomicUsize, Ordering};

/// QEMU virt's PL011.
pub const QEMU_VIRT_PL011: usize = 0x0900_0000;

static BASE: AtomicUsize = AtomicUsize::new(QEMU_VIRT_PL011);

const DR: usize = 0x00;
const FR: usize = 0x18;
const FR_BUSY: u32 = 1 << 3;
const FR_TXFF: u32 = 1 << 5;
const CR: usize = 0x30;
const CR_UARTEN: u32 = 1 << 0;
const CR_LBE: u32 = 1 << 7;
const CR_TXE: u32 = 1 << 8;

/// Use the PL011 at `base` (identity-mapped device memory) from now on.
pub fn set_base(base: usize) {
    BASE.store(base, Ordering::Release);
}

pub fn base() -> usize {
    BASE.load(Ordering::Acquire)
}

fn read_fr(base: usize) -> u32 {
    // SAFETY: `base` is the PL011 named by the device tree (or QEMU virt's), identity-mapped as
    // device memory by the entry code; FR is a read-only status register.
    unsafe { core::ptr::read_volatile((base + FR) as *const u32) }
}

fn put(base: usize, b: u8) {
    // Bounded wait: a wedged UART must not hang Bulwark forever.
    let mut spins = 0u32;
    while read_fr(base) & FR_TXFF != 0 && spins < 1_000_000 {
        spins += 1;
        core::hint::spin_loop();
    }
    // SAFETY: as in `read_fr`; DR is the transmit data register.
    unsafe { core::ptr::write_volatile((base + DR) as *mut u32, u32::from(b)) }
}

/// Write bytes, turning `\n` into `\r\n`.
pub fn write_bytes(bytes: &[u8]) {
    let base = base();
    for &b in bytes {
        if b == b'\n' {
            put(base, b'\r');
        }
        put(base, b);
    }
}

/// Write bytes as they are (no `\n` translation), waiting for the FIFO.
pub fn write_raw(bytes: &[u8]) {
    let base = base();
    for &b in bytes {
        put(base, b);
    }
}

/// Write the bytes the transmit FIFO takes now (while FR.TXFF is clear); never waits.
/// Returns how many were written.
pub fn try_write(bytes: &[u8]) -> usize {
    let base = base();
    let mut n = 0;
    for &b in bytes {
        if read_fr(base) & FR_TXFF != 0 {
            break;
        }
        // SAFETY: as in `read_fr`; DR is the transmit data register, and the FIFO has room.
        unsafe { core::ptr::write_volatile((base + DR) as *mut u32, u32::from(b)) }
        n += 1;
    }
    n
}

/// Wait until everything written has left the UART (before powering off).
pub fn flush() {
    let base = base();
    let mut spins = 0u32;
    while read_fr(base) & FR_BUSY != 0 && spins < 1_000_000 {
        spins += 1;
        core::hint::spin_loop();
    }
}

/// Make sure Bulwark's next bytes reach the wire: the guest owns the PL011 (pass-through) and may
/// have disabled the UART or its transmitter, or set loopback (which would feed Bulwark's line to
/// the guest's receiver instead of the wire). Returns the guest's control register to put back
/// with [`release`] when it had to change it (docs/console.md).
pub fn claim() -> Option<u32> {
    let base = base();
    // SAFETY: as in `read_fr`; CR is the control register.
    let cr = unsafe { core::ptr::read_volatile((base + CR) as *const u32) };
    let want = (cr | CR_UARTEN | CR_TXE) & !CR_LBE;
    if cr == want {
        return None;
    }
    // Bytes the guest left in the FIFO go out under its own settings first.
    flush();
    // SAFETY: as above; enabling the transmitter and clearing loopback.
    unsafe { core::ptr::write_volatile((base + CR) as *mut u32, want) };
    Some(cr)
}

/// Put back the guest's control register after Bulwark's line has left the UART.
pub fn release(saved: Option<u32>) {
    if let Some(cr) = saved {
        flush();
        // SAFETY: as in `claim`.
        unsafe { core::ptr::write_volatile((base() + CR) as *mut u32, cr) };
    }
}
