//! The SMMUv3 Bulwark owns (docs/aarch64.md, "SMMUv3: DMA under the locks"; issue 13 item 2).
//!
//! At boot Bulwark takes the `arm,smmu-v3` node's register frame (the node is hidden from the
//! guest and never mapped at stage 2), reads SMMU_IDR0/1/5, disables the SMMU, and programs a
//! linear stream table, a command queue and an event queue in its own memory (no IPA maps it).
//! Every stream the table covers (StreamIDs `0..STREAMS`: with QEMU virt's `iommu-map` RID =
//! StreamID, PCI bus 0) gets one translation, derived by the core from the same attribute store
//! as the CPU's stage 2 ([`Guest::sync_dma`]): guest RAM only, ROE/chunk-locked and `attr=`
//! no-W pages read-only, no-R pages absent, Bulwark's memory absent (it has no IPA).
//!
//! * **SMMU_IDR0.S2P = 1**: a stage-2 STE (Config `0b110`, VMID 1) over a table in the engine's
//!   stage-2 format.
//! * **stage 1 only** (QEMU 7.2): a stage-1 STE (Config `0b101`) with one context descriptor
//!   whose TTB0 is a table in the engine's VMSAv8-64 stage-1 format, built by Bulwark with the
//!   identity of the guest's address space: input = the guest's IPA, output = host PA. The
//!   guest never sees a context descriptor or a stage-1 table of the SMMU.
//!
//! Streams outside the table are aborted by the SMMU (C_BAD_STREAMID, recorded). Invalidation:
//! [`SmmuTlb`] (CMD_TLBI_NSNH_ALL + CMD_SYNC, waiting for the sync) is called by the engine for
//! every edit of the DMA table, which Bulwark re-derives with the CPU's stage 2 before a
//! hypercall returns. Faults come back through the event queue, polled at every exit and at the
//! end of the run, as `bulwark: violation kind=... access=dma-write ...` lines.

extern crate alloc;

use core::cell::UnsafeCell;

use bulwark_core::addr::GpaRange;
use bulwark_core::guest::Guest;
use bulwark_core::physmem::PhysMem;
use bulwark_core::pt::stage1::{Stage1, MAIR};
use bulwark_core::pt::stage2::{Stage2Config, S2_ADDR_MASK};
use bulwark_core::pt::{PtError, TlbFlush};

// Register offsets (SMMUv3 architecture, chapter 6).
const IDR0: u64 = 0x0;
const IDR1: u64 = 0x4;
const IDR5: u64 = 0x14;
const CR0: u64 = 0x20;
const CR0ACK: u64 = 0x24;
const CR1: u64 = 0x28;
const CR2: u64 = 0x2c;
const IRQ_CTRL: u64 = 0x50;
const GERROR: u64 = 0x60;
const STRTAB_BASE: u64 = 0x80;
const STRTAB_BASE_CFG: u64 = 0x88;
const CMDQ_BASE: u64 = 0x90;
const CMDQ_PROD: u64 = 0x98;
const CMDQ_CONS: u64 = 0x9c;
const EVENTQ_BASE: u64 = 0xa0;
const EVENTQ_PROD: u64 = 0x1_00a8;
const EVENTQ_CONS: u64 = 0x1_00ac;
/// The register frame Bulwark needs (pages 0 and 1).
pub const FRAME_SIZE: u64 = 0x2_0000;

const CR0_SMMUEN: u32 = 1 << 0;
const CR0_EVENTQEN: u32 = 1 << 2;
const CR0_CMDQEN: u32 = 1 << 3;

const CMD_CFGI_ALL: u64 = 0x04;
const CMD_TLBI_NSNH_ALL: u64 = 0x30;
const CMD_SYNC: u64 = 0x46;

/// log2 of the stream-table entries: StreamIDs 0..256 (PCI bus 0 with RID = StreamID).
const STRTAB_LOG2: u32 = 8;
pub const STREAMS: u32 = 1 << STRTAB_LOG2;
const CMDQ_LOG2: u32 = 8;
/// 1024 records: QEMU records one fault per 4 bytes a device writes, and the guest may not
/// exit while its device works.
const EVTQ_LOG2: u32 = 10;
/// ASID of the one context descriptor; VMID of the stage-2 STE.
const ASID: u64 = 1;
const VMID: u64 = 1;

