//! Violation vocabulary shared by Bulwark, guests (through CPUID) and the host driver.

/// What the guest sees when a write hits a protection (spec §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ViolationPolicy {
    /// The access has no effect on protected bytes; the guest continues after the instruction.
    #[default]
    Skip,
    /// x86: #GP(0); arm64: synchronous external abort.
    Inject,
    /// The run stops with a failure status.
    Halt,
}

/// Unknown policy word or number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownPolicy;

impl ViolationPolicy {
    pub const fn as_str(self) -> &'static str {
        match self {
            ViolationPolicy::Skip => "skip",
            ViolationPolicy::Inject => "inject",
            ViolationPolicy::Halt => "halt",
        }
    }
    pub fn parse(s: &str) -> Result<Self, UnknownPolicy> {
        match s {
            "skip" => Ok(ViolationPolicy::Skip),
            "inject" => Ok(ViolationPolicy::Inject),
            "halt" => Ok(ViolationPolicy::Halt),
            _ => Err(UnknownPolicy),
        }
    }
    /// Number used in CPUID 0x40000001 EBX bits 1:0.
    pub const fn encode(self) -> u32 {
        match self {
            ViolationPolicy::Skip => 0,
            ViolationPolicy::Inject => 1,
            ViolationPolicy::Halt => 2,
        }
    }
    pub const fn decode(v: u32) -> Result<Self, UnknownPolicy> {
        match v {
            0 => Ok(ViolationPolicy::Skip),
            1 => Ok(ViolationPolicy::Inject),
            2 => Ok(ViolationPolicy::Halt),
            _ => Err(UnknownPolicy),
        }
    }
}

/// `kind=` of a violation line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViolationKind {
    /// A page protected with ROE_MPROTECT.
    Roe,
    /// A byte protected with ROE_MPROTECT_CHUNK.
    RoeChunk,
    /// An MMIO-guard violation (device access outside MAPped granules after ENROLL).
    MmioGuard,
    /// A boot-time R/W/X attribute.
    Attr,
}

/// Unknown `kind=` word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownKind;

impl ViolationKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            ViolationKind::Roe => "roe",
            ViolationKind::RoeChunk => "roe-chunk",
            ViolationKind::MmioGuard => "mmio-guard",
            ViolationKind::Attr => "attr",
        }
    }
    pub fn parse(s: &str) -> Result<Self, UnknownKind> {
        match s {
            "roe" => Ok(ViolationKind::Roe),
            "roe-chunk" => Ok(ViolationKind::RoeChunk),
            "mmio-guard" => Ok(ViolationKind::MmioGuard),
            "attr" => Ok(ViolationKind::Attr),
            _ => Err(UnknownKind),
        }
    }
}
