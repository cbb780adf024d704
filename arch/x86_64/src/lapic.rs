//! The local APIC passed through with its writes trapped (docs/x86_64.md, "Platform model").
//!
//! The guest reads its local APIC directly (the page is mapped read-only, uncached). A write
//! takes an EPT violation; Bulwark decodes the one store instruction (`mov r/m32, r32`,
//! `mov r/m32, imm32`, `xchg r/m32, r32`: what an OS uses for APIC registers), performs it on
//! the real APIC and skips the instruction — except an ICR write whose delivery mode is INIT
//! or Start-up: that IPI would start a CPU outside Bulwark, so it is swallowed and logged. Any
//! other instruction form, an unaligned or non-32-bit access, or code Bulwark cannot read stops
//! the run (fail closed): a store Bulwark cannot decode is one it cannot vet.
//!
//! A child module of `vm`; the guest's RIP moves only in `Vm::apply` (`Step::AdvanceBy`).

use bulwark_abi::console::{reason, STATUS_BULWARK_FAILURE};
use bulwark_core::addr::GuestVirtAddr;
use bulwark_core::exit::MemFault;
use bulwark_core::gwalk::x86::X86Walker;
use bulwark_core::gwalk::GuestWalker;

use super::{stop, Step, Vm};
use crate::mem::GuestRam;
use crate::vmcs;
use crate::vmx::{vmread, VmxError};

/// Offset of the interrupt command register (low half: vector, delivery mode, ...).
pub const ICR_LOW: u64 = 0x300;
/// ICR delivery modes that start or reset another CPU.
const DELIVERY_INIT: u32 = 5;
const DELIVERY_STARTUP: u32 = 6;

/// Where the stored value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// General-purpose register by VMX number (0 RAX .. 15 R15).
    Reg(u8),
    Imm(u32),
}

/// One decoded 32-bit store to memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Store {
    /// Instruction length in bytes.
    pub len: u8,
    pub src: Source,
    /// `xchg`: the register also receives the old value.
    pub exchange: bool,
}

/// Decode a 32-bit store to memory from `code` (the bytes at RIP) in 32-bit protected mode
/// (`long` false, CS.D set) or 64-bit mode. Only the forms listed in the module comment; any
/// other byte sequence (operand-size or address-size prefix, REX.W, LOCK/REP, a register
/// destination, a truncated instruction) is `None`.
pub fn decode_store(code: &[u8], long: bool) -> Option<Store> {
    let mut i = 0usize;
    // Segment overrides do not matter: the EPT violation names the guest-physical address.
    while let Some(&b) = code.get(i) {
        if matches!(b, 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65) && i < 4 {
            i += 1;
        } else {
            break;
        }
    }
    let mut rex_r = 0u8;
    if long {
        if let Some(&b) = code.get(i) {
            if b & 0xf0 == 0x40 {
                if b & 0x08 != 0 {
                    return None; // REX.W: a 64-bit store
                }
                rex_r = (b >> 2) & 1;
                i += 1;
            }
        }
    }
    let op = *code.get(i)?;
    let modrm = *code.get(i + 1)?;
    i += 2;
    let md = modrm >> 6;
    let reg = (modrm >> 3) & 7;
    let rm = modrm & 7;
    if md == 3 {
        return None;
    }
    if rm == 4 {
        let sib = *code.get(i)?;
        i += 1;
        if md == 0 && sib & 7 == 5 {
            i += 4;
        }
    } else if md == 0 && rm == 5 {
        i += 4; // disp32 (RIP-relative in 64-bit mode)
    }
    i += match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    let (src, exchange) = match op {
        0x89 => (Source::Reg(reg | (rex_r << 3)), false),
        0x87 => (Source::Reg(reg | (rex_r << 3)), true),
        0xc7 if reg == 0 => {
            let imm = code.get(i..i + 4)?;
            i += 4;
            (
                Source::Imm(u32::from_le_bytes([imm[0], imm[1], imm[2], imm[3]])),
                false,
            )
        }
        _ => return None,
    };
    if i > 15 || i > code.len() {
        return None;
    }
    Some(Store {
        len: i as u8,
        src,
        exchange,
    })
}

