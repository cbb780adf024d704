//! `log` facade on the serial console: `bulwark: <LEVEL> <message>` per line, each line
//! authenticated (docs/console.md, `bulwark_abi::logauth`).
//!
//! [`init`] prints the boot's key line first; from then on every Bulwark line ends with
//! ` seq=N mac=HEX`. The MAC is computed while the line streams out (no line buffer), over exactly
//! the bytes written: control characters in a message are written as `?`, so a line stays one
//! line whatever a message holds.

use bulwark_abi::logauth::{self, LineMac, KEY_LEN};
use bulwark_core::console::LineRing;
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

/// Write one whole Bulwark line straight to the UART, waiting for it: `bulwark: ` + `args` + tag
/// + line end. Only for the panic and fatal paths (after [`flush_unlocked`]).
fn line_direct(args: fmt::Arguments) {
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
        let digits = decimal(seq, &mut seq_buf);
        crate::arch::console_write(logauth::SEQ_FIELD.as_bytes());
        crate::arch::console_write(digits);
        crate::arch::console_write(logauth::MAC_FIELD.as_bytes());
        crate::arch::console_write(&logauth::hex16(&m.finish()));
    }
    crate::arch::console_write(b"\n");
    crate::arch::console_release(saved);
}

/// `n` in decimal, without core::fmt: the digits at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(d) = buf.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    buf.get(i..).unwrap_or(&[])
}

/// Bytes of console the logger may hold before lines are dropped (docs/console.md).
const RING_BYTES: usize = 64 * 1024;

/// The console: a line being formatted, and the ring of lines not yet on the wire.
struct Console {
    /// Text of the line being formatted (from `bulwark: `), at most `MAX_TEXT` bytes.
    text: [u8; logauth::MAX_TEXT],
    len: usize,
    cut: bool,
    ring: LineRing<RING_BYTES>,
    /// Violation lines dropped since the last note (their seq numbers were used).
    dropped: u64,
}

static CONSOLE: Mutex<Console> = Mutex::new(Console {
    text: [0; logauth::MAX_TEXT],
    len: 0,
    cut: false,
    ring: LineRing::new(),
    dropped: 0,
});

/// Longest tag plus line end: ` seq=` 20 digits ` mac=` 32 hex `\r\n`.
const TAG_MAX: usize = 5 + 20 + 5 + 32 + 2;
/// Room a dropped note needs (text and tag).
const NOTE_MAX: usize = 128 + TAG_MAX;

/// Formats into `Console::text`, cut like [`LineWriter`], control characters as `?`.
struct Stage<'a>(&'a mut Console);

impl Write for Stage<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let c = &mut *self.0;
        let room = (logauth::MAX_TEXT - 3).saturating_sub(c.len);
        let mut take = s.len().min(room);
        while take > 0 && !s.is_char_boundary(take) {
            take -= 1;
        }
        if take < s.len() {
            c.cut = true;
        }
        let src = s.as_bytes().get(..take).unwrap_or(&[]);
        let dst = c.text.get_mut(c.len..c.len + src.len()).ok_or(fmt::Error)?;
        for (o, &b) in dst.iter_mut().zip(src) {
            *o = if b < 0x20 || b == 0x7f { b'?' } else { b };
        }
        c.len += src.len();
        Ok(())
    }
}

impl Console {
    /// Format `bulwark: ` + `args` into the staging text.
    fn stage(&mut self, args: fmt::Arguments) {
        self.len = 0;
        self.cut = false;
        let mut st = Stage(self);
        let _ = st.write_str(bulwark_abi::console::BULWARK_PREFIX);
        let _ = st.write_fmt(args);
        if self.cut {
            if let Some(d) = self.text.get_mut(self.len..self.len + 3) {
                d.copy_from_slice(b"...");
                self.len += 3;
            }
        }
    }
}

/// Append `text` with its tag under the next seq (the ring has room: checked by the caller).
fn push_tagged(ring: &mut LineRing<RING_BYTES>, text: &[u8]) {
    HELD.store(true, Ordering::Relaxed);
    {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        match KEY.get() {
            Some(k) => {
                let mut m = LineMac::new(k, seq);
                m.update(text);
                let mut seq_buf = [0u8; 20];
                let digits = decimal(seq, &mut seq_buf);
                let mac = logauth::hex16(&m.finish());
                ring.push(&[
                    text,
                    logauth::SEQ_FIELD.as_bytes(),
                    digits,
                    logauth::MAC_FIELD.as_bytes(),
                    &mac,
                    b"\r\n",
                ]);
            }
            None => {
                ring.push(&[text, b"\r\n"]);
            }
        }
    }
}

