//! `log` facade on the serial console: `bulwark: <LEVEL> <message>` per line, each line
//! authenticated (docs/console.md, `bulwark_abi::logauth`).
//!
//! [`init`] prints the boot's key line first; from then on every Bulwark line ends with
//! ` seq=N mac=HEX`. The MAC is computed while the line streams out (no line buffer), over exactly
//! the bytes written: control characters in a message are written as `?`, so a line stays one
//! line whatever a message holds.

use bulwark_abi::logauth::{self, LineMac, KEY_LEN};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::{Mutex, Once};

/// The boot's key: set once by [`init`], before any guest code runs; never mapped to a guest.
static KEY: Once<[u8; KEY_LEN]> = Once::new();
/// The sequence number of the last line written (the key line is 0).
static SEQ: AtomicU64 = AtomicU64::new(0);
/// The guest may have left the console's current line open (it writes the UART directly and
/// ran since Bulwark's last line): start the next line with a line break.
static GUEST_LINE_OPEN: AtomicBool = AtomicBool::new(false);

/// Streams one Bulwark line to the console and into its MAC, cut at
/// [`logauth::MAX_TEXT`] bytes (then ending in `...`).
struct LineWriter {
    mac: Option<LineMac>,
    /// Text bytes written so far.
    written: usize,
    /// The text was cut.
    cut: bool,
}

impl LineWriter {
    fn new(mac: Option<LineMac>) -> LineWriter {
        LineWriter {
            mac,
            written: 0,
            cut: false,
        }
    }

    /// Write and hash bytes as they are.
    fn emit(&mut self, bytes: &[u8]) {
        crate::arch::console_write(bytes);
        if let Some(m) = self.mac.as_mut() {
            m.update(bytes);
        }
        self.written = self.written.saturating_add(bytes.len());
    }

    /// End the text: `...` when it was cut.
    fn end_text(&mut self) {
        if self.cut {
            self.emit(b"...");
        }
    }
}

impl Write for LineWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = (logauth::MAX_TEXT - 3).saturating_sub(self.written);
        let mut take = s.len().min(room);
        while take > 0 && !s.is_char_boundary(take) {
            take -= 1;
        }
        if take < s.len() {
            self.cut = true;
        }
        let bytes = s.as_bytes().get(..take).unwrap_or(&[]);
        if !bytes.iter().any(|&b| b < 0x20 || b == 0x7f) {
            // The common case: nothing to replace; write and hash the text as it is.
            self.emit(bytes);
            return Ok(());
        }
        // Control characters would break the line (or a terminal): written as `?`.
        let mut buf = [0u8; 64];
        for chunk in bytes.chunks(buf.len()) {
            let out = buf.get_mut(..chunk.len()).ok_or(fmt::Error)?;
            for (o, &b) in out.iter_mut().zip(chunk) {
                *o = if b < 0x20 || b == 0x7f { b'?' } else { b };
            }
            self.emit(out);
        }
        Ok(())
    }
}

/// Write one whole Bulwark line: `bulwark: ` + `args` + tag + line end.
fn line(args: fmt::Arguments) {
    let saved = crate::arch::console_claim();
    if GUEST_LINE_OPEN.swap(false, Ordering::Relaxed) {
        crate::arch::console_write(b"\n");
    }
    let key = KEY.get();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    let mut w = LineWriter::new(key.map(|k| LineMac::new(k, seq)));
    let _ = w.write_str(bulwark_abi::console::BULWARK_PREFIX);
    let _ = w.write_fmt(args);
    w.end_text();
    if let Some(m) = w.mac.take() {
        let mut seq_buf = [0u8; 20];
        let mut i = seq_buf.len();
        let mut n = seq;
        loop {
            i -= 1;
            if let Some(d) = seq_buf.get_mut(i) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || i == 0 {
                break;
            }
        }
        crate::arch::console_write(logauth::SEQ_FIELD.as_bytes());
        crate::arch::console_write(seq_buf.get(i..).unwrap_or(&[]));
        crate::arch::console_write(logauth::MAC_FIELD.as_bytes());
        crate::arch::console_write(&logauth::hex16(&m.finish()));
    }
    crate::arch::console_write(b"\n");
    crate::arch::console_release(saved);
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
            write_line(format_args!("violation {}", record.args()));
            return;
        }
        // The global rate limiter's summary: `bulwark: violations suppressed=N total=T`.
        if record.target() == bulwark_core::violation::SUMMARY_TARGET {
            write_line(format_args!("violations {}", record.args()));
            return;
        }
        write_line(format_args!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Install the logger and print the boot's key line (the first time only). `key` and `source`
/// come from the arch's entropy (`arch::log_key`); this runs before any guest code.
pub fn init(level: log::LevelFilter, key: [u8; KEY_LEN], source: &str) {
    if !INIT.swap(true, Ordering::AcqRel) {
        {
            let _guard = LOCK.lock();
            let hex = logauth::hex16(&key);
            crate::arch::console_write(logauth::KEY_PREFIX.as_bytes());
            crate::arch::console_write(&hex);
            let mut w = LineWriter::new(None);
            let _ = write!(w, " alg={} source={}", logauth::ALG, source);
            crate::arch::console_write(b"\n");
            KEY.call_once(|| key);
        }
        // Only fails if a logger is already set, which INIT rules out.
        let _ = log::set_logger(&LOGGER);
    }
    log::set_max_level(level);
}

/// Write one Bulwark line (`args` is the text after `bulwark: `) as one unit (no interleaving
/// between CPUs).
pub fn write_line(args: fmt::Arguments) {
    let _guard = LOCK.lock();
    line(args);
}

/// [`write_line`] without taking the console lock: for the panic and fatal-exception paths only.
pub fn write_line_unlocked(args: fmt::Arguments) {
    line(args);
}

/// A whole guest line relayed by Bulwark's emulated console (x86 COM1): `guest| <text>`, not
/// tagged (it is the guest's text, not Bulwark's word). The relay has already written control
/// bytes as `\xNN` (arch/x86_64/src/vm.rs).
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
pub fn write_guest_line(text: &str) {
    let _guard = LOCK.lock();
    crate::arch::console_write(bulwark_abi::console::GUEST_PREFIX.as_bytes());
    crate::arch::console_write(text.as_bytes());
    crate::arch::console_write(b"\n");
}

/// The guest is about to run with direct access to the console UART: it may leave a line open,
/// so Bulwark's next line starts with a line break. (x86 relays whole guest lines from its
/// emulated COM1 today; it calls this once the UART is the guest's.)
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline]
pub fn guest_may_write() {
    GUEST_LINE_OPEN.store(true, Ordering::Relaxed);
}
