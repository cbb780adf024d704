//! The one SMCCC dispatcher for HVC and SMC from the guest: PSCI, SMCCC architecture calls, the
//! vendor-hypervisor discovery calls and Bulwark's GUEST_EXIT. Anything else answers
//! NOT_SUPPORTED (-1). Pure logic, tested on the host; the back end turns the result into an
//! `Action` and applies it (the PC is advanced there, nowhere else).
//!
//! The vendor-hyp services that change protection state (MMIO guard, ROE) belong to the core;
//! until it answers them they are NOT_SUPPORTED, and VENDOR_HYP_FEATURES advertises only what is
//! answered here (FEATURES itself and GUEST_EXIT).

use bulwark_abi::errno::{psci_ret, smccc_ret};
use bulwark_abi::smccc::{self as ids, function_number, Function};

/// What the vCPU the call came from looks like (one vCPU per guest for now).
#[derive(Clone, Copy, Debug)]
pub struct CallerInfo {
    /// MPIDR affinity (Aff3..Aff0 as in MPIDR_EL1 bits 39:32 and 23:0) of the calling vCPU.
    pub mpidr: u64,
}

/// Result of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Return to the guest with x0..x3 (x1..x3 written only when `Some`).
    Return { x0: u64, x1_3: Option<[u64; 3]> },
    /// PSCI SYSTEM_OFF: the run ends with status 0.
    SystemOff,
    /// PSCI SYSTEM_RESET: the back end reboots the guest (fresh protection state, payload
    /// reloaded), or ends the run with status 178 past `maxresets=` (docs/aarch64.md).
    SystemReset,
    /// Bulwark GUEST_EXIT with this status.
    GuestExit(u32),
}

const MPIDR_AFF_MASK: u64 = 0xff_00ff_ffff;

fn ret(v: i64) -> Outcome {
    Outcome::Return {
        x0: v as u64,
        x1_3: None,
    }
}

/// The functions this dispatcher implements (PSCI_FEATURES / SMCCC_ARCH_FEATURES answer 0 for them).
fn implemented(f: Function) -> bool {
    matches!(
        f,
        Function::SmcccVersion
            | Function::SmcccArchFeatures
            | Function::VendorHypCallUid
            | Function::VendorHypFeatures
            | Function::GuestExit
            | Function::PsciVersion
            | Function::PsciCpuOff
            | Function::PsciCpuOn { .. }
            | Function::PsciAffinityInfo { .. }
            | Function::PsciMigrateInfoType
            | Function::PsciSystemOff
            | Function::PsciSystemReset
            | Function::PsciFeatures
    )
}