/// Whether an ICR-low value would start or reset another CPU (INIT or Start-up delivery).
pub fn starts_cpu(icr_low: u32) -> bool {
    matches!((icr_low >> 8) & 7, DELIVERY_INIT | DELIVERY_STARTUP)
}

type VmxResult<T> = Result<T, VmxError>;

impl<const XO: bool> Vm<'_, XO> {
    /// A write to the local APIC page at `f.gpa` (`base` is the page): emulate it, or stop.
    pub(super) fn lapic_write(&mut self, f: &MemFault, base: u64) -> VmxResult<Step> {
        let off = f.gpa.as_u64().wrapping_sub(base);
        let fail = |why: &str| {
            log::error!(
                "lapic: write gpa={:#x} ip={:#x} vcpu={}: {why}; the run stops",
                f.gpa.as_u64(),
                f.ip.as_u64(),
                self.vcpu.id
            );
            stop(STATUS_BULWARK_FAILURE, reason::UNHANDLED_EXIT)
        };
        if off >= 0x1000 || !off.is_multiple_of(4) {
            return Ok(fail("not an aligned 32-bit APIC register"));
        }
        if vmread(vmcs::IDT_VECTORING_INFO)? & (1 << 31) != 0 {
            return Ok(fail("written while delivering an event"));
        }
        let long = self.long_mode_code()?;
        let cs_ar = vmread(vmcs::GUEST_CS_AR)?;
        if !long && cs_ar & (1 << 14) == 0 {
            return Ok(fail("16-bit code"));
        }
        let mut code = [0u8; 15];
        let n = self.fetch_code(long, &mut code)?;
        let Some(st) = decode_store(&code[..n], long) else {
            return Ok(fail(&alloc::format!(
                "instruction {:02x?} is not a 32-bit mov/xchg store",
                &code[..n.min(8)]
            )));
        };
        let value = match st.src {
            Source::Reg(r) => self.vcpu.regs.get(r)? as u32,
            Source::Imm(v) => v,
        };
        let addr = f.gpa.as_u64();
        if off == ICR_LOW && starts_cpu(value) {
            // SAFETY: the local APIC's ICR-high register, read at its identity-mapped address
            // (Bulwark's tables map the first 4 GiB; the APIC page is uncached by the MTRRs).
            let high = unsafe { core::ptr::read_volatile((base + 0x310) as *const u32) };
            log::warn!(
                "lapic: refused IPI mode={} icr_low={value:#x} icr_high={high:#x} ip={:#x} vcpu={} action=skip (no CPU starts outside Bulwark)",
                if (value >> 8) & 7 == DELIVERY_INIT { "init" } else { "startup" },
                f.ip.as_u64(),
                self.vcpu.id
            );
            self.lapic_ipis_refused += 1;
        } else {
            // SAFETY: an aligned 32-bit register of the local APIC page (checked above), the
            // access the guest's own store would have made.
            unsafe {
                if st.exchange {
                    let old = core::ptr::read_volatile(addr as *const u32);
                    core::ptr::write_volatile(addr as *mut u32, value);
                    if let Source::Reg(r) = st.src {
                        self.vcpu.regs.set(r, u64::from(old))?;
                    }
                } else {
                    core::ptr::write_volatile(addr as *mut u32, value);
                }
            }
        }
        self.lapic_writes += 1;
        Ok(Step::AdvanceBy(u64::from(st.len)))
    }

    /// Up to 15 instruction bytes at CS:RIP from guest RAM (the guest's paging applied, its
    /// tables read as the guest may read them). Returns how many were readable.
    fn fetch_code(&self, long: bool, out: &mut [u8; 15]) -> VmxResult<usize> {
        let rip = vmread(vmcs::GUEST_RIP)?;
        let lin = if long {
            rip
        } else {
            vmread(vmcs::GUEST_CS_BASE)?.wrapping_add(rip) & 0xffff_ffff
        };
        let walker = X86Walker::new(self.paging_state()?);
        let ram = GuestRam { plan: self.plan };
        let g = self.guest.lock();
        let mem = ram.checked(g.store());
        // One walk per page the instruction touches (at most two), not one per byte: this runs
        // on every APIC write (EOI after each interrupt), so its cost is interrupt latency.
        let mut page: Option<(u64, u64)> = None; // (linear page, guest-physical page)
        for (i, b) in out.iter_mut().enumerate() {
            let l = lin.wrapping_add(i as u64);
            let l = if long { l } else { l & 0xffff_ffff };
            let lp = l & !0xfff;
            let gp = match page {
                Some((p, g)) if p == lp => g,
                _ => {
                    let Ok(t) = walker.translate(&mem, GuestVirtAddr::new(lp)) else {
                        return Ok(i);
                    };
                    let g = t.gpa.as_u64() & !0xfff;
                    page = Some((lp, g));
                    g
                }
            };
            match ram.read_byte(gp | (l & 0xfff)) {
                Ok(v) => *b = v,
                Err(_) => return Ok(i),
            }
        }
        Ok(out.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_and_kvm_unit_tests_forms() {
        // mov [rax+0x300], edx (Linux native_apic_mem_write through a register base).
        assert_eq!(
            decode_store(&[0x89, 0x90, 0x00, 0x03, 0x00, 0x00], true),
            Some(Store {
                len: 6,
                src: Source::Reg(2),
                exchange: false
            })
        );
        // mov dword [0xfee000b0], 0 (absolute: ModRM 05 + SIB-less disp32 in 32-bit mode).
        assert_eq!(
            decode_store(
                &[0xc7, 0x05, 0xb0, 0x00, 0xe0, 0xfe, 0, 0, 0, 0, 0x90],
                false
            ),
            Some(Store {
                len: 10,
                src: Source::Imm(0),
                exchange: false
            })
        );
        // mov [r8+rcx*1+0x10], r9d with REX.RB and SIB + disp8.
        assert_eq!(
            decode_store(&[0x45, 0x89, 0x4c, 0x08, 0x10], true),
            Some(Store {
                len: 5,
                src: Source::Reg(9),
                exchange: false
            })
        );
        // xchg [rdi], esi.
        assert_eq!(
            decode_store(&[0x87, 0x37], true),
            Some(Store {
                len: 2,
                src: Source::Reg(6),
                exchange: true
            })
        );
        // ds: mov [ebx], eax in 32-bit code.
        assert_eq!(
            decode_store(&[0x3e, 0x89, 0x03], false).map(|s| s.len),
            Some(3)
        );
        // SIB with no base: mov [ecx*4+0xfee00300], eax.
        assert_eq!(
            decode_store(&[0x89, 0x04, 0x8d, 0x00, 0x03, 0xe0, 0xfe], false).map(|s| s.len),
            Some(7)
        );
    }

    #[test]
    fn everything_else_is_refused() {
        assert_eq!(decode_store(&[0x66, 0x89, 0x03], false), None); // 16-bit store
        assert_eq!(decode_store(&[0x48, 0x89, 0x03], true), None); // REX.W
        assert_eq!(decode_store(&[0x88, 0x03], true), None); // byte store
        assert_eq!(decode_store(&[0x89, 0xc3], true), None); // register destination
        assert_eq!(decode_store(&[0xc7, 0x43, 0x10, 1, 2], true), None); // truncated imm
        assert_eq!(decode_store(&[0xc7, 0x48, 0x10, 1, 2, 3, 4], true), None); // /1
        assert_eq!(decode_store(&[0xf3, 0xa5], true), None); // rep movsd
        assert_eq!(decode_store(&[0xf0, 0x87, 0x03], true), None); // lock prefix
        assert_eq!(decode_store(&[], true), None);
        assert_eq!(decode_store(&[0x89], true), None);
        assert_eq!(decode_store(&[0x2e; 15], true), None);
    }

    #[test]
    fn init_and_startup_are_recognised() {
        assert!(starts_cpu(0x000c_4500)); // INIT, all-excluding-self, assert
        assert!(starts_cpu(0x0000_8500)); // INIT de-assert (level)
        assert!(starts_cpu(0x000c_4608)); // SIPI vector 8
        assert!(!starts_cpu(0x0000_00ef)); // fixed, vector 0xef
        assert!(!starts_cpu(0x0004_0400)); // NMI to self
    }
}
