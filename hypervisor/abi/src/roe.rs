//! ROE (Read-Only Enforcement) hypercall: numbers, sub-operations, encode/decode.
//!
//! x86: `VMCALL` with RAX = [`KVM_HC_ROE`], RBX = sub-op, RCX = a1, RDX = a2; result in RAX.
//! arm64: `HVC #0` with x0 = [`crate::smccc::BULWARK_ROE`], x1 = sub-op, x2 = a1, x3 = a2; result
//! in x0. Results: a non-negative count or a negative [`crate::errno::Errno`].

/// The ROE hypercall number on x86 (KVM's ROE series).
pub const KVM_HC_ROE: u64 = 11;
/// Version this implementation reports for `ROE_VERSION`.
pub const ROE_IMPL_VERSION: u64 = 2;

pub const ROE_VERSION: u64 = 0;
pub const ROE_MPROTECT: u64 = 1;
pub const ROE_MPROTECT_CHUNK: u64 = 2;

/// A ROE sub-operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoeOp {
    /// Returns the implementation version.
    Version,
    /// a1 = page-aligned guest-virtual start, a2 = number of pages.
    Mprotect,
    /// a1 = guest-virtual start (any byte), a2 = number of bytes.
    MprotectChunk,
}

/// The sub-operation value is not one of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownRoeOp(pub u64);

impl RoeOp {
    pub const fn decode(v: u64) -> Result<RoeOp, UnknownRoeOp> {
        match v {
            ROE_VERSION => Ok(RoeOp::Version),
            ROE_MPROTECT => Ok(RoeOp::Mprotect),
            ROE_MPROTECT_CHUNK => Ok(RoeOp::MprotectChunk),
            other => Err(UnknownRoeOp(other)),
        }
    }
    pub const fn encode(self) -> u64 {
        match self {
            RoeOp::Version => ROE_VERSION,
            RoeOp::Mprotect => ROE_MPROTECT,
            RoeOp::MprotectChunk => ROE_MPROTECT_CHUNK,
        }
    }
    /// The first implementation version that has this operation.
    pub const fn since_version(self) -> u64 {
        match self {
            RoeOp::Version => 0,
            RoeOp::Mprotect => 1,
            RoeOp::MprotectChunk => 2,
        }
    }
    pub const fn as_str(self) -> &'static str {
        match self {
            RoeOp::Version => "ROE_VERSION",
            RoeOp::Mprotect => "ROE_MPROTECT",
            RoeOp::MprotectChunk => "ROE_MPROTECT_CHUNK",
        }
    }
}

/// A whole ROE request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoeRequest {
    Version,
    Mprotect { start: u64, pages: u64 },
    MprotectChunk { start: u64, len: u64 },
}

impl RoeRequest {
    /// From (sub-op, a1, a2). Unknown sub-ops are an error; argument *values* are validated by
    /// Bulwark's core, not here.
    pub const fn decode(op: u64, a1: u64, a2: u64) -> Result<RoeRequest, UnknownRoeOp> {
        match RoeOp::decode(op) {
            Ok(RoeOp::Version) => Ok(RoeRequest::Version),
            Ok(RoeOp::Mprotect) => Ok(RoeRequest::Mprotect {
                start: a1,
                pages: a2,
            }),
            Ok(RoeOp::MprotectChunk) => Ok(RoeRequest::MprotectChunk { start: a1, len: a2 }),
            Err(e) => Err(e),
        }
    }

    /// To (sub-op, a1, a2).
    pub const fn encode(self) -> (u64, u64, u64) {
        match self {
            RoeRequest::Version => (ROE_VERSION, 0, 0),
            RoeRequest::Mprotect { start, pages } => (ROE_MPROTECT, start, pages),
            RoeRequest::MprotectChunk { start, len } => (ROE_MPROTECT_CHUNK, start, len),
        }
    }

    pub const fn op(self) -> RoeOp {
        match self {
            RoeRequest::Version => RoeOp::Version,
            RoeRequest::Mprotect { .. } => RoeOp::Mprotect,
            RoeRequest::MprotectChunk { .. } => RoeOp::MprotectChunk,
        }
    }
}
