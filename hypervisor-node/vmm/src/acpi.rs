//! ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) for a hardware-reduced machine. Debian's kernels
//! find virtio-mmio devices only here (DSDT devices with HID `LNRO0005`), not on the command
//! line. Power-off and reset go through the FADT's sleep control and reset registers.

use acpi_tables::Aml;
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{
    ACPI_END, ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
    ACPI_START, COM1_IRQ, COM1_PORT, GED_IRQ, IOAPIC_ADDR, LAPIC_ADDR,
};
use crate::memory::GuestMemory;

const OEM_ID: [u8; 6] = *b"ATRIUM";
const OEM_TABLE: [u8; 8] = *b"ATRMVMM ";

#[derive(Debug, Error)]
pub enum AcpiError {
    #[error("ACPI tables need {0} bytes, more than the space reserved for them")]
    TooLarge(u64),
    #[error("writing ACPI tables: {0}")]
    Memory(String),
}

/// A virtio-mmio device as the DSDT describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    pub base: u64,
    pub len: u64,
    pub irq: u32,
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// The DSDT body: COM1 and each virtio-mmio device under `\_SB`, and `\_S5_` for power-off.
pub fn dsdt(devices: &[MmioDevice]) -> Result<Vec<u8>, AcpiError> {
    let mut body = Vec::new();
    // Each object is built and serialized in one statement: the AML builders borrow their
    // children.
    body.extend(bytes(&aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(COM1_PORT, COM1_PORT, 1, 8),
                    &aml::Interrupt::new(true, true, false, false, COM1_IRQ),
                ]),
            ),
        ],
    )));
    for (i, d) in devices.iter().enumerate() {
        let base = u32::try_from(d.base).map_err(|_| AcpiError::TooLarge(d.base))?;
        let len = u32::try_from(d.len).map_err(|_| AcpiError::TooLarge(d.len))?;
        let uid = u32::try_from(i).map_err(|_| AcpiError::TooLarge(i as u64))?;
        let hid: &'static str = "LNRO0005";
        let name = format!("_SB_.V{i:03}");
        body.extend(bytes(&aml::Device::new(
            name.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &hid),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![
                        &aml::Memory32Fixed::new(true, base, len),
                        &aml::Interrupt::new(true, true, false, false, d.irq),
                    ]),
                ),
            ],
        )));
    }
    // The power button: a Generic Event Device whose interrupt makes `_EVT` notify it.
    body.extend(bytes(&aml::Device::new(
        "_SB_.PWRB".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
        ],
    )));
    body.extend(bytes(&aml::Device::new(
        "_SB_.GED0".into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0013"),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&aml::Interrupt::new(
                    true, true, false, false, GED_IRQ,
                )]),
            ),
            &aml::Method::new(
                "_EVT".into(),
                1,
                false,
                vec![&aml::Notify::new(&aml::Path::new("\\_SB_.PWRB"), &0x80u8)],
            ),
        ],
    )));
    body.extend(bytes(&aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&5u8, &0u8, &0u8, &0u8]),
    )));
    Ok(body)
}

/// Writes the tables at [`ACPI_START`]; returns the RSDP's address.
pub fn create_acpi_tables(
    mem: &GuestMemory,
    vcpus: u8,
    devices: &[MmioDevice],
) -> Result<u64, AcpiError> {
    let rsdp_addr = ACPI_START;
    let mut at = ACPI_START + 64;
    let mut place = |data: &[u8]| -> Result<u64, AcpiError> {
        let addr = at;
        let end = addr + data.len() as u64;
        if end > ACPI_END {
            return Err(AcpiError::TooLarge(end - ACPI_START));
        }
        mem.write_slice(data, GuestAddress(addr)).map_err(|e| AcpiError::Memory(e.to_string()))?;
        at = end.next_multiple_of(16);
        Ok(addr)
    };

    let body = dsdt(devices)?;
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    dsdt.append_slice(&body);
    let dsdt_addr = place(dsdt.as_slice())?;

    let io =
        |port: u16| GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, u64::from(port));
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt_addr);
    fadt.sleep_control_reg = io(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io(ACPI_SLEEP_STATUS_PORT);
    fadt.reset_reg = io(ACPI_RESET_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    let fadt_addr = place(&bytes(&fadt.finalize()))?;

    let mut madt = MADT::new(OEM_ID, OEM_TABLE, 1, LocalInterruptController::Address(LAPIC_ADDR));
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(vcpus, IOAPIC_ADDR, 0));
    let madt_addr = place(&bytes(&madt))?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place(&bytes(&xsdt))?;

    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    mem.write_slice(&bytes(&rsdp), GuestAddress(rsdp_addr))
        .map_err(|e| AcpiError::Memory(e.to_string()))?;
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(mem: &GuestMemory, addr: u64) -> (Vec<u8>, bool) {
        let mut hdr = [0u8; 8];
        mem.read_slice(&mut hdr, GuestAddress(addr)).expect("mem");
        let len = u32::from_le_bytes(hdr[4..8].try_into().expect("4")) as usize;
        let mut t = vec![0u8; len];
        mem.read_slice(&mut t, GuestAddress(addr)).expect("mem");
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        (t, sum == 0)
    }

    #[test]
    fn tables_are_linked_and_checksummed() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 2 << 20)]).expect("mem");
        let devs = [MmioDevice { base: 0xd000_0000, len: 0x1000, irq: 16 }];
        let rsdp = create_acpi_tables(&mem, 2, &devs).expect("tables");
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, GuestAddress(rsdp)).expect("mem");
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(r[..20].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let xsdt = u64::from_le_bytes(r[24..32].try_into().expect("8"));
        let (x, ok) = checksum_ok(&mem, xsdt);
        assert!(ok && &x[0..4] == b"XSDT");
        let fadt = u64::from_le_bytes(x[36..44].try_into().expect("8"));
        let madt = u64::from_le_bytes(x[44..52].try_into().expect("8"));
        let (f, ok) = checksum_ok(&mem, fadt);
        assert!(ok && &f[0..4] == b"FACP");
        let (m, ok) = checksum_ok(&mem, madt);
        assert!(ok && &m[0..4] == b"APIC");
        let dsdt = u64::from_le_bytes(f[140..148].try_into().expect("8"));
        let (d, ok) = checksum_ok(&mem, dsdt);
        assert!(ok && &d[0..4] == b"DSDT");
        assert!(d.windows(8).any(|w| w == b"LNRO0005"));
        assert!(d.windows(4).any(|w| w == b"_S5_"));
        assert!(d.windows(8).any(|w| w == b"ACPI0013"), "the GED");
        assert!(d.windows(4).any(|w| w == b"_EVT"));
    }
}