/// Queues and tables the SMMU reads and writes, in Bulwark's BSS (no IPA maps it).
#[repr(C, align(16384))]
struct SmmuMem {
    strtab: [u64; (STREAMS as usize) * 8],
    cmdq: [u64; (1 << CMDQ_LOG2) * 2],
    evtq: [u64; (1 << EVTQ_LOG2) * 4],
    cd: [u64; 8],
}

struct SmmuCell(UnsafeCell<SmmuMem>);
// SAFETY: one CPU; only the one `Smmu` (created once, owned by the run loop) touches it.
unsafe impl Sync for SmmuCell {}
static MEM: SmmuCell = SmmuCell(UnsafeCell::new(SmmuMem {
    strtab: [0; (STREAMS as usize) * 8],
    cmdq: [0; (1 << CMDQ_LOG2) * 2],
    evtq: [0; (1 << EVTQ_LOG2) * 4],
    cd: [0; 8],
}));

/// The device table Bulwark gives the SMMU's streams.
pub enum DmaTable {
    Stage1(Stage1),
    Stage2(bulwark_core::pt::stage2::Stage2),
}

/// The SMMU after [`Smmu::probe`]: reset, queues not yet enabled.
pub struct Smmu {
    base: u64,
    pub phandle: u32,
    s2: bool,
    oas: u8,
    cmd_prod: u32,
    evt_cons: u32,
    /// The device table (set by [`Smmu::enable`]).
    table: Option<DmaTable>,
    /// Set when a command did not complete (the run must stop: a lock may not hold for DMA).
    pub failed: bool,
    /// Faults reported as violation lines.
    pub faults: u64,
}

fn dsb() {
    // SAFETY: a barrier; orders Bulwark's writes to the queues/tables before the SMMU reads them.
    unsafe { core::arch::asm!("dsb sy", options(nostack)) }
}

impl Smmu {
    fn r32(&self, off: u64) -> u32 {
        // SAFETY: a register of the SMMU's frame (base from the device tree, FRAME_SIZE long,
        // device memory in EL2's identity map, hidden from the guest).
        unsafe { core::ptr::read_volatile((self.base + off) as *const u32) }
    }
    fn w32(&self, off: u64, v: u32) {
        // SAFETY: as `r32`.
        unsafe { core::ptr::write_volatile((self.base + off) as *mut u32, v) }
    }
    fn w64(&self, off: u64, v: u64) {
        // SAFETY: as `r32`; the 64-bit base registers are 8-byte aligned.
        unsafe { core::ptr::write_volatile((self.base + off) as *mut u64, v) }
    }

    fn mem() -> *mut SmmuMem {
        MEM.0.get()
    }

    /// Write CR0 and wait for CR0ACK to agree.
    fn set_cr0(&self, v: u32) -> Result<(), &'static str> {
        self.w32(CR0, v);
        for _ in 0..1_000_000 {
            if self.r32(CR0ACK) == v {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err("SMMU_CR0ACK did not follow SMMU_CR0")
    }

    /// Check the SMMU at `base` can do what Bulwark needs and reset it (disabled, no
    /// interrupts). `Err(why)` when it cannot be used.
    pub fn probe(base: u64, size: u64, phandle: u32) -> Result<Self, &'static str> {
        if size < FRAME_SIZE || !base.is_multiple_of(0x1_0000) || base >= 1 << 30 {
            return Err("register frame not where Bulwark's EL2 map has device memory (first GiB, 64 KiB-aligned, 128 KiB)");
        }
        let mut s = Smmu {
            base,
            phandle,
            s2: false,
            oas: 0,
            cmd_prod: 0,
            evt_cons: 0,
            table: None,
            failed: false,
            faults: 0,
        };
        let idr0 = s.r32(IDR0);
        let idr1 = s.r32(IDR1);
        let idr5 = s.r32(IDR5);
        let (s2p, s1p) = (idr0 & 1 != 0, idr0 & 2 != 0);
        let ttf = (idr0 >> 2) & 3;
        log::info!(
            "SMMUv3 at {base:#x}: IDR0 {idr0:#x} (S1P={} S2P={}), IDR1 {idr1:#x}, IDR5 {idr5:#x}",
            u32::from(s1p),
            u32::from(s2p)
        );
        if !s1p && !s2p {
            return Err("neither stage 1 nor stage 2 implemented");
        }
        if ttf & 2 == 0 {
            return Err("no AArch64 translation-table format");
        }
        if idr5 & (1 << 4) == 0 {
            return Err("no 4 KiB granule");
        }
        if idr1 & 0x3f < STRTAB_LOG2
            || (idr1 >> 21) & 0x1f < CMDQ_LOG2
            || (idr1 >> 16) & 0x1f < EVTQ_LOG2
        {
            return Err("StreamID or queue sizes smaller than Bulwark's tables");
        }
        s.s2 = s2p;
        s.oas = (idr5 & 7) as u8;
        s.set_cr0(0)?;
        s.w32(IRQ_CTRL, 0);
        Ok(s)
    }

