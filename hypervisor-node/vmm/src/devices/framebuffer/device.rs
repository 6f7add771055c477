//! The linear framebuffer: XRGB8888 pixels in a memfd of their own, mapped into the guest as a
//! separate KVM memory slot with dirty-page logging. The display channel hands the memfd to the
//! display proxy and answers "what changed" from KVM's dirty log.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use vm_memory::mmap::MmapRegion;

use super::FramebufferMetrics;
use crate::config::FramebufferConfig;
use crate::memory::{MemoryError, create_memfd, map_memfd};

pub const PAGE_SIZE: u64 = 4096;

#[derive(Debug)]
pub struct Framebuffer {
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    /// Bytes of the slot: the pixels rounded up to 64 KiB (VESA counts in 64 KiB units).
    pub size: u64,
    pub guest_addr: u64,
    pub memfd: File,
    pub mapping: MmapRegion<()>,
    pub metrics: Arc<FramebufferMetrics>,
}

impl Framebuffer {
    pub fn create(config: FramebufferConfig, guest_addr: u64) -> Result<Self, MemoryError> {
        let stride = config.width * 4;
        let size = (u64::from(stride) * u64::from(config.height)).next_multiple_of(64 * 1024);
        let memfd = create_memfd(c"atrium-framebuffer", size)?;
        let mapping = map_memfd(&memfd, size)?;
        Ok(Self {
            width: config.width,
            height: config.height,
            stride,
            size,
            guest_addr,
            memfd,
            mapping,
            metrics: Arc::default(),
        })
    }

    pub fn pages(&self) -> u64 {
        self.size / PAGE_SIZE
    }

    /// KVM's dirty log (one bit per page, in `u64` words) as the display channel's byte bitmap:
    /// bit `i` LSB-first is page `i`.
    pub fn bitmap_bytes(&self, words: &[u64]) -> Vec<u8> {
        let pages = usize::try_from(self.pages()).expect("framebuffer pages fit in memory");
        let mut out: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.resize(pages.div_ceil(8), 0);
        let dirty: u64 = out.iter().map(|b| u64::from(b.count_ones())).sum();
        self.metrics.dirty_requests.fetch_add(1, Ordering::Relaxed);
        self.metrics.dirty_pages_reported.fetch_add(dirty, Ordering::Relaxed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_bitmap_layout() {
        let fb =
            Framebuffer::create(FramebufferConfig { width: 640, height: 480 }, 0).expect("memfd");
        assert_eq!(fb.stride, 2560);
        assert_eq!(fb.size, 1_245_184); // 1,228,800 rounded up to 64 KiB
        assert_eq!(fb.pages(), 304);
        let bm = fb.bitmap_bytes(&[0b1001, 0, 0, 0, 1 << 47]);
        assert_eq!(bm.len(), 38);
        assert_eq!(bm[0], 0b1001);
        // Bits past the last page are cut off.
        let bm = fb.bitmap_bytes(&[0, 0, 0, 0, u64::MAX]);
        assert_eq!(bm.len(), 38);
        assert_eq!(&bm[32..38], &[0xff; 6]);
    }
}
