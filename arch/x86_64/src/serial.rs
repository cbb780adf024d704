//! COM1 through `uart_16550`: Bulwark's console.

use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::spec::registers::LSR;
use uart_16550::{Config, Uart16550};

/// COM1's I/O base.
pub const COM1: u16 = 0x3f8;

static PORT: Mutex<Option<Uart16550<PioBackend>>> = Mutex::new(None);

/// Program COM1 (115200 8N1, FIFOs on). Returns false when no UART answers.
pub fn init() -> bool {
    // SAFETY: COM1 at 0x3f8 is the PC's first serial port; Bulwark owns it exclusively (the
    // guest's accesses to 0x3f8..0x3ff are trapped and emulated, never forwarded).
    let Ok(mut uart) = (unsafe { Uart16550::new_port(COM1) }) else {
        return false;
    };
    let config = Config {
        check_cts_before_sending: false,
        ..Config::default()
    };
    if uart.init(config).is_err() {
        return false;
    }
    *PORT.lock() = Some(uart);
    true
}

/// Write raw bytes ('\n' becomes "\r\n"). Without an initialised UART the bytes are dropped.
/// Usable from the panic and exception paths: it never waits forever for the lock.
pub fn write(bytes: &[u8]) {
    let mut spins = 0u32;
    let mut guard = loop {
        if let Some(g) = PORT.try_lock() {
            break g;
        }
        spins += 1;
        if spins > 10_000_000 {
            return;
        }
        core::hint::spin_loop();
    };
    let Some(uart) = guard.as_mut() else {
        return;
    };
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if let Some(text) = line.strip_suffix(b"\n") {
            uart.send_bytes_exact(text);
            uart.send_bytes_exact(b"\r\n");
        } else {
            uart.send_bytes_exact(line);
        }
    }
}

/// Write bytes as they are (no `\n` translation), waiting for the UART.
pub fn write_raw(bytes: &[u8]) {
    let Some(mut guard) = lock() else {
        return;
    };
    if let Some(uart) = guard.as_mut() {
        uart.send_bytes_exact(bytes);
    }
}

/// Write what the UART takes now: nothing unless LSR.THRE is set, then up to its FIFO size.
/// Never waits (not for the port lock either). Returns how many bytes were written.
pub fn try_write(bytes: &[u8]) -> usize {
    let Some(mut guard) = PORT.try_lock() else {
        return 0;
    };
    match guard.as_mut() {
        Some(uart) => uart.send_bytes(bytes),
        None => 0,
    }
}

/// The port lock, given up after a bounded wait.
fn lock() -> Option<spin::MutexGuard<'static, Option<Uart16550<PioBackend>>>> {
    for _ in 0..10_000_000u32 {
        if let Some(g) = PORT.try_lock() {
            return Some(g);
        }
        core::hint::spin_loop();
    }
    None
}

/// The logger's drain (`logger::poll` of the Bulwark binary), registered once at boot so that
/// this crate's exit loop can call [`poll`] without knowing the logger.
static POLL: spin::Once<fn()> = spin::Once::new();

/// Register the console drain called by [`poll`].
pub fn set_poll(f: fn()) {
    POLL.call_once(|| f);
}

/// Move held console lines to COM1 while its transmitter is ready (never waits). To be called
/// at exits/entries and in idle.
#[inline]
pub fn poll() {
    if let Some(f) = POLL.get() {
        f();
    }
}

/// Wait until the transmitter has sent every byte (before powering the machine off).
pub fn drain() {
    let Some(mut guard) = PORT.try_lock() else {
        return;
    };
    let Some(uart) = guard.as_mut() else {
        return;
    };
    for _ in 0..10_000_000u32 {
        if uart.lsr().contains(LSR::TRANSMITTER_EMPTY) {
            return;
        }
        core::hint::spin_loop();
    }
}
