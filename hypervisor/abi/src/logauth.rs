//! Authenticated console lines (docs/console.md, "Authenticated lines").
//!
//! Bulwark and the guest share one UART, and the guest may write any bytes to it at any time. So
//! that a reader can tell Bulwark's lines from the guest's, Bulwark draws a 128-bit key per boot
//! before any guest code runs, prints it once at the very start of the log (the guest can never
//! read what the UART printed, and the key never lies in guest memory), and ends every later
//! line it writes with ` seq=N mac=HEX`:
//!
//! * `seq`: 1 for the first line after the key line, +1 per line (a dropped, repeated or
//!   reordered line shows as a break in the sequence);
//! * `mac`: SipHash-2-4 with a 128-bit output, keyed with the boot's key, over the sequence
//!   number (8 bytes, little-endian) followed by the line's text from `bulwark: ` up to the
//!   space before `seq=` (32 lower-case hex digits).
//!
//! Both sides use this module: Bulwark computes tags with [`LineMac`], `xtask` checks lines with
//! [`Verifier`]. A line that contains `bulwark: ` but does not verify is a forgery (or damage);
//! a reader must take nothing from it.

use core::hash::Hasher;
use siphasher::sip128::{Hasher128, SipHasher24};

use crate::console::{BULWARK_PREFIX, RESULT_PREFIX};

/// The key line: `bulwark: log-key <32 hex> alg=siphash-2-4-128 source=<word>`.
pub const KEY_PREFIX: &str = "bulwark: log-key ";
/// The MAC algorithm word on the key line.
pub const ALG: &str = "siphash-2-4-128";
/// The tag's fields, at the end of every authenticated line.
pub const SEQ_FIELD: &str = " seq=";
pub const MAC_FIELD: &str = " mac=";
/// Longest line text Bulwark writes (from `bulwark: `, without the tag): longer messages are cut
/// to it and end in `...`. Readers try no candidate text longer than this, so a hostile line of
/// many `bulwark: ` tokens costs them a bounded number of MACs.
pub const MAX_TEXT: usize = 2048;
/// Length of the key and of the MAC, in bytes.
pub const KEY_LEN: usize = 16;
pub const MAC_LEN: usize = 16;

/// The running MAC of one line: feed the text as it is written, then [`LineMac::finish`].
#[derive(Clone, Debug)]
pub struct LineMac(SipHasher24);

impl LineMac {
    pub fn new(key: &[u8; KEY_LEN], seq: u64) -> LineMac {
        let mut h = SipHasher24::new_with_key(key);
        h.write(&seq.to_le_bytes());
        LineMac(h)
    }
    pub fn update(&mut self, text: &[u8]) {
        self.0.write(text);
    }
    pub fn finish(&self) -> [u8; MAC_LEN] {
        self.0.finish128().as_bytes()
    }
}

/// The MAC of a whole line text (from `bulwark: `, without the tag).
pub fn mac(key: &[u8; KEY_LEN], seq: u64, text: &[u8]) -> [u8; MAC_LEN] {
    let mut m = LineMac::new(key, seq);
    m.update(text);
    m.finish()
}

/// Condense entropy words into a key: SipHash-2-4/128 under a fixed key, used as a mixer only (it
/// adds no entropy: the key is as unpredictable as the words are).
pub fn mix_key(words: &[u64]) -> [u8; KEY_LEN] {
    let mut h = SipHasher24::new_with_key(b"bulwark log key!");
    for w in words {
        h.write(&w.to_le_bytes());
    }
    h.finish128().as_bytes()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of 16 bytes.
pub fn hex16(bytes: &[u8; 16]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        if let [hi, lo] = pair {
            *hi = HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'?');
            *lo = HEX.get(usize::from(b & 0xf)).copied().unwrap_or(b'?');
        }
    }
    out
}

/// Parse exactly 32 hex digits.
pub fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    let s = s.as_bytes();
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let d = |c: u8| (c as char).to_digit(16);
        if let [hi, lo] = pair {
            *o = u8::try_from(d(*hi)? * 16 + d(*lo)?).ok()?;
        }
    }
    Some(out)
}

