//! Instruction decoding Bulwark needs where the abort syndrome says nothing (host-tested).
//!
//! Store-exclusives to chunk-protected pages are completed by Bulwark instead of being stepped:
//! see `hypervisor/src/aarch64/guest/swstore.rs` and docs/aarch64.md.

/// A decoded store-exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exclusive {
    /// Status register (Ws).
    pub rs: u8,
    pub rt: u8,
    /// Second register of a pair.
    pub rt2: Option<u8>,
    /// Bytes per register.
    pub elem: u8,
}

impl Exclusive {
    /// Total bytes stored.
    pub fn size(&self) -> u8 {
        if self.rt2.is_some() {
            self.elem * 2
        } else {
            self.elem
        }
    }
}

/// Decode STXR/STLXR (any size) and STXP/STLXP (32/64-bit); anything else is `None`.
pub fn decode_exclusive(insn: u32) -> Option<Exclusive> {
    let rs = ((insn >> 16) & 31) as u8;
    let rt2 = ((insn >> 10) & 31) as u8;
    let rt = (insn & 31) as u8;
    // STXR/STLXR: size 001000 0 0 0 Rs o0 11111 Rn Rt
    if insn & 0x3fe0_7c00 == 0x0800_7c00 {
        return Some(Exclusive {
            rs,
            rt,
            rt2: None,
            elem: 1 << (insn >> 30),
        });
    }
    // STXP/STLXP: 1 sz 001000 0 0 1 Rs o0 Rt2 Rn Rt
    if insn & 0xbfe0_0000 == 0x8820_0000 {
        return Some(Exclusive {
            rs,
            rt,
            rt2: Some(rt2),
            elem: if insn & (1 << 30) != 0 { 8 } else { 4 },
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusives_decode() {
        // stxr w2, x1, [x0]
        assert_eq!(
            decode_exclusive(0xc802_7c01),
            Some(Exclusive {
                rs: 2,
                rt: 1,
                rt2: None,
                elem: 8
            })
        );
        // stlxrb w3, w4, [x5]
        assert_eq!(
            decode_exclusive(0x0803_fca4),
            Some(Exclusive {
                rs: 3,
                rt: 4,
                rt2: None,
                elem: 1
            })
        );
        // stxp w1, x2, x3, [x4]
        assert_eq!(
            decode_exclusive(0xc821_0c82),
            Some(Exclusive {
                rs: 1,
                rt: 2,
                rt2: Some(3),
                elem: 8
            })
        );
        // str x1, [x0]; ldxr x1, [x0]; stp x1, x2, [x0]
        for i in [0xf900_0001, 0xc85f_7c01, 0xa900_0801] {
            assert_eq!(decode_exclusive(i), None, "{i:#x}");
        }
    }
}
