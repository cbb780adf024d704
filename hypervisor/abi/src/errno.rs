//! Hypercall result codes (x86 RAX / arm64 x0 for the ROE call), KVM's numbering.

/// Negative error codes a ROE hypercall returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Errno {
    /// `-KVM_ENOSYS` (-1000): called from user mode, or no such call/operation.
    NoSys,
    /// `-EINVAL` (-22): bad parameters.
    Inval,
    /// `-ENOMEM` (-12): Bulwark's bookkeeping for the request could not be reserved; nothing was
    /// protected. (Bulwark's choice; KVM's ROE series had no such case.)
    NoMem,
}

pub const KVM_ENOSYS: i64 = 1000;
pub const EINVAL: i64 = 22;
pub const ENOMEM: i64 = 12;

/// Unknown error value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownErrno(pub i64);

impl Errno {
    /// The negative value the guest sees.
    pub const fn as_i64(self) -> i64 {
        match self {
            Errno::NoSys => -KVM_ENOSYS,
            Errno::Inval => -EINVAL,
            Errno::NoMem => -ENOMEM,
        }
    }

    /// The register value: 64-bit two's complement, or 32-bit when the caller is in a 32-bit mode
    /// (`narrow`), upper half zero.
    pub const fn to_reg(self, narrow: bool) -> u64 {
        let v = self.as_i64() as u64;
        if narrow {
            v & 0xffff_ffff
        } else {
            v
        }
    }

    pub const fn from_i64(v: i64) -> Result<Errno, UnknownErrno> {
        match v {
            x if x == -KVM_ENOSYS => Ok(Errno::NoSys),
            x if x == -EINVAL => Ok(Errno::Inval),
            x if x == -ENOMEM => Ok(Errno::NoMem),
            x => Err(UnknownErrno(x)),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Errno::NoSys => "ENOSYS",
            Errno::Inval => "EINVAL",
            Errno::NoMem => "ENOMEM",
        }
    }
}

/// A hypercall result register decoded: a non-negative count, or an error.
/// `narrow`: the register was written by a 32-bit caller (sign lives in bit 31).
pub const fn decode_result(reg: u64, narrow: bool) -> Result<u64, Result<Errno, UnknownErrno>> {
    let v: i64 = if narrow {
        reg as u32 as i32 as i64
    } else {
        reg as i64
    };
    if v >= 0 {
        Ok(v as u64)
    } else {
        Err(Errno::from_i64(v))
    }
}

/// SMCCC return values (x0), signed 32/64-bit.
pub mod smccc_ret {
    pub const SUCCESS: i64 = 0;
    pub const NOT_SUPPORTED: i64 = -1;
    pub const NOT_REQUIRED: i64 = -2;
    pub const INVALID_PARAMETER: i64 = -3;
    /// `NOT_SUPPORTED` as the 64-bit register value.
    pub const NOT_SUPPORTED_REG: u64 = NOT_SUPPORTED as u64;
}

/// PSCI return values.
pub mod psci_ret {
    pub const SUCCESS: i64 = 0;
    pub const NOT_SUPPORTED: i64 = -1;
    pub const INVALID_PARAMETERS: i64 = -2;
    pub const DENIED: i64 = -3;
    pub const ALREADY_ON: i64 = -4;
    pub const ON_PENDING: i64 = -5;
    pub const INTERNAL_FAILURE: i64 = -6;
    pub const NOT_PRESENT: i64 = -7;
    pub const DISABLED: i64 = -8;
    pub const INVALID_ADDRESS: i64 = -9;
}
