//! The one SMCCC dispatcher for HVC and SMC from the guest for everything that is not protection
//! state: PSCI, the SMCCC architecture calls (version, ARCH_FEATURES, the Spectre workarounds),
//! the vendor-hypervisor discovery calls (call UID, FEATURES) and Bulwark's GUEST_EXIT. The
//! protection calls (MMIO guard of either ABI, the upstream memory-sharing calls, ROE) are the
//! core's (`bulwark_core::guest::Guest::handle_hypercall`), which the back end asks first.
//!
//! Which functions exist is decided in one place, `bulwark_abi::smccc::Function::decode` under the
//! guest's `hyp-abi=` choice: PSCI_FEATURES, SMCCC_ARCH_FEATURES and the vendor-hyp FEATURES
//! bitmap are all derived from it, so discovery never advertises a call that is not served nor
//! denies one that is. Anything else answers NOT_SUPPORTED (-1). Pure logic, tested on the host;
//! the back end turns the result into an `Action` and applies it (the PC is advanced there,
//! nowhere else). docs/smccc.md.

use bulwark_abi::errno::{psci_ret, smccc_ret};
use bulwark_abi::smccc::{self as ids, Function, HypAbi, Workaround};

/// What the vCPU the call came from looks like (one vCPU per guest for now).
#[derive(Clone, Copy, Debug)]
pub struct CallerInfo {
    /// MPIDR affinity (Aff3..Aff0 as in MPIDR_EL1 bits 39:32 and 23:0) of the calling vCPU.
    pub mpidr: u64,
}

/// What the firmware under Bulwark (EL3) serves, probed once at boot with Linux's own sequence
/// (PSCI_VERSION, PSCI_FEATURES(SMCCC_VERSION), SMCCC_VERSION, then SMCCC_ARCH_FEATURES of each
/// workaround) through the host device tree's SMC conduit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Firmware {
    /// The firmware's SMCCC_ARCH_FEATURES answer for ARCH_WORKAROUND_1, _2, _3; NOT_SUPPORTED
    /// when the firmware has no SMCCC 1.1 (QEMU's built-in PSCI) or was not probed.
    pub workarounds: [i64; 3],
}

impl Firmware {
    /// No SMCCC 1.1 firmware (or no SMC conduit): every workaround NOT_SUPPORTED.
    pub const NONE: Firmware = Firmware {
        workarounds: [smccc_ret::NOT_SUPPORTED; 3],
    };

    /// What the guest is told for workaround `w`: the firmware's answer when it is one SMCCC
    /// defines for the workaround IDs (SUCCESS: call it; NOT_REQUIRED: the firmware mitigates
    /// permanently (WA_2); UNAFFECTED: this CPU does not need it), else NOT_SUPPORTED.
    pub fn answer(&self, w: Workaround) -> i64 {
        match self.workarounds.get(w.index()).copied() {
            Some(
                v @ (smccc_ret::SUCCESS
                | smccc_ret::NOT_REQUIRED
                | ids::SMCCC_ARCH_WORKAROUND_RET_UNAFFECTED),
            ) => v,
            _ => smccc_ret::NOT_SUPPORTED,
        }
    }
}

/// Everything the dispatcher needs to know about what this guest is served.
#[derive(Clone, Copy, Debug)]
pub struct Services {
    pub abi: HypAbi,
    pub firmware: Firmware,
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
    /// A Spectre workaround the firmware serves (its ARCH_FEATURES said SUCCESS): the back end
    /// issues `SMC` with this function ID and x1 and returns the firmware's x0 to the guest.
    Firmware { fid: u32, x1: u64 },
}

const MPIDR_AFF_MASK: u64 = 0xff_00ff_ffff;

fn ret(v: i64) -> Outcome {
    Outcome::Return {
        x0: v as u64,
        x1_3: None,
    }
}

/// Whether `f` is served to this guest at all (decode already applied the ABI choice): the
/// workarounds only when the firmware serves them.
fn served(f: Function, svc: &Services) -> bool {
    match f {
        Function::ArchWorkaround(w) => svc.firmware.answer(w) == smccc_ret::SUCCESS,
        _ => true,
    }
}

