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
