//! Console line formats live in the ABI crate (`bulwark_abi::console`) because xtask parses them.
pub use bulwark_abi::console::*;

/// The console's byte ring (docs/console.md, "A console that never waits"): the logger appends
/// whole lines, all or nothing; the back end takes bytes from the front only while its
/// transmitter is ready. Lines that do not fit are the caller's to count as dropped.
pub struct LineRing<const N: usize> {
    buf: [u8; N],
    /// Index of the oldest byte.
    tail: usize,
    /// Bytes held.
    used: usize,
    /// The last byte taken was not a line end: a line is partly on the wire.
    mid_line: bool,
}

impl<const N: usize> Default for LineRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> LineRing<N> {
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            tail: 0,
            used: 0,
            mid_line: false,
        }
    }

    /// Bytes held.
    pub const fn used(&self) -> usize {
        self.used
    }

    /// Room left.
    pub const fn free(&self) -> usize {
        N - self.used
    }

    /// Part of a line has been taken, the rest not yet.
    pub const fn mid_line(&self) -> bool {
        self.mid_line
    }

    /// Append the concatenation of `parts` if all of it fits; else append nothing.
    pub fn push(&mut self, parts: &[&[u8]]) -> bool {
        let len = parts.iter().fold(0usize, |a, p| a.saturating_add(p.len()));
        if len > self.free() {
            return false;
        }
        let mut head = (self.tail + self.used) % N.max(1);
        for p in parts {
            let mut p: &[u8] = p;
            while !p.is_empty() {
                let room = N - head;
                let n = room.min(p.len());
                let (now, later) = p.split_at(n);
                if let Some(dst) = self.buf.get_mut(head..head + n) {
                    dst.copy_from_slice(now);
                }
                head = (head + n) % N;
                p = later;
            }
        }
        self.used += len;
        true
    }

    /// The oldest bytes, as one contiguous slice (up to the end of the buffer).
    pub fn front(&self) -> &[u8] {
        let n = self.used.min(N - self.tail);
        self.buf.get(self.tail..self.tail + n).unwrap_or(&[])
    }

    /// Like [`LineRing::front`], but only up to and including the next line end.
    pub fn front_line(&self) -> &[u8] {
        let f = self.front();
        match f.iter().position(|&b| b == b'\n') {
            Some(i) => f.get(..=i).unwrap_or(f),
            None => f,
        }
    }

    /// Drop the `n` oldest bytes (they went out).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.used);
        if n == 0 {
            return;
        }
        let last = self.buf.get((self.tail + n - 1) % N).copied();
        self.mid_line = last != Some(b'\n');
        self.tail = (self.tail + n) % N;
        self.used -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::LineRing;

    #[test]
    fn ring_is_all_or_nothing_and_wraps() {
        let mut r = LineRing::<16>::new();
        assert!(r.push(&[b"abc", b"de\n"]));
        assert_eq!(r.used(), 6);
        assert!(!r.push(&[b"0123456789x"]), "11 bytes do not fit in 10");
        assert_eq!(r.used(), 6);
        assert_eq!(r.front_line(), b"abcde\n");
        r.consume(2);
        assert!(r.mid_line());
        r.consume(4);
        assert!(!r.mid_line());
        // Wraps around the end of the buffer.
        assert!(r.push(&[b"0123456789\n", b"xy\n"]));
        let mut out = Vec::new();
        while r.used() > 0 {
            let f = r.front().to_vec();
            out.extend_from_slice(&f);
            r.consume(f.len());
        }
        assert_eq!(out, b"0123456789\nxy\n");
        assert!(!r.mid_line());
        assert_eq!(r.free(), 16);
        // A full ring takes nothing more, and a line taken in pieces leaves it mid-line.
        assert!(r.push(&[&[b'z'; 16]]));
        assert!(!r.push(&[b""[..].as_ref(), b"q"]));
        r.consume(3);
        assert!(r.mid_line());
    }
}
