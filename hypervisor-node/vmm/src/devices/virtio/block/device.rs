//! virtio-blk over a host file: a read-only base image or a per-VM writable disk. Requests are
//! served synchronously on the event loop thread with bounded bounce buffers; every sector and
//! length is checked against the disk's capacity.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress};

use super::BlockMetrics;
use crate::devices::virtio::mmio::VirtioDevice;
use crate::devices::virtio::queue::DescriptorChain;
use crate::devices::virtio::{
    DeviceError, DeviceState, QueueContext, TYPE_BLOCK, VIRTIO_F_VERSION_1,
};

pub const SECTOR: u64 = 512;
const F_SIZE_MAX: u64 = 1 << 1;
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Largest segment and most segments per request that the device announces.
const SIZE_MAX: u32 = 128 * 1024;
const SEG_MAX: u32 = 126;
const CHUNK: usize = 64 * 1024;
const QUEUE_SIZES: [u16; 1] = [256];

#[derive(Debug)]
pub struct Block {
    file: File,
    read_only: bool,
    sectors: u64,
    id: [u8; 20],
    pub metrics: Arc<BlockMetrics>,
}

impl Block {
    pub fn open(path: &Path, read_only: bool, id: &str) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let len = file.metadata()?.len();
        let mut serial = [0u8; 20];
        let n = id.len().min(20);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self { file, read_only, sectors: len / SECTOR, id: serial, metrics: Arc::default() })
    }

    /// Serves one request; returns the number of bytes written into the chain (status
    /// included). `Err` only for requests too malformed to answer.
    fn handle(
        &mut self,
        ctx: &QueueContext<'_>,
        chain: &DescriptorChain,
    ) -> Result<u32, DeviceError> {
        let mem = ctx.mem;
        let descs = &chain.descs;
        let (Some(header), Some(status)) = (descs.first(), descs.last()) else {
            return Err(DeviceError::Malformed("empty request".into()));
        };
        if descs.len() < 2
            || header.writable
            || header.len < 16
            || !status.writable
            || status.len < 1
        {
            return Err(DeviceError::Malformed("request without a header or a status byte".into()));
        }
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, header.addr).map_err(|e| DeviceError::Malformed(e.to_string()))?;
        let kind = u32::from_le_bytes(raw[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
        let data = &descs[1..descs.len() - 1];
        let status_addr = GuestAddress(status.addr.0 + u64::from(status.len) - 1);
        let (code, written) = match kind {
            T_IN | T_OUT => {
                let writing = kind == T_OUT;
                if data.iter().any(|d| d.writable == writing) {
                    return Err(DeviceError::Malformed(
                        "data buffer in the wrong direction".into(),
                    ));
                }
                let total: u64 = data.iter().map(|d| u64::from(d.len)).sum();
                match self.transfer(ctx, data, sector, total, writing) {
                    Ok(()) => (S_OK, if writing { 0 } else { total }),
                    Err(code) => (code, 0),
                }
            }
            T_FLUSH => {
                self.metrics.flushes.fetch_add(1, Ordering::Relaxed);
                let ok = self.read_only || self.file.sync_data().is_ok();
                (if ok { S_OK } else { S_IOERR }, 0)
            }
            T_GET_ID => {
                let n = data.iter().find(|d| d.writable).map_or(0, |d| d.len.min(20));
                match data.iter().find(|d| d.writable) {
                    Some(d) => {
                        mem.write_slice(&self.id[..n as usize], d.addr)
                            .map_err(|e| DeviceError::Malformed(e.to_string()))?;
                        (S_OK, u64::from(n))
                    }
                    None => (S_IOERR, 0),
                }
            }
            _ => (S_UNSUPP, 0),
        };
        if code == S_IOERR {
            self.metrics.io_errors.fetch_add(1, Ordering::Relaxed);
        }
        mem.write_obj(code, status_addr).map_err(|e| DeviceError::Malformed(e.to_string()))?;
        Ok(u32::try_from(written + 1).unwrap_or(u32::MAX))
    }

    /// Moves `total` bytes between the disk at `sector` and the data descriptors.
    fn transfer(
        &mut self,
        ctx: &QueueContext<'_>,
        data: &[crate::devices::virtio::queue::Descriptor],
        sector: u64,
        total: u64,
        writing: bool,
    ) -> Result<(), u8> {
        if writing && self.read_only {
            return Err(S_IOERR);
        }
        if !total.is_multiple_of(SECTOR)
            || data.iter().any(|d| d.len > SIZE_MAX)
            || data.len() > SEG_MAX as usize
        {
            return Err(S_IOERR);
        }
        let end = sector.checked_add(total / SECTOR).ok_or(S_IOERR)?;
        if end > self.sectors {
            return Err(S_IOERR);
        }
        let mut offset = sector * SECTOR;
        let mut buf = vec![0u8; CHUNK];
        for d in data {
            let mut done = 0u64;
            while done < u64::from(d.len) {
                let n = usize::try_from((u64::from(d.len) - done).min(CHUNK as u64))
                    .map_err(|_| S_IOERR)?;
                let guest = GuestAddress(d.addr.0 + done);
                let chunk = &mut buf[..n];
                if writing {
                    ctx.mem.read_slice(chunk, guest).map_err(|_| S_IOERR)?;
                    self.file.write_all_at(chunk, offset).map_err(|_| S_IOERR)?;
                } else {
                    self.file.read_exact_at(chunk, offset).map_err(|_| S_IOERR)?;
                    ctx.mem.write_slice(chunk, guest).map_err(|_| S_IOERR)?;
                }
                done += n as u64;
                offset += n as u64;
            }
        }
        let (ops, bytes) = if writing {
            (&self.metrics.writes, &self.metrics.bytes_written)
        } else {
            (&self.metrics.reads, &self.metrics.bytes_read)
        };
        ops.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(total, Ordering::Relaxed);
        Ok(())
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | F_SIZE_MAX | F_SEG_MAX | F_FLUSH;
        if self.read_only {
            f |= F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // capacity (u64), size_max (u32), seg_max (u32).
        let mut cfg = [0u8; 16];
        cfg[0..8].copy_from_slice(&self.sectors.to_le_bytes());
        cfg[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        cfg[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        crate::devices::virtio::read_config_bytes(&cfg, offset, data);
    }

    fn process(
        &mut self,
        ctx: &mut QueueContext<'_>,
        queue: Option<u16>,
    ) -> Result<(), DeviceError> {
        if queue.is_some_and(|q| q != 0) {
            return Err(DeviceError::NoSuchQueue(queue.unwrap_or(0)));
        }
        while let Some(chain) = ctx.pop(0)? {
            let len = self.handle(ctx, &chain)?;
            ctx.add_used(0, chain.head, len)?;
        }
        Ok(())
    }

    fn reset(&mut self) {}

    fn save(&self) -> DeviceState {
        DeviceState::Block
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), String> {
        match state {
            DeviceState::Block => Ok(()),
            _ => Err("the snapshot has another device here, not a disk".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::queue::testing::*;
    use crate::devices::virtio::{Queue, QueueError};
    use crate::memory::GuestMemory;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("test memory")
    }

    fn disk(dir: &Path, name: &str, sectors: u64) -> std::path::PathBuf {
        let p = dir.join(name);
        let mut content = vec![0u8; usize::try_from(sectors * SECTOR).expect("small")];
        content[..11].copy_from_slice(b"base sector");
        std::fs::write(&p, content).expect("write disk");
        p
    }

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("atrium-vmm-blk-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("tmp");
        d
    }

    /// Posts header at 0x8000, data at 0x9000 (len), status at 0xa000; runs the device.
    fn request(
        dev: &mut Block,
        m: &GuestMemory,
        kind: u32,
        sector: u64,
        len: u32,
        data_flags: u16,
    ) -> Result<u8, DeviceError> {
        let mut d = TestDriver::new(m, 0x1000, 8);
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&hdr, GuestAddress(0x8000)).expect("mem");
        m.write_obj(0xffu8, GuestAddress(0xa000)).expect("mem");
        d.set_desc(m, 0, 0x8000, 16, NEXT, 1);
        d.set_desc(m, 1, 0x9000, len, NEXT | data_flags, 2);
        d.set_desc(m, 2, 0xa000, 1, WRITE, 0);
        d.push_head(m, 0);
        let mut queues = [d.queue.clone()];
        let mut ctx = QueueContext { mem: m, queues: &mut queues, used: false };
        dev.process(&mut ctx, Some(0))?;
        Ok(m.read_obj(GuestAddress(0xa000)).expect("mem"))
    }

    #[test]
    fn reads_and_writes_reach_the_file() {
        let dir = tmpdir("rw");
        let p = disk(&dir, "rw.img", 8);
        let m = mem();
        let mut dev = Block::open(&p, false, "disk").expect("open");
        assert_eq!(request(&mut dev, &m, T_IN, 0, 512, WRITE), Ok(S_OK));
        let mut b = [0u8; 11];
        m.read_slice(&mut b, GuestAddress(0x9000)).expect("mem");
        assert_eq!(&b, b"base sector");
        m.write_slice(b"new data", GuestAddress(0x9000)).expect("mem");
        assert_eq!(request(&mut dev, &m, T_OUT, 3, 512, 0), Ok(S_OK));
        let on_disk = std::fs::read(&p).expect("read");
        assert_eq!(&on_disk[3 * 512..3 * 512 + 8], b"new data");
        assert_eq!(request(&mut dev, &m, T_FLUSH, 0, 512, 0), Ok(S_OK));
        assert_eq!(request(&mut dev, &m, 99, 0, 512, 0), Ok(S_UNSUPP));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn writes_to_a_read_only_disk_fail_and_change_nothing() {
        let dir = tmpdir("ro");
        let p = disk(&dir, "ro.img", 8);
        let before = std::fs::read(&p).expect("read");
        let m = mem();
        let mut dev = Block::open(&p, true, "base").expect("open");
        assert_ne!(dev.features() & F_RO, 0);
        m.write_slice(b"evil", GuestAddress(0x9000)).expect("mem");
        assert_eq!(request(&mut dev, &m, T_OUT, 0, 512, 0), Ok(S_IOERR));
        assert_eq!(std::fs::read(&p).expect("read"), before);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn hostile_requests_are_refused() {
        let dir = tmpdir("bad");
        let p = disk(&dir, "bad.img", 8);
        let m = mem();
        let mut dev = Block::open(&p, false, "disk").expect("open");
        // Past the end, at the end, wrapping sector numbers, partial sectors: I/O errors.
        assert_eq!(request(&mut dev, &m, T_IN, 8, 512, WRITE), Ok(S_IOERR));
        assert_eq!(request(&mut dev, &m, T_IN, 7, 1024, WRITE), Ok(S_IOERR));
        assert_eq!(request(&mut dev, &m, T_IN, u64::MAX, 512, WRITE), Ok(S_IOERR));
        assert_eq!(request(&mut dev, &m, T_IN, 0, 100, WRITE), Ok(S_IOERR));
        // A segment over SIZE_MAX.
        assert_eq!(request(&mut dev, &m, T_IN, 0, SIZE_MAX + 512, WRITE), Ok(S_IOERR));
        // Data in the wrong direction and buffers outside memory stop the device.
        assert!(matches!(request(&mut dev, &m, T_IN, 0, 512, 0), Err(DeviceError::Malformed(_))));
        assert!(matches!(
            request(&mut dev, &m, T_IN, 0, u32::MAX, WRITE),
            Err(DeviceError::Queue(QueueError::OutOfMemory { .. }))
        ));
        // A request with no status descriptor.
        let mut d = TestDriver::new(&m, 0x1000, 8);
        d.set_desc(&m, 0, 0x8000, 16, 0, 0);
        d.push_head(&m, 0);
        let mut queues: [Queue; 1] = [d.queue.clone()];
        let mut ctx = QueueContext { mem: &m, queues: &mut queues, used: false };
        assert!(dev.process(&mut ctx, Some(0)).is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
