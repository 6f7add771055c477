//! x86_64 CPU state at boot: GDT, identity page tables, segment and control registers, CPUID,
//! MSRs, FPU and the local APIC's LINT pins. Two starting states: the Linux 64-bit boot protocol
//! (CPL 0), and the firmware's (CPL 3 with IOPL 3, user pages), which under PVM runs natively.

use kvm_bindings::{CpuId, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::{Kvm, VcpuFd};
use thiserror::Error;
use tracing::warn;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{GDT_ADDR, IDT_ADDR, PD, PDPT, PML4};
use crate::memory::GuestMemory;

#[derive(Debug, Error)]
pub enum ArchError {
    #[error("writing boot tables to guest memory: {0}")]
    Memory(String),
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
}

/// How a vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// Linux 64-bit boot protocol: CPL 0, `rsi` = boot params.
    Linux { entry: u64, boot_params: u64, stack: u64 },
    /// The test firmware: CPL 3, IOPL 3, `rdi` = boot info.
    Firmware { entry: u64, boot_info: u64, stack: u64 },
}

// GDT entries, as Linux writes them: flags (access byte in bits 0..8, flags in 12..16), base,
// limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0x0000_f0ff) << 40)
}

/// Index → entry: null, kernel code, kernel data, user code, user data, TSS (two slots).
pub const GDT: [u64; 7] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // 0x08 kernel code, 64-bit
    gdt_entry(0xc093, 0, 0xfffff), // 0x10 kernel data
    gdt_entry(0xa0fb, 0, 0xfffff), // 0x18 user code, 64-bit, DPL 3
    gdt_entry(0xc0f3, 0, 0xfffff), // 0x20 user data, DPL 3
    gdt_entry(0x808b, 0, 0xfffff), // 0x28 TSS (busy)
    0,
];

fn bits(entry: u64, shift: u32, mask: u64) -> u8 {
    u8::try_from((entry >> shift) & mask).expect("masked to a byte")
}

/// The KVM segment for GDT slot `index`.
fn segment(index: u16) -> kvm_segment {
    let e = GDT[usize::from(index)];
    let g = bits(e, 55, 1);
    let raw_limit =
        u32::try_from(((e & 0x000f_0000_0000_0000) >> 32) | (e & 0xffff)).expect("20 bits");
    let limit = if g == 0 { raw_limit } else { (raw_limit << 12) | 0xfff };
    let base = ((e >> 16) & 0x00ff_ffff) | ((e >> 32) & 0xff00_0000);
    let dpl = bits(e, 45, 3);
    kvm_segment {
        base,
        limit,
        selector: (index * 8) | u16::from(dpl),
        type_: bits(e, 40, 0xf),
        present: bits(e, 47, 1),
        dpl,
        db: bits(e, 54, 1),
        s: bits(e, 44, 1),
        l: bits(e, 53, 1),
        g,
        avl: bits(e, 52, 1),
        unusable: u8::from(bits(e, 47, 1) == 0),
        padding: 0,
    }
}

const PTE_PRESENT: u64 = 1;
const PTE_WRITE: u64 = 2;
const PTE_USER: u64 = 4;
const PTE_HUGE: u64 = 0x80;

/// Writes the GDT, an empty IDT and page tables identity-mapping the first 4 GiB with 2 MiB
/// pages (user-accessible for the firmware).
pub fn write_boot_tables(mem: &GuestMemory, user: bool) -> Result<(), ArchError> {
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a)).map_err(|e| ArchError::Memory(e.to_string()))
    };
    for (i, e) in GDT.iter().enumerate() {
        w(*e, GDT_ADDR + 8 * i as u64)?;
    }
    w(0, IDT_ADDR)?;
    let u = if user { PTE_USER } else { 0 };
    w(PDPT | PTE_PRESENT | PTE_WRITE | u, PML4)?;
    for i in 0..4u64 {
        w((PD + i * 0x1000) | PTE_PRESENT | PTE_WRITE | u, PDPT + i * 8)?;
    }
    for j in 0..2048u64 {
        w((j << 21) | PTE_PRESENT | PTE_WRITE | PTE_HUGE | u, PD + j * 8)?;
    }
    Ok(())
}

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;
const RFLAGS_IOPL3: u64 = 3 << 12;