/// Dispatch one call. `x` = x0..x4 as the guest left them.
pub fn dispatch(x: [u64; 5], caller: CallerInfo, svc: &Services) -> Outcome {
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
    let f = match Function::decode(fid, svc.abi) {
        Ok(f) if served(f, svc) => f,
        _ => return ret(smccc_ret::NOT_SUPPORTED),
    };
    match f {
        Function::SmcccVersion => Outcome::Return {
            x0: ids::SMCCC_VERSION_1_1,
            x1_3: None,
        },
        Function::SmcccArchFeatures => {
            let q = arg(1) as u32;
            match Function::decode(q, svc.abi) {
                Ok(Function::ArchWorkaround(w)) => ret(svc.firmware.answer(w)),
                Ok(g) if served(g, svc) => ret(smccc_ret::SUCCESS),
                _ => ret(smccc_ret::NOT_SUPPORTED),
            }
        }
        Function::ArchWorkaround(w) => Outcome::Firmware {
            fid: w.fid(),
            x1: arg(1),
        },
        Function::VendorHypCallUid => {
            let u = ids::KVM_UID;
            Outcome::Return {
                x0: u64::from(u[0]),
                x1_3: Some([u64::from(u[1]), u64::from(u[2]), u64::from(u[3])]),
            }
        }
        Function::VendorHypFeatures => {
            let r = ids::vendor_hyp_features(svc.abi).map(u64::from);
            Outcome::Return {
                x0: r[0],
                x1_3: Some([r[1], r[2], r[3]]),
            }
        }
        Function::GuestExit => Outcome::GuestExit(x[1] as u32),
        Function::PsciVersion => Outcome::Return {
            x0: ids::PSCI_VERSION_1_0,
            x1_3: None,
        },
        Function::PsciFeatures => {
            let q = arg(1) as u32;
            match Function::decode(q, svc.abi) {
                // PSCI 1.0: PSCI functions, and SMCCC_VERSION (how a kernel learns that
                // SMCCC 1.1+ is there: Linux's arm_smccc_version_init()).
                Ok(g) if g.is_psci() || g == Function::SmcccVersion => ret(psci_ret::SUCCESS),
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
        // The core's (it answers them before this dispatcher is asked); should one arrive
        // here it changes nothing.
        Function::MmioGuardInfo
        | Function::MmioGuardEnroll
        | Function::MmioGuardMap
        | Function::MmioGuardUnmap
        | Function::PkvmHypMeminfo
        | Function::PkvmMemShare
        | Function::PkvmMemUnshare
        | Function::PkvmMmioGuard
        | Function::Roe => ret(smccc_ret::NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: CallerInfo = CallerInfo { mpidr: 0x8000_0000 };
    const SEED: Services = Services {
        abi: HypAbi::Seed,
        firmware: Firmware::NONE,
    };
    const UP: Services = Services {
        abi: HypAbi::Upstream,
        firmware: Firmware::NONE,
    };

    fn call_in(svc: &Services, x0: u32, x1: u64) -> Outcome {
        dispatch([u64::from(x0), x1, 0, 0, 0], ME, svc)
    }

    fn call(x0: u32, x1: u64) -> Outcome {
        call_in(&SEED, x0, x1)
    }

    fn regs(o: Outcome) -> [u64; 4] {
        match o {
            Outcome::Return { x0, x1_3: Some(r) } => [x0, r[0], r[1], r[2]],
            o => panic!("{o:?}"),
        }
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
        // SMCCC 1.1 discovery as Linux's arm_smccc_version_init() does it.
        assert_eq!(
            call(ids::PSCI_FEATURES, u64::from(ids::SMCCC_VERSION)),
            ret(0)
        );
        // PSCI_FEATURES answers for PSCI functions (and SMCCC_VERSION) only.
        assert_eq!(
            call(ids::PSCI_FEATURES, u64::from(ids::VENDOR_HYP_FEATURES)),
            ret(-1)
        );
        assert_eq!(
            call(ids::PSCI_FEATURES, u64::from(ids::BULWARK_ROE)),
            ret(-1)
        );
        assert_eq!(call(ids::SMCCC_ARCH_FEATURES, 0x8000_8000), ret(-1));
        assert_eq!(
            call(ids::SMCCC_ARCH_FEATURES, u64::from(ids::BULWARK_ROE)),
            ret(0)
        );
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
    fn spectre_workarounds_follow_the_firmware() {
        // No SMCCC 1.1 firmware (QEMU): NOT_SUPPORTED, and the call itself is refused.
        for w in Workaround::ALL {
            assert_eq!(call(ids::SMCCC_ARCH_FEATURES, u64::from(w.fid())), ret(-1));
            assert_eq!(call(w.fid(), 1), ret(-1));
        }
        // Firmware with WA_1 (SUCCESS), WA_2 not required, WA_3 unaffected.
        let fw = Services {
            abi: HypAbi::Seed,
            firmware: Firmware {
                workarounds: [0, smccc_ret::NOT_REQUIRED, 1],
            },
        };
        assert_eq!(call_in(&fw, ids::SMCCC_ARCH_FEATURES, 0x8000_8000), ret(0));
        assert_eq!(call_in(&fw, ids::SMCCC_ARCH_FEATURES, 0x8000_7fff), ret(-2));
        assert_eq!(call_in(&fw, ids::SMCCC_ARCH_FEATURES, 0x8000_3fff), ret(1));
        assert_eq!(
            call_in(&fw, ids::SMCCC_ARCH_WORKAROUND_1, 0),
            Outcome::Firmware {
                fid: ids::SMCCC_ARCH_WORKAROUND_1,
                x1: 0
            }
        );
        // Only a SUCCESS answer makes the call itself reach the firmware.
        assert_eq!(call_in(&fw, ids::SMCCC_ARCH_WORKAROUND_2, 1), ret(-1));
        assert_eq!(call_in(&fw, ids::SMCCC_ARCH_WORKAROUND_3, 0), ret(-1));
        // WA_2 with a dynamic firmware mitigation: forwarded with the SMC32 argument.
        let fw2 = Services {
            abi: HypAbi::Seed,
            firmware: Firmware {
                workarounds: [-1, 0, -1],
            },
        };
        assert_eq!(
            dispatch(
                [
                    u64::from(ids::SMCCC_ARCH_WORKAROUND_2),
                    0xffff_ffff_0000_0001,
                    0,
                    0,
                    0
                ],
                ME,
                &fw2
            ),
            Outcome::Firmware {
                fid: ids::SMCCC_ARCH_WORKAROUND_2,
                x1: 1
            }
        );
        // An answer SMCCC does not define for the workarounds is not passed on.
        let odd = Services {
            abi: HypAbi::Seed,
            firmware: Firmware {
                workarounds: [-3, 7, -1],
            },
        };
        assert_eq!(
            call_in(&odd, ids::SMCCC_ARCH_FEATURES, 0x8000_8000),
            ret(-1)
        );
        assert_eq!(
            call_in(&odd, ids::SMCCC_ARCH_FEATURES, 0x8000_7fff),
            ret(-1)
        );
    }

    #[test]
    fn vendor_features_in_kvm_layout_per_abi() {
        // Seed: 0 and 2..=5 in x0, ROE/GUEST_EXIT (64, 65) in x2 bits 0-1.
        assert_eq!(
            regs(call(ids::VENDOR_HYP_FEATURES, 0)),
            [0b11_1101, 0, 0b11, 0]
        );
        // Upstream: 0, 2, 3, 4, 7 in x0.
        assert_eq!(
            regs(call_in(&UP, ids::VENDOR_HYP_FEATURES, 0)),
            [0b1001_1101, 0, 0b11, 0]
        );
        // ARCH_FEATURES agrees with the ABI choice.
        assert_eq!(
            call_in(
                &UP,
                ids::SMCCC_ARCH_FEATURES,
                u64::from(ids::MMIO_GUARD_UNMAP)
            ),
            ret(-1)
        );
        assert_eq!(
            call_in(
                &UP,
                ids::SMCCC_ARCH_FEATURES,
                u64::from(ids::PKVM_MMIO_GUARD)
            ),
            ret(0)
        );
        assert_eq!(
            call(ids::SMCCC_ARCH_FEATURES, u64::from(ids::PKVM_MMIO_GUARD)),
            ret(-1)
        );
    }

    #[test]
    fn vendor_and_unknown() {
        assert_eq!(call(ids::BULWARK_GUEST_EXIT, 7), Outcome::GuestExit(7));
        let r = regs(call(ids::VENDOR_HYP_CALL_UID, 0));
        assert_eq!(r, ids::KVM_UID.map(u64::from));
        assert_eq!(call(0xC600_0999, 0), ret(-1));
        assert_eq!(call(0x8400_00ff, 0), ret(-1));
        // The other ABI's functions are unknown, never executed as this one's.
        assert_eq!(call(ids::PKVM_MMIO_GUARD, 0x900_0000), ret(-1));
        assert_eq!(call_in(&UP, ids::MMIO_GUARD_UNMAP, 0x900_0000), ret(-1));
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
                ME,
                &SEED
            ),
            Outcome::Return {
                x0: 0x1_0000,
                x1_3: None
            }
        );
    }
}
