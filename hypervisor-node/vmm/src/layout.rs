//! Guest-physical memory layout (x86_64). The values follow the classic layout that works with
//! Debian's kernel (see the shared FACTS): a zero page, a command line, a GDT and identity page
//! tables below 1 MiB, the kernel or firmware at 1 MiB, a 1 GiB hole under 4 GiB for the
//! framebuffer and the virtio-mmio devices.

/// GDT (6 entries + a 16-byte TSS descriptor).
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT.
pub const IDT_ADDR: u64 = 0x580;
/// The firmware's boot info (`crate::firmware::BootInfo`).
pub const FW_BOOT_INFO: u64 = 0x6000;
/// Linux `boot_params` (the zero page).
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack of a Linux vCPU.
pub const BOOT_STACK: u64 = 0x8ff0;
/// PML4, PDPT and four page directories (2 MiB pages identity-mapping 4 GiB).
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// The firmware's stack top (grows down; user-accessible).
pub const FW_STACK_TOP: u64 = 0x80000;
/// End of low RAM in the E820 map (the EBDA would start here on a PC).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (RSDP first, so a kernel scanning 0xe0000..0x100000 finds it).
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;
/// Where the kernel (bzImage) or firmware goes.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the hole under 4 GiB: RAM above this moves to [`HIGH_RAM_START`].
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// The framebuffer slot (not RAM, not in E820).
pub const FRAMEBUFFER_START: u64 = 0xC000_0000;
/// virtio-mmio devices, one [`VIRTIO_MMIO_STRIDE`] window each.
pub const VIRTIO_MMIO_START: u64 = 0xD000_0000;
pub const VIRTIO_MMIO_STRIDE: u64 = 0x1000;
/// IO-APIC and local APIC (fixed by the in-kernel irqchip).
pub const IOAPIC_ADDR: u32 = 0xFEC0_0000;
pub const LAPIC_ADDR: u32 = 0xFEE0_0000;
/// KVM's TSS (three pages) for real-mode emulation on Intel; under 4 GiB, not RAM.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;

/// Legacy I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// i8042 command port: `0xfe` written here resets the machine (Linux `reboot=k`).
pub const I8042_CMD_PORT: u16 = 0x64;
/// ACPI hardware-reduced sleep control and status registers and the reset register.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
pub const ACPI_RESET_PORT: u16 = 0x602;
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// POST codes, ignored.
pub const POST_PORT: u16 = 0x80;
/// The firmware writes here when it has nothing to do; the vCPU thread naps briefly.
pub const IDLE_PORT: u16 = 0xf5;
/// GSIs for virtio-mmio devices: IO-APIC pins 16..23, clear of every legacy ISA line.
pub const VIRTIO_FIRST_IRQ: u32 = 16;
/// The ACPI Generic Event Device's interrupt (the power button), the last IO-APIC pin.
pub const GED_IRQ: u32 = 23;