/// Segment, control and table registers for `mode`.
pub fn setup_sregs(vcpu: &VcpuFd, mode: StartMode) -> Result<(), ArchError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(|e| ArchError::Kvm("KVM_GET_SREGS", e))?;
    let (code, data) = match mode {
        StartMode::Linux { .. } => (segment(1), segment(2)),
        StartMode::Firmware { .. } => (segment(3), segment(4)),
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(5);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = u16::try_from(std::mem::size_of_val(&GDT) - 1).expect("small table");
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    // Set CR0 completely: at reset KVM reports CD|NW, which must not survive into long mode.
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = PML4;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(|e| ArchError::Kvm("KVM_SET_SREGS", e))
}

pub fn setup_regs(vcpu: &VcpuFd, mode: StartMode) -> Result<(), ArchError> {
    let regs = match mode {
        StartMode::Linux { entry, boot_params, stack } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry,
            rsp: stack,
            rbp: stack,
            rsi: boot_params,
            ..Default::default()
        },
        StartMode::Firmware { entry, boot_info, stack } => kvm_regs {
            rflags: RFLAGS_RESERVED | RFLAGS_IOPL3,
            rip: entry,
            rsp: stack,
            rdi: boot_info,
            ..Default::default()
        },
    };
    vcpu.set_regs(&regs).map_err(|e| ArchError::Kvm("KVM_SET_REGS", e))
}

pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), ArchError> {
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(|e| ArchError::Kvm("KVM_SET_FPU", e))
}

/// CPUID from `KVM_GET_SUPPORTED_CPUID` with this vCPU's APIC id filled in.
pub fn setup_cpuid(kvm: &Kvm, vcpu: &VcpuFd, id: u8, count: u8) -> Result<(), ArchError> {
    let cpuid = guest_cpuid(kvm, id, count)?;
    vcpu.set_cpuid2(&cpuid).map_err(|e| ArchError::Kvm("KVM_SET_CPUID2", e))
}

/// The CPUID vCPU `id` of `count` is given: what KVM supports on this host, with the vCPU's
/// APIC id and count in place of the host CPU's.
pub fn guest_cpuid(kvm: &Kvm, id: u8, count: u8) -> Result<CpuId, ArchError> {
    let mut cpuid: CpuId = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| ArchError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // APIC id (31:24), logical processor count (23:16); hypervisor present.
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= 1 << 31;
            }
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
    Ok(cpuid)
}

/// The MSRs a booting kernel expects zeroed or set (Firecracker's list).
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), ArchError> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry { index, data, ..Default::default() })
    .collect();
    let msrs =
        Msrs::from_entries(&entries).map_err(|e| ArchError::Memory(format!("MSR list: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(|e| ArchError::Kvm("KVM_SET_MSRS", e))?;
    if set != entries.len() {
        // PVM refuses a few of these; the guests we start do not depend on them.
        warn!(set, wanted = entries.len(), "KVM_SET_MSRS set fewer MSRs than asked");
    }
    Ok(())
}

/// LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a BIOS leaves them.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), ArchError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const MODE_NMI: u32 = 0x4;
    const MODE_EXTINT: u32 = 0x7;
    let mut lapic = vcpu.get_lapic().map_err(|e| ArchError::Kvm("KVM_GET_LAPIC", e))?;
    for (reg, mode) in [(APIC_LVT0, MODE_EXTINT), (APIC_LVT1, MODE_NMI)] {
        let raw: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i].to_ne_bytes()[0]);
        let v = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = i8::from_ne_bytes([*b]);
        }
    }
    vcpu.set_lapic(&lapic).map_err(|e| ArchError::Kvm("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_segments_decode() {
        let cs = segment(1);
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.dpl, cs.present, cs.s),
            (0x08, 0xb, 1, 0, 1, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ucs = segment(3);
        assert_eq!((ucs.selector, ucs.dpl, ucs.l), (0x1b, 3, 1));
        let uds = segment(4);
        assert_eq!((uds.selector, uds.dpl, uds.type_, uds.db), (0x23, 3, 3, 1));
        let tss = segment(5);
        assert_eq!((tss.selector, tss.type_, tss.s), (0x28, 0xb, 0));
        assert_eq!(segment(0).unusable, 1);
    }

    #[test]
    fn page_tables_map_four_gib() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        write_boot_tables(&mem, true).expect("tables");
        let pml4: u64 = mem.read_obj(GuestAddress(PML4)).expect("mem");
        assert_eq!(pml4, PDPT | 7);
        let pd_last: u64 = mem.read_obj(GuestAddress(PD + 2047 * 8)).expect("mem");
        assert_eq!(pd_last, (2047 << 21) | 0x87);
    }
}