    /// Which stage the streams get.
    pub fn stage(&self) -> &'static str {
        if self.s2 {
            "stage 2"
        } else {
            "stage 1 (tables owned by Bulwark)"
        }
    }

    /// Build the device table from `core` (the DMA view), write the STEs (and the context
    /// descriptor), set up the queues and turn the SMMU on.
    pub fn enable(
        &mut self,
        core: &Guest,
        pool: &mut dyn PhysMem,
        s2cfg: Stage2Config,
    ) -> Result<(), alloc::string::String> {
        let full = core.full_range().ok_or("empty guest memory map")?;
        let in_bits = s2cfg.ipa_bits;
        let mut tlb = bulwark_core::pt::RecordingFlush::default();
        let err = |e: PtError| alloc::format!("deriving the device table: {e:?}");
        let (table, root) = if self.s2 {
            let mut t = bulwark_core::pt::stage2::Stage2::new_stage2(pool, s2cfg).map_err(err)?;
            core.sync_dma(pool, &mut t, full, &mut tlb).map_err(err)?;
            let r = t.root().as_u64();
            (DmaTable::Stage2(t), r)
        } else {
            let mut t = Stage1::new_stage1(pool, in_bits).map_err(err)?;
            core.sync_dma(pool, &mut t, full, &mut tlb).map_err(err)?;
            let r = t.root().as_u64();
            (DmaTable::Stage1(t), r)
        };
        let m = Self::mem();
        let ips = u64::from(self.oas.min(s2cfg.ps));
        // SAFETY: the SMMU is disabled (probe), so nothing reads these tables now; `m` is
        // Bulwark's static, accessed by this one owner.
        unsafe {
            let mem = &mut *m;
            let cd_addr = mem.cd.as_ptr() as u64;
            // Context descriptor (stage 1): T0SZ, TG0 4 KiB, IR0/OR0 write-back, SH0 inner,
            // EPD1 (no TTB1), V; IPS, AA64, R (record faults), A (abort on fault), ASID; TTB0;
            // MAIR0.
            mem.cd = [0; 8];
            mem.cd[0] = u64::from(64 - in_bits)
                | (1 << 8)
                | (1 << 10)
                | (3 << 12)
                | (1 << 30)
                | (1 << 31)
                | (ips << 32)
                | (1 << 41)
                | (1 << 45)
                | (1 << 46)
                | (ASID << 48);
            mem.cd[1] = root & 0x000f_ffff_ffff_fff0;
            mem.cd[3] = MAIR;
            for sid in 0..STREAMS as usize {
                let ste = &mut mem.strtab[sid * 8..sid * 8 + 8];
                ste.fill(0);
                if self.s2 {
                    // V, Config = stage 2 only; VMID, S2T0SZ, S2SL0, S2IR0/OR0 WB, S2SH0
                    // inner, S2TG 4 KiB, S2PS, S2AA64, S2R (record faults); S2TTB.
                    let sl0: u64 = if s2cfg.root_level == 3 { 2 } else { 1 };
                    ste[0] = 1 | (0b110 << 1);
                    ste[2] = VMID
                        | (u64::from(64 - in_bits) << 32)
                        | (sl0 << 38)
                        | (1 << 40)
                        | (1 << 42)
                        | (3 << 44)
                        | (ips << 48)
                        | (1 << 51)
                        | (1 << 58);
                    ste[3] = root & S2_ADDR_MASK;
                } else {
                    // V, Config = stage 1 only, S1Fmt linear, one CD (S1CDMax 0);
                    // CD fetches write-back inner shareable.
                    ste[0] = 1 | (0b101 << 1) | (cd_addr & 0x000f_ffff_ffff_ffc0);
                    ste[1] = (1 << 2) | (1 << 4) | (3 << 6);
                }
            }
            mem.cmdq.fill(0);
            mem.evtq.fill(0);
        }
        dsb();
        // SAFETY: reading the addresses of Bulwark's static (no access).
        let (strtab, cmdq, evtq) = unsafe {
            (
                (*m).strtab.as_ptr() as u64,
                (*m).cmdq.as_ptr() as u64,
                (*m).evtq.as_ptr() as u64,
            )
        };
        // CR1: tables and queues inner shareable, write-back; CR2: record invalid StreamIDs.
        self.w32(
            CR1,
            (3 << 10) | (1 << 8) | (1 << 6) | (3 << 4) | (1 << 2) | 1,
        );
        self.w32(CR2, 1 << 1);
        self.w64(STRTAB_BASE, (1 << 62) | (strtab & 0x000f_ffff_ffff_ffc0));
        self.w32(STRTAB_BASE_CFG, STRTAB_LOG2);
        self.w64(
            CMDQ_BASE,
            (1 << 62) | (cmdq & 0x000f_ffff_ffff_ffe0) | u64::from(CMDQ_LOG2),
        );
        self.w32(CMDQ_PROD, 0);
        self.w32(CMDQ_CONS, 0);
        self.w64(
            EVENTQ_BASE,
            (1 << 62) | (evtq & 0x000f_ffff_ffff_ffe0) | u64::from(EVTQ_LOG2),
        );
        self.w32(EVENTQ_PROD, 0);
        self.w32(EVENTQ_CONS, 0);
        self.cmd_prod = 0;
        self.evt_cons = 0;
        self.set_cr0(CR0_CMDQEN | CR0_EVENTQEN)
            .map_err(alloc::string::String::from)?;
        self.command(CMD_CFGI_ALL, 31);
        self.command(CMD_TLBI_NSNH_ALL, 0);
        self.sync();
        if self.failed {
            return Err("the command queue did not complete CFGI_ALL/TLBI/SYNC".into());
        }
        self.set_cr0(CR0_CMDQEN | CR0_EVENTQEN | CR0_SMMUEN)
            .map_err(alloc::string::String::from)?;
        self.table = Some(table);
        Ok(())
    }

    fn command(&mut self, op: u64, word1: u64) {
        let n = 1u32 << CMDQ_LOG2;
        let idx = (self.cmd_prod & (n - 1)) as usize;
        // SAFETY: slot `idx` of Bulwark's command queue; the SMMU reads it only after PROD moves
        // past it (below), and every earlier command was consumed (`sync` waits).
        unsafe {
            let q = &mut (*Self::mem()).cmdq;
            q[idx * 2] = op;
            q[idx * 2 + 1] = word1;
        }
        self.cmd_prod = (self.cmd_prod + 1) & (2 * n - 1);
    }

    /// CMD_SYNC, publish the queue, wait until the SMMU consumed everything (the sync included).
    fn sync(&mut self) {
        self.command(CMD_SYNC, 0);
        dsb();
        self.w32(CMDQ_PROD, self.cmd_prod);
        for _ in 0..10_000_000 {
            let cons = self.r32(CMDQ_CONS);
            if (cons >> 24) & 0x7f != 0 || self.r32(GERROR) & 1 != 0 {
                log::error!(
                    "SMMUv3: command queue error (CMDQ_CONS {cons:#x}, GERROR {:#x})",
                    self.r32(GERROR)
                );
                self.failed = true;
                return;
            }
            if cons & ((2 << CMDQ_LOG2) - 1) == self.cmd_prod {
                return;
            }
            core::hint::spin_loop();
        }
        log::error!("SMMUv3: CMD_SYNC did not complete");
        self.failed = true;
    }

    /// Invalidate the SMMU's TLBs and wait for it.
    fn invalidate(&mut self) {
        self.command(CMD_TLBI_NSNH_ALL, 0);
        self.sync();
    }

    /// Re-derive `range` of the device table from `core` (with the CPU's stage 2) and invalidate
    /// the SMMU's TLBs when an entry changed; returns once the SMMU has done so.
    pub fn rederive(
        &mut self,
        core: &Guest,
        pool: &mut dyn PhysMem,
        range: GpaRange,
    ) -> Result<(), alloc::string::String> {
        let Some(mut table) = self.table.take() else {
            return Ok(());
        };
        let mut tlb = SmmuTlb { smmu: self };
        let r = match &mut table {
            DmaTable::Stage1(t) => core.sync_dma(pool, t, range, &mut tlb),
            DmaTable::Stage2(t) => core.sync_dma(pool, t, range, &mut tlb),
        };
        self.table = Some(table);
        match r {
            Err(e) => Err(alloc::format!("re-deriving the device table: {e:?}")),
            Ok(_) if self.failed => Err("the SMMU did not complete the invalidation".into()),
            Ok(_) => Ok(()),
        }
    }

    /// Take the fault records the SMMU wrote since the last call.
    pub fn events(&mut self, mut each: impl FnMut(&Event)) {
        if self.table.is_none() {
            return;
        }
        let n = 1u32 << EVTQ_LOG2;
        let mask = 2 * n - 1;
        let prod = self.r32(EVENTQ_PROD);
        if prod & (1 << 31) != (self.evt_cons & (1 << 31)) {
            log::warn!("SMMUv3: event queue overflowed: fault records were lost");
        }
        let mut budget = n;
        while self.evt_cons & mask != prod & mask && budget > 0 {
            budget -= 1;
            let idx = (self.evt_cons & (n - 1)) as usize;
            // SAFETY: slot `idx` of Bulwark's event queue, written by the SMMU before it moved
            // PROD past it (read above); Bulwark hands it back by moving CONS.
            let rec = unsafe {
                let q = &(*Self::mem()).evtq;
                [q[idx * 4], q[idx * 4 + 1], q[idx * 4 + 2], q[idx * 4 + 3]]
            };
            self.evt_cons = ((self.evt_cons & mask) + 1) & mask | (prod & (1 << 31));
            each(&Event::decode(rec));
        }
        self.w32(EVENTQ_CONS, self.evt_cons);
    }
}