/// Dispatch one call. `x` = x0..x4 as the guest left them.
pub fn dispatch(x: [u64; 5], caller: CallerInfo) -> Outcome {
    // SMCCC: the function ID is W0; bits 63:32 of X0 are ignored.
    let fid = x[0] as u32;
    let smc32 = fid & (1 << 30) == 0;
    let arg = |i: usize| {
        let v = x.get(i).copied().unwrap_or(0);
        if smc32 {
            v & 0xffff_ffff
        } else {
            v
        }
    };
    let Ok(f) = Function::decode(fid) else {
        return ret(smccc_ret::NOT_SUPPORTED);
    };
    match f {
        Function::SmcccVersion => Outcome::Return {
            x0: ids::SMCCC_VERSION_1_1,
            x1_3: None,
        },
        Function::SmcccArchFeatures => {
            let q = arg(1) as u32;
            match Function::decode(q) {
                Ok(g) if implemented(g) => ret(smccc_ret::SUCCESS),
                _ => ret(smccc_ret::NOT_SUPPORTED),
            }
        }
        Function::VendorHypCallUid => {
            let u = ids::KVM_UID;
            Outcome::Return {
                x0: u64::from(u[0]),
                x1_3: Some([u64::from(u[1]), u64::from(u[2]), u64::from(u[3])]),
            }
        }
        Function::VendorHypFeatures => Outcome::Return {
            x0: 1u64 << function_number(ids::VENDOR_HYP_FEATURES),
            x1_3: Some([
                1u64 << (function_number(ids::BULWARK_GUEST_EXIT) - 64),
                0,
                0,
            ]),
        },
        Function::GuestExit => Outcome::GuestExit(x[1] as u32),
        Function::PsciVersion => Outcome::Return {
            x0: ids::PSCI_VERSION_1_0,
            x1_3: None,
        },
        Function::PsciFeatures => {
            let q = arg(1) as u32;
            match Function::decode(q) {
                Ok(g) if implemented(g) && q & 0x0f00_0000 == 0x0400_0000 => ret(psci_ret::SUCCESS),
                _ => ret(psci_ret::NOT_SUPPORTED),
            }
        }
        Function::PsciCpuOn { .. } => {
            let target = arg(1) & MPIDR_AFF_MASK;
            if target == caller.mpidr & MPIDR_AFF_MASK {
                ret(psci_ret::ALREADY_ON)
            } else {
                // Only one vCPU exists; other CPU ids are not part of this guest.
                ret(psci_ret::INVALID_PARAMETERS)
            }
        }
        // The last (only) vCPU may not turn itself off: that would leave no CPU to end the run.
        Function::PsciCpuOff => ret(psci_ret::DENIED),
        Function::PsciAffinityInfo { .. } => {
            let target = arg(1) & MPIDR_AFF_MASK;
            let level = arg(2);
            if level != 0 {
                ret(psci_ret::INVALID_PARAMETERS)
            } else if target == caller.mpidr & MPIDR_AFF_MASK {
                ret(0) // ON
            } else {
                ret(psci_ret::INVALID_PARAMETERS)
            }
        }
        // 2: no trusted OS that needs migration.
        Function::PsciMigrateInfoType => ret(2),
        Function::PsciSystemOff => Outcome::SystemOff,
        Function::PsciSystemReset => Outcome::SystemReset,
        Function::PsciCpuSuspend { .. }
        | Function::MmioGuardInfo
        | Function::MmioGuardEnroll
        | Function::MmioGuardMap
        | Function::MmioGuardUnmap
        | Function::Roe => ret(smccc_ret::NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: CallerInfo = CallerInfo { mpidr: 0x8000_0000 };

    fn call(x0: u32, x1: u64) -> Outcome {
        dispatch([u64::from(x0), x1, 0, 0, 0], ME)
    }

    #[test]
    fn psci_and_smccc() {
        assert_eq!(
            call(ids::PSCI_VERSION, 0),
            Outcome::Return {
                x0: 0x1_0000,
                x1_3: None
            }
        );
        assert_eq!(
            call(ids::SMCCC_VERSION, 0),
            Outcome::Return {
                x0: 0x1_0001,
                x1_3: None
            }
        );
        assert_eq!(
            call(ids::PSCI_FEATURES, u64::from(ids::PSCI_SYSTEM_OFF)),
            ret(0)
        );
        assert_eq!(
            call(ids::PSCI_FEATURES, u64::from(ids::PSCI_CPU_SUSPEND_64)),
            ret(-1)
        );
        assert_eq!(
            call(ids::PSCI_FEATURES, u64::from(ids::SMCCC_VERSION)),
            ret(-1)
        );
        assert_eq!(call(ids::SMCCC_ARCH_FEATURES, 0x8000_8000), ret(-1));
        assert_eq!(call(ids::PSCI_SYSTEM_OFF, 0), Outcome::SystemOff);
        assert_eq!(call(ids::PSCI_SYSTEM_RESET, 0), Outcome::SystemReset);
        assert_eq!(call(ids::PSCI_CPU_ON_64, 0), ret(psci_ret::ALREADY_ON));
        assert_eq!(
            call(ids::PSCI_CPU_ON_64, 1),
            ret(psci_ret::INVALID_PARAMETERS)
        );
        assert_eq!(call(ids::PSCI_AFFINITY_INFO_64, 0), ret(0));
        assert_eq!(call(ids::PSCI_CPU_OFF, 0), ret(psci_ret::DENIED));
    }

    #[test]
    fn vendor_and_unknown() {
        assert_eq!(call(ids::BULWARK_GUEST_EXIT, 7), Outcome::GuestExit(7));
        match call(ids::VENDOR_HYP_CALL_UID, 0) {
            Outcome::Return { x0, x1_3: Some(r) } => {
                assert_eq!(x0, u64::from(ids::KVM_UID[0]));
                assert_eq!(r[2], u64::from(ids::KVM_UID[3]));
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(call(0xC600_0999, 0), ret(-1));
        assert_eq!(call(0x8400_00ff, 0), ret(-1));
        // Upper half of x0 ignored.
        assert_eq!(
            dispatch(
                [
                    0xffff_ffff_0000_0000 | u64::from(ids::PSCI_VERSION),
                    0,
                    0,
                    0,
                    0
                ],
                ME
            ),
            Outcome::Return {
                x0: 0x1_0000,
                x1_3: None
            }
        );
    }
}