/// The key of a key line, which must start the line (no prefix) and name [`ALG`].
pub fn parse_key_line(line: &str) -> Option<[u8; KEY_LEN]> {
    let rest = line.trim_end().strip_prefix(KEY_PREFIX)?;
    let mut words = rest.split(' ');
    let key = parse_hex16(words.next()?)?;
    if !words.any(|w| w == "alg=siphash-2-4-128") {
        return None;
    }
    Some(key)
}

/// Split an authenticated-looking line into `(text, seq, mac)`: `text` is everything before the
/// last ` seq=`; the tag must be the line's end.
pub fn split_tag(line: &str) -> Option<(&str, u64, [u8; MAC_LEN])> {
    let line = line.trim_end();
    let (before_mac, mac) = line.rsplit_once(MAC_FIELD)?;
    let (text, seq) = before_mac.rsplit_once(SEQ_FIELD)?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((text, seq.parse().ok()?, parse_hex16(mac)?))
}

/// How the sequence number of a genuine line relates to the lines before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The next number: nothing lost.
    InOrder,
    /// `missing` lines are missing before this one (dropped or suppressed on the wire).
    Gap { missing: u64 },
    /// The number is not above the last one seen: a replayed or reordered line.
    Replayed { last: u64 },
}

/// What one console line is, to a reader holding the boot's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// The first key line of a boot (`reboot`: after a verified result line ended the previous
    /// boot).
    Key { reboot: bool },
    /// A line Bulwark wrote. `text` starts with `bulwark: ` and has no tag; `prefix` is what the
    /// guest had written on the same line before it (arm64: the guest left its line open).
    Genuine {
        prefix: &'a str,
        text: &'a str,
        seq: u64,
        order: Order,
    },
    /// A line that claims to be Bulwark's (it contains `bulwark: `) and does not verify.
    Forged { why: Forgery },
    /// A line that does not claim to be Bulwark's: guest output, firmware, the emulator.
    Other,
}

/// Why a claimed Bulwark line was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forgery {
    /// No key line came before it: nothing can verify it (or Bulwark failed before its key line).
    NoKey,
    /// It has no ` seq=N mac=HEX` tag.
    NoTag,
    /// Its tag does not verify under the boot's key.
    BadMac,
    /// A second key line in one boot, or one that does not start its line.
    KeyLine,
}

impl Forgery {
    pub const fn as_str(self) -> &'static str {
        match self {
            Forgery::NoKey => "no-key",
            Forgery::NoTag => "no-tag",
            Forgery::BadMac => "bad-mac",
            Forgery::KeyLine => "key-line",
        }
    }
}

/// Checks a console log line by line. The first key line of the log is the boot's key; a later
/// key line is accepted only after a verified `bulwark: result` line ended that boot.
#[derive(Clone, Debug, Default)]
pub struct Verifier {
    key: Option<[u8; KEY_LEN]>,
    /// The last sequence number seen (0: the key line).
    last: u64,
    /// A verified result line ended the current boot.
    ended: bool,
}

impl Verifier {
    pub fn new() -> Verifier {
        Verifier::default()
    }

    /// The key in force, if a key line was seen.
    pub fn key(&self) -> Option<&[u8; KEY_LEN]> {
        self.key.as_ref()
    }