/// One event record (SMMUv3 section 7.3).
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub kind: u8,
    pub stream: u32,
    /// Input address (the guest's IPA) of translation/permission faults.
    pub addr: u64,
    /// The access was a read (RnW = 1).
    pub read: bool,
}

impl Event {
    fn decode(r: [u64; 4]) -> Self {
        Event {
            kind: (r[0] & 0xff) as u8,
            stream: (r[0] >> 32) as u32,
            addr: r[2],
            read: r[1] & (1 << 35) != 0,
        }
    }

    /// The event's name, and whether it is a fault of a DMA access at `addr`.
    pub fn name(&self) -> (&'static str, bool) {
        match self.kind {
            0x01 => ("F_UUT", false),
            0x02 => ("C_BAD_STREAMID", false),
            0x03 => ("F_STE_FETCH", false),
            0x04 => ("C_BAD_STE", false),
            0x07 => ("F_STREAM_DISABLED", false),
            0x0a => ("C_BAD_CD", false),
            0x0b => ("F_WALK_EABT", true),
            0x10 => ("F_TRANSLATION", true),
            0x11 => ("F_ADDR_SIZE", true),
            0x12 => ("F_ACCESS", true),
            0x13 => ("F_PERMISSION", true),
            0x20 => ("F_TLB_CONFLICT", false),
            _ => ("UNKNOWN", false),
        }
    }
}

/// The SMMU's TLB maintenance: called by the page-table engine for every edit of the device
/// table (break-before-make and the final invalidation).
struct SmmuTlb<'a> {
    smmu: &'a mut Smmu,
}

impl TlbFlush for SmmuTlb<'_> {
    fn flush(&mut self, _range: GpaRange) {
        self.smmu.invalidate();
    }
}
