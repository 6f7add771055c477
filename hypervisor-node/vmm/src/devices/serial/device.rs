//! COM1. The guest's output goes to a log file bounded in size: bytes past the bound are
//! counted and dropped, so a chatty or hostile guest cannot fill the host's disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tracing::warn;
use vm_superio::serial::{NoEvents, SerialState as UartState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::SerialMetrics;
use crate::devices::bus::BusDevice;

/// The serial interrupt: an irqfd on GSI 4.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// A log that keeps at most `max` bytes.
#[derive(Debug)]
pub struct BoundedLog {
    file: File,
    written: u64,
    max: u64,
    started: std::time::Instant,
    metrics: Arc<SerialMetrics>,
}

impl BoundedLog {
    pub fn create(path: &Path, max: u64, started: std::time::Instant) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
        Ok(Self { file, written: 0, max, started, metrics: Arc::default() })
    }

    pub fn metrics(&self) -> Arc<SerialMetrics> {
        Arc::clone(&self.metrics)
    }
}

impl Write for BoundedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.metrics.first_byte_ns.load(Ordering::Relaxed) == 0 && !buf.is_empty() {
            let ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1);
            self.metrics.first_byte_ns.store(ns, Ordering::Relaxed);
        }
        let room = usize::try_from(self.max.saturating_sub(self.written)).unwrap_or(usize::MAX);
        let n = buf.len().min(room);
        if n > 0 {
            if let Err(e) = self.file.write_all(&buf[..n]) {
                // A full disk or a closed FIFO: count the bytes as dropped, keep the guest going.
                warn!(error = %e, "serial log write failed");
                self.written = self.max;
            } else {
                self.written += n as u64;
                self.metrics.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        self.metrics.bytes_dropped.fetch_add((buf.len() - n) as u64, Ordering::Relaxed);
        // The guest always sees its bytes taken.
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// COM1 on the port bus.
#[derive(Debug)]
pub struct SerialDevice(pub Serial<IrqTrigger, NoEvents, BoundedLog>);

/// COM1's registers and received bytes in a snapshot (`vm-superio`'s state, which has no
/// serde of its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl Default for SerialState {
    fn default() -> Self {
        Self::from(UartState::default())
    }
}

impl From<UartState> for SerialState {
    fn from(s: UartState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl SerialDevice {
    pub fn new(irq: EventFd, log: BoundedLog) -> Self {
        Self(Serial::new(IrqTrigger(irq), log))
    }

    /// COM1 as a snapshot left it; a state `vm-superio` refuses (a receive buffer longer than
    /// its FIFO) is an error.
    pub fn from_state(irq: EventFd, log: BoundedLog, s: &SerialState) -> Result<Self, String> {
        let uart = UartState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        Serial::from_state(&uart, IrqTrigger(irq), NoEvents, log)
            .map(Self)
            .map_err(|e| format!("COM1's state: {e:?}"))
    }

    pub fn state(&self) -> SerialState {
        SerialState::from(self.0.state())
    }

    /// Raises COM1's interrupt if the restored state has one pending (the interrupt
    /// identification register's bit 0 clear): raised before the vCPUs were restored, it was
    /// lost.
    pub fn resume(&self) {
        if self.0.state().interrupt_identification & 1 == 0
            && let Err(e) = self.0.interrupt_evt().trigger()
        {
            warn!(error = %e, "serial: cannot signal the interrupt");
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.0.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), Some(&v)) = (u8::try_from(offset), data.first())
            && let Err(e) = self.0.write(off, v)
        {
            warn!(error = ?e, "serial write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded() {
        let dir = std::env::temp_dir().join(format!("atrium-vmm-serial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("serial.log");
        let log = BoundedLog::create(&path, 10, std::time::Instant::now()).expect("create");
        let metrics = log.metrics();
        let mut dev = SerialDevice::new(EventFd::new(0).expect("eventfd"), log);
        for b in b"hello, world, this is long" {
            dev.write(0, &[*b]);
        }
        assert_eq!(std::fs::read(&path).expect("read"), b"hello, wor");
        assert_eq!(metrics.bytes_written.load(Ordering::Relaxed), 10);
        assert_eq!(metrics.bytes_dropped.load(Ordering::Relaxed), 16);
        assert!(metrics.first_byte_ns.load(Ordering::Relaxed) > 0);
        // Offsets beyond a byte and empty accesses are ignored, not a panic.
        dev.write(1 << 40, &[1]);
        dev.write(0, &[]);
        dev.read(0, &mut []);
        std::fs::remove_dir_all(dir).ok();
    }
}