impl Console {
    /// Queue the staged line. When the ring has no room for it (and for the note about earlier
    /// drops): a `droppable` line (a violation line: the one kind a guest can make Bulwark print
    /// in a flood, bounded only by `ratelimit=`) is dropped, its seq used so readers see the gap;
    /// any other line (Bulwark's own word: errors, the counters, the verdict) waits for room.
    fn commit(&mut self, droppable: bool) {
        let note = self.dropped != 0;
        let need = self.len + TAG_MAX + if note { NOTE_MAX } else { 0 };
        if need > self.ring.free() {
            if droppable {
                SEQ.fetch_add(1, Ordering::Relaxed);
                self.dropped = self.dropped.saturating_add(1);
                return;
            }
            self.make_room(need);
        }
        if note {
            self.push_note();
        }
        push_tagged(&mut self.ring, self.text.get(..self.len).unwrap_or(&[]));
    }

    /// `bulwark: WARN console dropped=N ...`: the violation lines dropped since the last note.
    fn push_note(&mut self) {
        let mut buf = [0u8; 128];
        let mut w = Buf(&mut buf, 0);
        let _ = write!(
            w,
            "{}{} (violation lines; console buffer full: the seq gap before this line)",
            bulwark_abi::console::DROPPED_PREFIX,
            self.dropped
        );
        let n = w.1;
        self.dropped = 0;
        push_tagged(&mut self.ring, buf.get(..n).unwrap_or(&[]));
    }

    /// Write what the transmitter takes now, without waiting. `whole_line`: the guest shares the
    /// wire (arm64): a line that has started goes out completely (waiting for the FIFO only for
    /// its rest) before the guest runs again, so guest bytes never land inside a Bulwark line.
    fn drain(&mut self, whole_line: bool) {
        if self.ring.used() == 0 {
            return;
        }
        let saved = crate::arch::console_claim();
        if !self.ring.mid_line() && GUEST_LINE_OPEN.swap(false, Ordering::Relaxed) {
            crate::arch::console_write_raw(b"\r\n");
        }
        loop {
            let n = crate::arch::console_try_write(self.ring.front());
            self.ring.consume(n);
            if n == 0 || self.ring.used() == 0 {
                break;
            }
        }
        if whole_line {
            while self.ring.mid_line() && self.ring.used() > 0 {
                let rest = self.ring.front_line();
                let n = rest.len();
                crate::arch::console_write_raw(rest);
                self.ring.consume(n);
            }
        }
        HELD.store(self.ring.used() > 0, Ordering::Relaxed);
        crate::arch::console_release(saved);
    }

    /// Write held bytes, waiting for the transmitter, until `need` bytes are free.
    fn make_room(&mut self, need: usize) {
        let saved = crate::arch::console_claim();
        if !self.ring.mid_line() && GUEST_LINE_OPEN.swap(false, Ordering::Relaxed) {
            crate::arch::console_write_raw(b"\r\n");
        }
        while self.ring.free() < need && self.ring.used() > 0 {
            let f = self.ring.front_line();
            let n = f.len();
            crate::arch::console_write_raw(f);
            self.ring.consume(n);
        }
        crate::arch::console_release(saved);
    }

    /// Write everything held, waiting for the transmitter.
    fn flush(&mut self) {
        if self.ring.used() == 0 {
            return;
        }
        let saved = crate::arch::console_claim();
        if !self.ring.mid_line() && GUEST_LINE_OPEN.swap(false, Ordering::Relaxed) {
            crate::arch::console_write_raw(b"\r\n");
        }
        while self.ring.used() > 0 {
            let f = self.ring.front();
            let n = f.len();
            crate::arch::console_write_raw(f);
            self.ring.consume(n);
        }
        HELD.store(false, Ordering::Relaxed);
        crate::arch::console_release(saved);
    }
}

/// A `fmt::Write` into a fixed buffer (text beyond it is cut).
struct Buf<'a>(&'a mut [u8], usize);

