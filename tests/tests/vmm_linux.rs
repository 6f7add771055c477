//! Debian's kernel on the builtin VMM, as far as it goes on this machine: its early console
//! output arrives on COM1, which proves the ELF loading, the boot parameters (command line,
//! E820 map), the CPU state and the serial device. Under PVM the guest kernel runs in KVM's
//! instruction emulator (the first printk takes ~20 s), so the test stops there; on a
//! hardware-KVM host the same kernel boots in well under a second to that point.

use std::time::Duration;

use atrium_tests::vmm::{VmmGuestBuilder, debian_vmlinux};
use atrium_tests::{Group, skip};

/// Instructions PVM's emulator lacks are kept out of the guest's way: `noxsave`, and
/// `clearcpuid` of CX16 (141), POPCNT (151), XSAVE (154) and SMAP (308).
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 noxsave clearcpuid=141,151,154,308 nokaslr panic=-1";

#[test]
fn debian_kernel_prints_on_the_serial_console() -> anyhow::Result<()> {
    if skip(Group::Kvm, "debian_kernel_prints_on_the_serial_console") {
        return Ok(());
    }
    let kernel = debian_vmlinux()?;
    let mut vm = VmmGuestBuilder::kernel("vmm-linux", &kernel, CMDLINE, 256).start()?;
    let serial = vm.wait_serial("BIOS-provided physical RAM map", Duration::from_secs(180))?;
    assert!(serial.contains("Linux version"), "{serial}");
    let serial =
        vm.wait_serial("printk: bootconsole [earlyser0] enabled", Duration::from_secs(60))?;
    assert!(serial.contains(&format!("Command line: {CMDLINE}")), "{serial}");
    // The E820 map the VMM wrote into the zero page: low RAM, the ACPI area, RAM from 1 MiB.
    for line in [
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x00000000000e0000-0x00000000000fffff] reserved",
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
    ] {
        assert!(serial.contains(line), "missing {line:?} in\n{serial}");
    }
    let (status, log) = vm.stop()?;
    assert!(status.success(), "{status}\n{log}");
    Ok(())
}
