//! The arch-neutral exit vocabulary. Each back end decodes its raw exits (VMX exit reason +
//! qualification, ESR_EL2) into one [`Exit`]; the generic core matches on it and returns an
//! [`Action`]; the back end applies the action. The instruction pointer is advanced in exactly one
//! place: the back end's `apply(Action)`.
//!
//! Shared file: arch back ends may add variants they need; keep every match exhaustive.

use crate::addr::{GuestPhysAddr, GuestVirtAddr};

/// Kind of memory access that caused a fault or is being checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
    Exec,
}

impl Access {
    pub const fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Exec => "exec",
        }
    }
}

/// A hypercall as the guest issued it (x86 VMCALL: RAX, RBX, RCX, RDX, RSI; arm64 HVC/SMC: x0..x4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hypercall {
    /// Call number (x86: RAX) or SMCCC function ID (arm64: W0).
    pub nr: u64,
    pub args: [u64; 4],
    /// Issued from guest user mode (ring 3 / EL0).
    pub from_user: bool,
    /// The vCPU was in a 32-bit mode: upper register halves must be ignored.
    pub narrow: bool,
}

/// A guest-physical access that the second-stage tables refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemFault {
    pub gpa: GuestPhysAddr,
    /// Guest-virtual address when the hardware reports one.
    pub gva: Option<GuestVirtAddr>,
    pub ip: GuestVirtAddr,
    pub access: Access,
    /// Access size in bytes when the hardware (or a decoder) knows it.
    pub size: Option<u8>,
}

/// One decoded exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Hypercall(Hypercall),
    MemFault(MemFault),
    /// HLT / WFI with nothing to wake the vCPU.
    Halt,
    /// The guest asked to end the run with this status (x86: port 0xf4; arm64: documented call).
    GuestStatus(u32),
    /// The guest ended itself through an arch mechanism that has no status (triple fault, etc.).
    Fatal {
        reason: &'static str,
        code: u64,
    },
}

/// What the back end does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Re-enter the guest at the same instruction (e.g. after tables were re-derived).
    Retry,
    /// Skip the faulting/trapping instruction.
    Advance,
    /// Write `value` to the guest's result register, then skip the instruction.
    AdvanceWithResult(u64),
    /// Write four result registers (x86: RAX, RBX, RCX, RDX; arm64: x0..x3), then skip the
    /// instruction (SMCCC calls with several results, e.g. the call UID).
    AdvanceWithResults([u64; 4]),
    /// Perform the faulting store in software, writing only the bytes `emulation` allows, then
    /// skip the instruction (chunk-protected pages: spec §1).
    EmulateStore(StoreEmulation),
    /// Inject an arch fault (x86 #GP(0); arm64 synchronous external abort) without advancing.
    InjectFault,
    /// Stop the guest; the run ends with this status.
    Stop(StopReason),
}

/// How a back end completes a store that hit a chunk-protected page.
///
/// The store of `size` bytes at `gpa` (the faulting address) is performed by the back end, except
/// that byte `i` of the access (0-based) is **not written** when bit `i` of `protected` is set.
/// `protected` only describes bytes inside the faulting 4 KiB page: when the access crosses the
/// page end (`crosses_page`), the back end translates the next page itself and asks
/// `Guest::protected_mask` for those bytes before writing them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreEmulation {
    pub gpa: GuestPhysAddr,
    pub size: u8,
    pub protected: u64,
    pub crosses_page: bool,
}

/// Why a run ended; `status` is the process exit code xtask reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopReason {
    pub status: u32,
    pub reason: &'static str,
}
