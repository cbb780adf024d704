//! Bulwark's own CPU state in VMX root operation: GDT with a TSS (VM exits need a non-null host
//! TR), an IDT whose every exception vector prints and stops (Bulwark never hangs silently), and
//! the double-fault stack. One [`HostCpu`] per physical CPU.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicUsize, Ordering};
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, FS, GS, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

const DF_STACK_SIZE: usize = 16 * 1024;
const IDT_VECTORS: usize = 32;

/// A 64-bit interrupt gate.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

#[repr(C, align(16))]
struct Idt([Gate; IDT_VECTORS]);

/// Per-CPU host descriptor tables. Leaked: they must live as long as the CPU runs.
pub struct HostCpu {
    pub gdt: GlobalDescriptorTable,
    pub tss: &'static TaskStateSegment,
    pub code: SegmentSelector,
    pub data: SegmentSelector,
    pub tr: SegmentSelector,
    idt: Idt,
}

impl HostCpu {
    pub fn gdt_base(&self) -> u64 {
        &self.gdt as *const _ as u64
    }
    pub fn idt_base(&self) -> u64 {
        &self.idt as *const _ as u64
    }
    pub fn tss_base(&self) -> u64 {
        self.tss as *const _ as u64
    }
}

/// State of a CPU exception taken inside Bulwark.
#[derive(Debug)]
#[repr(C)]
pub struct ExceptionFrame {
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Called for any exception inside Bulwark; must not return.
pub type FatalHandler = fn(&ExceptionFrame) -> !;

static FATAL: AtomicUsize = AtomicUsize::new(0);

extern "C" {
    static bulwark_exception_stubs: [u64; IDT_VECTORS];
}

core::arch::global_asm!(
    r#"
    .section .text
    .balign 16
bulwark_exception_common:
    /* stack: vector, error code, rip, cs, rflags, rsp, ss */
    mov rdi, rsp
    and rsp, -16
    call {handler}
    ud2
"#,
    handler = sym exception_entry,
);

macro_rules! stubs {
    ($($v:literal $err:literal),* $(,)?) => {
        core::arch::global_asm!(
            $(
                concat!(".section .text\n.balign 16\nbulwark_exc_", $v, ":\n"),
                // An NMI that arrives while Bulwark runs (VM exits are short, interrupts are
                // off) carries nothing Bulwark must act on: return from it. Everything else
                // prints and stops.
                concat!(".if ", $v, " == 2\n iretq\n .else\n"),
                concat!(".if ", $err, " == 0\n push 0\n .endif\n"),
                concat!("push ", $v, "\njmp bulwark_exception_common\n.endif\n"),
            )*
            ".section .rodata\n.balign 8\n.global bulwark_exception_stubs\nbulwark_exception_stubs:\n",
            $( concat!(".quad bulwark_exc_", $v, "\n"), )*
        );
    };
}

// Vectors that push an error code: 8, 10-14, 17, 21, 29, 30.
stubs!(
    0 0, 1 0, 2 0, 3 0, 4 0, 5 0, 6 0, 7 0, 8 1, 9 0, 10 1, 11 1, 12 1, 13 1, 14 1, 15 0,
    16 0, 17 1, 18 0, 19 0, 20 0, 21 1, 22 0, 23 0, 24 0, 25 0, 26 0, 27 0, 28 0, 29 1, 30 1, 31 0,
);

extern "C" fn exception_entry(frame: &ExceptionFrame) -> ! {
    let f = FATAL.load(Ordering::Acquire);
    if f != 0 {
        // SAFETY: FATAL only ever holds a `FatalHandler` stored by `init_cpu`.
        let handler: FatalHandler = unsafe { core::mem::transmute::<usize, FatalHandler>(f) };
        handler(frame)
    }
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Build and load this CPU's GDT, TSS and IDT. `fatal` runs for any exception in Bulwark.
pub fn init_cpu(fatal: FatalHandler) -> &'static HostCpu {
    FATAL.store(fatal as usize, Ordering::Release);

    let df_stack: &'static mut [u8] = Box::leak(alloc::vec![0u8; DF_STACK_SIZE].into_boxed_slice());
    let df_top = df_stack.as_ptr() as u64 + DF_STACK_SIZE as u64;
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[0] = VirtAddr::new(df_top & !15);
    let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));

    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tr = gdt.append(Descriptor::tss_segment(tss));

    let mut idt = Idt([Gate::default(); IDT_VECTORS]);
    for (v, gate) in idt.0.iter_mut().enumerate() {
        // SAFETY: the stub table is a static array of 32 code addresses emitted above.
        let addr = unsafe { bulwark_exception_stubs[v] };
        *gate = Gate {
            offset_low: addr as u16,
            selector: code.0,
            ist: if v == 8 { 1 } else { 0 },
            type_attr: 0x8e, // present, DPL0, 64-bit interrupt gate
            offset_mid: (addr >> 16) as u16,
            offset_high: (addr >> 32) as u32,
            reserved: 0,
        };
    }

    let cpu: &'static HostCpu = Box::leak(Box::new(HostCpu {
        gdt,
        tss,
        code,
        data,
        tr,
        idt,
    }));
    cpu.gdt.load();
    let idtr = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::new(cpu.idt_base()),
    };
    // SAFETY: the GDT just loaded holds flat 64-bit code/data descriptors at these selectors and
    // a TSS descriptor at `tr`; the IDT is leaked (lives forever) and every gate points at a stub.
    unsafe {
        CS::set_reg(code);
        DS::set_reg(data);
        ES::set_reg(data);
        SS::set_reg(data);
        FS::set_reg(data);
        GS::set_reg(data);
        load_tss(tr);
        x86_64::instructions::tables::lidt(&idtr);
    }
    cpu
}
