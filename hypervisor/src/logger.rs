//! `log` facade on the serial console: `bulwark: <LEVEL> <message>` per line.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;

struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        crate::arch::console_write(s.as_bytes());
        Ok(())
    }
}

static LOCK: Mutex<()> = Mutex::new(());
static INIT: AtomicBool = AtomicBool::new(false);

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        // Violation lines have their own stable format (spec §5): no level word.
        if record.target() == bulwark_core::violation::VIOLATION_TARGET {
            write_fmt(format_args!("bulwark: violation {}\n", record.args()));
            return;
        }
        // The global rate limiter's summary: `bulwark: violations suppressed=N total=T`.
        if record.target() == bulwark_core::violation::SUMMARY_TARGET {
            write_fmt(format_args!("bulwark: violations {}\n", record.args()));
            return;
        }
        write_fmt(format_args!(
            "bulwark: {} {}\n",
            record.level(),
            record.args()
        ));
    }
    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Install the logger. Idempotent.
pub fn init(level: log::LevelFilter) {
    if !INIT.swap(true, Ordering::AcqRel) {
        // Only fails if a logger is already set, which INIT rules out.
        let _ = log::set_logger(&LOGGER);
    }
    log::set_max_level(level);
}

/// Write formatted text to the console as one unit (no interleaving between CPUs).
pub fn write_fmt(args: fmt::Arguments) {
    let _guard = LOCK.lock();
    let _ = Console.write_fmt(args);
}

/// Write without taking the console lock: for the panic handler only.
pub fn write_fmt_unlocked(args: fmt::Arguments) {
    let _ = Console.write_fmt(args);
}
