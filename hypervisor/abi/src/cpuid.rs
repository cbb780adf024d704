//! x86 CPUID leaves through which a guest discovers Bulwark and its features.
//!
//! * Leaf [`LEAF_SIGNATURE`] (0x40000000): EAX = highest Bulwark leaf ([`LEAF_FEATURES`]),
//!   EBX, ECX, EDX = the 12 bytes of [`SIGNATURE`] (little-endian, in that order).
//! * Leaf [`LEAF_FEATURES`] (0x40000001):
//!   - EAX bits 7:0 ROE implementation version (2), bit 8 ROE_MPROTECT available, bit 9
//!     ROE_MPROTECT_CHUNK available, bit 10 chunk protection is backed by SPP (fully
//!     unprotected 128-byte sub-pages of a chunk page cause no exit); bits 31:11 reserved (0).
//!   - EBX bits 1:0 the violation policy ([`crate::policy::ViolationPolicy::encode`]);
//!     bits 31:2 reserved (0).
//!   - ECX, EDX reserved (0).
//!
//! CPUID leaves 0x40000002..=0x400000ff return all zeros.

use crate::policy::ViolationPolicy;

pub const LEAF_SIGNATURE: u32 = 0x4000_0000;
pub const LEAF_FEATURES: u32 = 0x4000_0001;
/// The hypervisor vendor signature.
pub const SIGNATURE: [u8; 12] = *b"BulwarkBulwa";

pub const FEAT_ROE_VERSION_MASK: u32 = 0xff;
pub const FEAT_ROE_MPROTECT: u32 = 1 << 8;
pub const FEAT_ROE_CHUNK: u32 = 1 << 9;
pub const FEAT_CHUNK_SPP: u32 = 1 << 10;
const FEAT_EAX_KNOWN: u32 =
    FEAT_ROE_VERSION_MASK | FEAT_ROE_MPROTECT | FEAT_ROE_CHUNK | FEAT_CHUNK_SPP;
pub const FEAT_POLICY_MASK: u32 = 0b11;

/// Leaf 0x40000000 as registers (EAX, EBX, ECX, EDX).
pub const fn signature_leaf() -> [u32; 4] {
    let s = SIGNATURE;
    [
        LEAF_FEATURES,
        u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
        u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
    ]
}

/// Do these EBX, ECX, EDX of leaf 0x40000000 carry Bulwark's signature?
pub const fn is_bulwark(ebx: u32, ecx: u32, edx: u32) -> bool {
    let l = signature_leaf();
    ebx == l[1] && ecx == l[2] && edx == l[3]
}

/// The feature leaf, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    pub roe_version: u8,
    pub roe_mprotect: bool,
    pub roe_chunk: bool,
    pub chunk_spp: bool,
    pub policy: ViolationPolicy,
}

/// The feature leaf holds a value this ABI does not define.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadFeatures {
    ReservedBits { reg: &'static str, bits: u32 },
    UnknownPolicy(u32),
}

impl Features {
    /// (EAX, EBX, ECX, EDX).
    pub const fn encode(&self) -> [u32; 4] {
        let mut eax = self.roe_version as u32;
        if self.roe_mprotect {
            eax |= FEAT_ROE_MPROTECT;
        }
        if self.roe_chunk {
            eax |= FEAT_ROE_CHUNK;
        }
        if self.chunk_spp {
            eax |= FEAT_CHUNK_SPP;
        }
        [eax, self.policy.encode(), 0, 0]
    }

    pub const fn decode(regs: [u32; 4]) -> Result<Features, BadFeatures> {
        let [eax, ebx, ecx, edx] = regs;
        if eax & !FEAT_EAX_KNOWN != 0 {
            return Err(BadFeatures::ReservedBits {
                reg: "eax",
                bits: eax & !FEAT_EAX_KNOWN,
            });
        }
        if ebx & !FEAT_POLICY_MASK != 0 {
            return Err(BadFeatures::ReservedBits {
                reg: "ebx",
                bits: ebx & !FEAT_POLICY_MASK,
            });
        }
        if ecx != 0 {
            return Err(BadFeatures::ReservedBits {
                reg: "ecx",
                bits: ecx,
            });
        }
        if edx != 0 {
            return Err(BadFeatures::ReservedBits {
                reg: "edx",
                bits: edx,
            });
        }
        let policy = match ViolationPolicy::decode(ebx) {
            Ok(p) => p,
            Err(_) => return Err(BadFeatures::UnknownPolicy(ebx)),
        };
        Ok(Features {
            roe_version: (eax & FEAT_ROE_VERSION_MASK) as u8,
            roe_mprotect: eax & FEAT_ROE_MPROTECT != 0,
            roe_chunk: eax & FEAT_ROE_CHUNK != 0,
            chunk_spp: eax & FEAT_CHUNK_SPP != 0,
            policy,
        })
    }
}