    /// Classify one line (without its line end).
    pub fn check<'a>(&mut self, line: &'a str) -> Line<'a> {
        let line = line.trim_end_matches(['\r', '\n']);
        let Some(first) = line.find(BULWARK_PREFIX) else {
            return Line::Other;
        };
        if line.contains(KEY_PREFIX) {
            return match (parse_key_line(line), self.key) {
                (Some(k), None) => {
                    self.start(k);
                    Line::Key { reboot: false }
                }
                (Some(k), Some(_)) if self.ended => {
                    self.start(k);
                    Line::Key { reboot: true }
                }
                _ => Line::Forged {
                    why: Forgery::KeyLine,
                },
            };
        }
        let Some(key) = self.key else {
            return Line::Forged {
                why: Forgery::NoKey,
            };
        };
        let Some((tagged, seq, mac_got)) = split_tag(line) else {
            return Line::Forged {
                why: Forgery::NoTag,
            };
        };
        // The guest may have left its own line open: Bulwark's text starts at one of the
        // `bulwark: ` tokens. Only the right one verifies.
        let mut at = first;
        while let Some(text) = tagged.get(at..) {
            if text.len() <= MAX_TEXT
                && text.starts_with(BULWARK_PREFIX)
                && mac(&key, seq, text.as_bytes()) == mac_got
            {
                let order = if seq == self.last.wrapping_add(1) {
                    Order::InOrder
                } else if seq > self.last {
                    Order::Gap {
                        missing: seq - self.last - 1,
                    }
                } else {
                    Order::Replayed { last: self.last }
                };
                if seq > self.last {
                    self.last = seq;
                }
                if text.starts_with(RESULT_PREFIX) {
                    self.ended = true;
                }
                return Line::Genuine {
                    prefix: tagged.get(..at).unwrap_or(""),
                    text,
                    seq,
                    order,
                };
            }
            match tagged
                .get(at + 1..)
                .and_then(|rest| rest.find(BULWARK_PREFIX))
            {
                Some(next) => at = at + 1 + next,
                None => break,
            }
        }
        Line::Forged {
            why: Forgery::BadMac,
        }
    }

    fn start(&mut self, key: [u8; KEY_LEN]) {
        self.key = Some(key);
        self.last = 0;
        self.ended = false;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    const KEY: [u8; 16] = *b"0123456789abcdef";

    fn tagged(seq: u64, text: &str) -> String {
        let m = hex16(&mac(&KEY, seq, text.as_bytes()));
        format!("{text} seq={seq} mac={}", core::str::from_utf8(&m).unwrap())
    }

    fn key_line() -> String {
        format!(
            "bulwark: log-key {} alg=siphash-2-4-128 source=test",
            core::str::from_utf8(&hex16(&KEY)).unwrap()
        )
    }

    #[test]
    fn streaming_mac_equals_one_shot() {
        let mut m = LineMac::new(&KEY, 7);
        for part in ["bulwark: ", "violation kind=roe", " access=write", ""] {
            m.update(part.as_bytes());
        }
        assert_eq!(
            m.finish(),
            mac(&KEY, 7, b"bulwark: violation kind=roe access=write")
        );
        assert_ne!(mac(&KEY, 7, b"x"), mac(&KEY, 8, b"x"));
    }

    #[test]
    fn hex_round_trip() {
        let h = hex16(&KEY);
        assert_eq!(parse_hex16(core::str::from_utf8(&h).unwrap()), Some(KEY));
        assert_eq!(parse_hex16("00"), None);
        assert_eq!(parse_hex16(&"g".repeat(32)), None);
    }

    #[test]
    fn genuine_lines_verify_in_order() {
        let mut v = Verifier::new();
        assert_eq!(v.check("firmware says hi"), Line::Other);
        assert_eq!(v.check(&key_line()), Line::Key { reboot: false });
        let l1 = tagged(1, "bulwark: INFO hello");
        let l2 = tagged(2, "bulwark: result status=0 reason=guest-exit");
        assert!(matches!(
            v.check(&l1),
            Line::Genuine {
                seq: 1,
                order: Order::InOrder,
                text: "bulwark: INFO hello",
                prefix: ""
            }
        ));
        assert!(matches!(
            v.check(&format!("{l2}\r\n")),
            Line::Genuine {
                seq: 2,
                order: Order::InOrder,
                ..
            }
        ));
        assert_eq!(
            crate::console::parse_result_line(&l2),
            Some((0, "guest-exit"))
        );
    }

    #[test]
    fn forgeries_are_caught() {
        let mut v = Verifier::new();
        assert_eq!(
            v.check("bulwark: result status=0 reason=guest-exit"),
            Line::Forged {
                why: Forgery::NoKey
            }
        );
        v.check(&key_line());
        assert_eq!(
            v.check("bulwark: result status=0 reason=guest-exit"),
            Line::Forged {
                why: Forgery::NoTag
            }
        );
        let good = tagged(1, "bulwark: result status=1 reason=guest-crash");
        // Same tag, other text; other seq; flipped mac digit.
        let swapped = good.replace("status=1 reason=guest-crash", "status=0 reason=guest-exit");
        assert_eq!(
            v.check(&swapped),
            Line::Forged {
                why: Forgery::BadMac
            }
        );
        let reseq = good.replace(" seq=1 ", " seq=2 ");
        assert_eq!(
            v.check(&reseq),
            Line::Forged {
                why: Forgery::BadMac
            }
        );
        // A guest-written copy of a key line (prefixed, or a second one) is refused.
        assert_eq!(
            v.check(&format!("guest| {}", key_line())),
            Line::Forged {
                why: Forgery::KeyLine
            }
        );
        assert_eq!(
            v.check(&key_line()),
            Line::Forged {
                why: Forgery::KeyLine
            }
        );
        // The genuine line still verifies after all that.
        assert!(matches!(v.check(&good), Line::Genuine { seq: 1, .. }));
    }

    #[test]
    fn a_guest_prefix_before_the_genuine_line_is_split_off() {
        let mut v = Verifier::new();
        v.check(&key_line());
        let g = tagged(1, "bulwark: violation kind=roe access=write");
        // The guest left "bulwark: result status=0 " open before Bulwark's line.
        let line = format!("half a line bulwark: result status=0 {g}");
        match v.check(&line) {
            Line::Genuine { prefix, text, .. } => {
                assert_eq!(prefix, "half a line bulwark: result status=0 ");
                assert_eq!(text, "bulwark: violation kind=roe access=write");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gaps_and_replays_are_reported() {
        let mut v = Verifier::new();
        v.check(&key_line());
        let lines: Vec<String> = (1..=4).map(|i| tagged(i, "bulwark: INFO x")).collect();
        assert!(matches!(
            v.check(&lines[0]),
            Line::Genuine {
                order: Order::InOrder,
                ..
            }
        ));
        assert!(matches!(
            v.check(&lines[2]),
            Line::Genuine {
                order: Order::Gap { missing: 1 },
                ..
            }
        ));
        assert!(matches!(
            v.check(&lines[1]),
            Line::Genuine {
                order: Order::Replayed { last: 3 },
                ..
            }
        ));
        assert!(matches!(
            v.check(&lines[2]),
            Line::Genuine {
                order: Order::Replayed { last: 3 },
                ..
            }
        ));
        assert!(matches!(
            v.check(&lines[3]),
            Line::Genuine {
                order: Order::InOrder,
                ..
            }
        ));
    }

    #[test]
    fn a_new_key_only_after_a_verified_result() {
        let mut v = Verifier::new();
        v.check(&key_line());
        v.check(&tagged(1, "bulwark: result status=0 reason=guest-exit"));
        assert_eq!(v.check(&key_line()), Line::Key { reboot: true });
        assert!(matches!(
            v.check(&tagged(1, "bulwark: INFO again")),
            Line::Genuine {
                order: Order::InOrder,
                ..
            }
        ));
    }

    #[test]
    fn a_long_line_of_tokens_costs_a_bounded_number_of_macs() {
        let mut v = Verifier::new();
        v.check(&key_line());
        let text = format!("{}bulwark: INFO x", "bulwark: ".repeat(100_000));
        let line = tagged(1, "bulwark: INFO x").replace("bulwark: INFO x", &text);
        // Only the last MAX_TEXT bytes are tried: the genuine text at the end still verifies.
        assert!(matches!(
            v.check(&line),
            Line::Genuine {
                text: "bulwark: INFO x",
                ..
            }
        ));
        let forged = format!(
            "{} seq=2 mac={}",
            "bulwark: ".repeat(100_000),
            "0".repeat(32)
        );
        assert_eq!(
            v.check(&forged),
            Line::Forged {
                why: Forgery::BadMac
            }
        );
    }

    #[test]
    fn hostile_lines_do_not_panic() {
        let mut v = Verifier::new();
        v.check(&key_line());
        for l in [
            "bulwark: ",
            "bulwark:  seq= mac=",
            "bulwark: x seq=99999999999999999999999 mac=00000000000000000000000000000000",
            "bulwark: x seq=1 mac=zz",
            "\u{e9}bulwark: \u{e9} seq=1 mac=00000000000000000000000000000000",
            "bulwark: bulwark: bulwark: seq=1 mac=00000000000000000000000000000000",
        ] {
            assert!(matches!(v.check(l), Line::Forged { .. }), "{l}");
        }
    }
}