impl Write for Buf<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.0.len().saturating_sub(self.1));
        if let Some(d) = self.0.get_mut(self.1..self.1 + n) {
            d.copy_from_slice(s.as_bytes().get(..n).unwrap_or(&[]));
        }
        self.1 += n;
        Ok(())
    }
}

/// The ring may hold bytes (set with every append, cleared when a drain empties it): lets
/// [`poll`] return at once on the exit path when there is nothing to write.
static HELD: AtomicBool = AtomicBool::new(false);

/// Move what the transmitter takes now from the ring to the UART (never waits, except that on
/// a shared UART a started line is finished). Called at exits/entries and in idle.
#[inline]
pub fn poll() {
    if !HELD.load(Ordering::Relaxed) {
        return;
    }
    if let Some(mut c) = CONSOLE.try_lock() {
        c.drain(crate::arch::CONSOLE_SHARED);
    }
}

/// The run's last line (the result line): queued after everything held, then all of it written,
/// waiting for the transmitter, before the machine powers off. Does not wait for the console
/// lock (a panic inside the logger): then the line goes out directly.
pub fn write_final(args: fmt::Arguments) {
    match CONSOLE.try_lock() {
        Some(mut c) => {
            c.stage(args);
            c.commit(false);
            c.flush();
        }
        None => line_direct(args),
    }
}

static INIT: AtomicBool = AtomicBool::new(false);

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        // Violation lines have their own stable format (spec §5): no level word.
        if record.target() == bulwark_core::violation::VIOLATION_TARGET {
            queue(format_args!("violation {}", record.args()), true);
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
            let mut c = CONSOLE.lock();
            c.flush();
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

/// Queue one Bulwark line (`args` is the text after `bulwark: `) as one unit (no interleaving
/// between CPUs), then write what the transmitter takes now (docs/console.md). Waits for the UART
/// only when the ring has no room for the line (violation lines are dropped instead:
/// [`Console::commit`]).
pub fn write_line(args: fmt::Arguments) {
    queue(args, false);
}

/// Queue one line; `droppable`: see [`Console::commit`].
fn queue(args: fmt::Arguments, droppable: bool) {
    let mut c = CONSOLE.lock();
    c.stage(args);
    c.commit(droppable);
    c.drain(false);
}

/// For the panic and fatal-exception paths: write every held line, then this one, straight to
/// the UART, waiting for it. Does not wait for the console lock: if the code that panicked held
/// it, the held lines are lost (the seq gap shows it) and this line still goes out.
pub fn write_line_unlocked(args: fmt::Arguments) {
    if let Some(mut c) = CONSOLE.try_lock() {
        c.flush();
    }
    line_direct(args);
}

/// A whole guest line relayed by Bulwark's emulated console (x86 COM1): `guest| <text>`, not
/// tagged (it is the guest's text, not Bulwark's word). The relay has already written control
/// bytes as `\xNN` (arch/x86_64/src/vm.rs).
/// Never dropped (each of the guest's bytes already cost it an exit): a line that does not fit
/// waits for room.
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
pub fn write_guest_line(text: &str) {
    let mut c = CONSOLE.lock();
    let note = c.dropped != 0;
    let need =
        bulwark_abi::console::GUEST_PREFIX.len() + text.len() + 2 + if note { NOTE_MAX } else { 0 };
    if need > c.ring.free() {
        c.make_room(need);
    }
    if note {
        c.push_note();
    }
    HELD.store(true, Ordering::Relaxed);
    let parts: [&[u8]; 3] = [
        bulwark_abi::console::GUEST_PREFIX.as_bytes(),
        text.as_bytes(),
        b"\r\n",
    ];
    if !c.ring.push(&parts) {
        // Longer than the whole ring (the ring is empty now): straight to the UART.
        for p in parts {
            crate::arch::console_write_raw(p);
        }
    }
    c.drain(false);
}

/// The guest is about to run with direct access to the console UART: it may leave a line open,
/// so Bulwark's next line starts with a line break. (x86 relays whole guest lines from its
/// emulated COM1 today; it calls this once the UART is the guest's.)
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline]
pub fn guest_may_write() {
    GUEST_LINE_OPEN.store(true, Ordering::Relaxed);
}
