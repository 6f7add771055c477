//! The builtin VMM's display channel ([`atrium_protocol::vmm_channel`]): the framebuffer is a
//! memfd the VMM passes with `SCM_RIGHTS`, mapped read-only here; "what changed" is the KVM
//! dirty-page bitmap, polled at a fixed interval; input goes back as evdev key codes and
//! absolute pointer events.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrium_protocol::display::Rect;
use atrium_protocol::vmm_channel::{FORMAT_XRGB8888, VmmEvent, VmmRequest, frame_len};

use crate::framebuffer::{Framebuffer, MAX_DIMENSION};
use crate::source::{
    ChannelInput, FramebufferSource, InputEvent, InputSink, SourceError, SourceEvent, Stopper,
};

/// How often the dirty bitmap is asked for.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
const INPUT_QUEUE: usize = 1024;
/// How long the VMM may take to send all of its Hello.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Out {
    GetDirty,
    Input(InputEvent),
}

/// A read-only shared mapping of the framebuffer memfd.
#[derive(Debug)]
struct Mapping {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only memory owned by this value; reading it from another thread
// is as sound as reading it from this one (see `copy_row`).
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(fd: &OwnedFd, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh shared read-only mapping of `len` bytes of a file we checked is at least
        // that long; no existing memory is affected. The result is checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr: ptr.cast::<u8>().cast_const(), len })
    }

    /// Copies `dst.len()` pixels starting at byte `offset` (the caller keeps it in bounds and
    /// 4-byte aligned), dropping the X byte.
    fn copy_row(&self, offset: usize, dst: &mut [u32]) {
        let bytes = dst.len() * 4;
        assert!(offset + bytes <= self.len && offset.is_multiple_of(4), "row inside the mapping");
        // SAFETY: the source range lies inside our live mapping (asserted above) and the
        // destination is a distinct, exclusively borrowed buffer of exactly `bytes` bytes. The
        // VMM's guest may write the shared pages concurrently; we copy raw bytes (no reference
        // to the shared memory is formed), and torn pixels are harmless: the next dirty poll
        // copies them again.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.add(offset),
                dst.as_mut_ptr().cast::<u8>(),
                bytes,
            );
        }
        for p in dst {
            *p = u32::from_le(*p) & 0x00ff_ffff;
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region `new` mapped; nothing borrows it past this point
        // (copies are into owned buffers).
        unsafe {
            libc::munmap(self.ptr.cast_mut().cast::<libc::c_void>(), self.len);
        }
    }
}

#[derive(Debug)]
struct ShmStopper {
    sock: Mutex<Option<UnixStream>>,
    stopped: AtomicBool,
}

impl Stopper for ShmStopper {
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(s) = self.sock.lock().expect("stopper lock").take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A connected display channel.
#[derive(Debug)]
pub struct ShmSource {
    name: String,
    width: u16,
    height: u16,
    stride: usize,
    fb_size: usize,
    page_size: usize,
    pages: usize,
    map: Mapping,
    sock: UnixStream,
    out: SyncSender<Out>,
    input: Arc<ChannelInput<Out>>,
    stopper: Arc<ShmStopper>,
    interval: Duration,
    next_poll: Instant,
    first: bool,
}

impl ShmSource {
    /// Connects to the VMM's display socket and maps the framebuffer it sends.
    pub fn connect(path: &Path, name: &str) -> Result<Self, SourceError> {
        let sock = UnixStream::connect(path)?;
        Self::from_stream(sock, name, POLL_INTERVAL)
    }

    /// Runs the channel's start over an already connected socket.
    pub fn from_stream(
        sock: UnixStream,
        name: &str,
        interval: Duration,
    ) -> Result<Self, SourceError> {
        let (body, fd) = recv_frame_with_fd(&sock, Instant::now() + HELLO_WITHIN)?;
        let VmmEvent::Hello { width, height, stride, format, fb_size, page_size } =
            VmmEvent::decode(&body)
                .map_err(|e| SourceError::protocol(format!("display channel: {e}")))?
        else {
            return Err(SourceError::protocol("display channel: the first message is not Hello"));
        };
        let fd =
            fd.ok_or_else(|| SourceError::protocol("display channel: Hello came without a memfd"))?;
        if format != FORMAT_XRGB8888 {
            return Err(SourceError::Unsupported(format!("framebuffer format 0x{format:08x}")));
        }
        let w = u16::try_from(width).ok().filter(|&w| w > 0 && w <= MAX_DIMENSION);
        let h = u16::try_from(height).ok().filter(|&h| h > 0 && h <= MAX_DIMENSION);
        let (Some(w), Some(h)) = (w, h) else {
            return Err(SourceError::protocol(format!(
                "framebuffer size {width}x{height} out of range"
            )));
        };
        let stride = usize::try_from(stride).map_err(|_| SourceError::protocol("stride"))?;
        let fb_size =
            usize::try_from(fb_size).map_err(|_| SourceError::protocol("framebuffer size"))?;
        let page_size =
            usize::try_from(page_size).map_err(|_| SourceError::protocol("page size"))?;
        if stride < usize::from(w) * 4 || !stride.is_multiple_of(4) {
            return Err(SourceError::protocol(format!("stride {stride} for width {w}")));
        }
        if fb_size < stride * usize::from(h) || fb_size > 1 << 30 {
            return Err(SourceError::protocol(format!("framebuffer size {fb_size} for {w}x{h}")));
        }
        if !page_size.is_power_of_two() || !(4096..=2 << 20).contains(&page_size) {
            return Err(SourceError::protocol(format!("page size {page_size}")));
        }
        check_memfd(&fd, fb_size)?;
        let map = Mapping::new(&fd, fb_size)?;
        drop(fd);
        sock.set_read_timeout(None)?;

        let (tx, rx) = sync_channel(INPUT_QUEUE);
        let writer = sock.try_clone()?;
        std::thread::Builder::new()
            .name("shm-writer".into())
            .spawn(move || writer_loop(writer, rx))?;
        let stop_handle = sock.try_clone()?;
        Ok(Self {
            name: name.to_owned(),
            width: w,
            height: h,
            stride,
            fb_size,
            page_size,
            pages: fb_size.div_ceil(page_size),
            map,
            sock,
            input: Arc::new(ChannelInput::new(tx.clone(), Out::Input)),
            out: tx,
            stopper: Arc::new(ShmStopper {
                sock: Mutex::new(Some(stop_handle)),
                stopped: AtomicBool::new(false),
            }),
            interval,
            next_poll: Instant::now(),
            first: true,
        })
    }

    fn stopped_or(&self, e: SourceError) -> SourceError {
        if self.stopper.stopped.load(Ordering::SeqCst) { SourceError::Stopped } else { e }
    }

    fn copy_rows(&self, fb: &mut Framebuffer, y0: u16, y1: u16) {
        for y in y0..y1 {
            let offset = usize::from(y) * self.stride;
            self.map.copy_row(offset, fb.span_mut(0, y, self.width));
        }
    }

    /// Asks for the dirty bitmap and waits for it.
    fn poll_dirty(&mut self) -> Result<Vec<u8>, SourceError> {
        self.out
            .send(Out::GetDirty)
            .map_err(|_| SourceError::protocol("the display channel writer stopped"))?;
        loop {
            let body = read_frame(&mut self.sock)?;
            match VmmEvent::decode(&body)
                .map_err(|e| SourceError::protocol(format!("display channel: {e}")))?
            {
                VmmEvent::Dirty { pages, bitmap } => {
                    if usize::try_from(pages).ok() != Some(self.pages) {
                        return Err(SourceError::protocol(format!(
                            "dirty bitmap of {pages} pages for a {}-page framebuffer",
                            self.pages
                        )));
                    }
                    return Ok(bitmap);
                }
                VmmEvent::InputRefused { reason } => {
                    tracing::debug!(%reason, "the VMM refused an input event");
                }
                VmmEvent::Hello { .. } => {
                    return Err(SourceError::protocol("display channel: a second Hello"));
                }
            }
        }
    }

    /// Row bands touched by the set bits of `bitmap`.
    fn dirty_bands(&self, bitmap: &[u8]) -> Vec<(u16, u16)> {
        let mut bands: Vec<(u16, u16)> = Vec::new();
        for page in 0..self.pages {
            if bitmap[page / 8] & (1 << (page % 8)) == 0 {
                continue;
            }
            let start = page * self.page_size;
            let end = ((page + 1) * self.page_size).min(self.fb_size);
            let y0 = start / self.stride;
            let y1 = ((end - 1) / self.stride + 1).min(usize::from(self.height));
            if y0 >= y1 {
                continue;
            }
            let (y0, y1) = (
                u16::try_from(y0).expect("below height"),
                u16::try_from(y1).expect("at most height"),
            );
            match bands.last_mut() {
                Some(last) if last.1 >= y0 => last.1 = last.1.max(y1),
                _ => bands.push((y0, y1)),
            }
        }
        bands
    }
}

impl FramebufferSource for ShmSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    fn input(&self) -> Arc<dyn InputSink> {
        Arc::clone(&self.input) as Arc<dyn InputSink>
    }

    fn stopper(&self) -> Arc<dyn Stopper> {
        Arc::clone(&self.stopper) as Arc<dyn Stopper>
    }

    fn next_update(&mut self, fb: &mut Framebuffer) -> Result<Vec<SourceEvent>, SourceError> {
        if fb.width() != self.width || fb.height() != self.height {
            fb.resize(self.width, self.height);
        }
        if self.first {
            self.first = false;
            self.copy_rows(fb, 0, self.height);
            return Ok(vec![SourceEvent::Damage(fb.bounds())]);
        }
        let quiet_until = Instant::now() + super::QUIET_RETURN;
        loop {
            if self.stopper.stopped.load(Ordering::SeqCst) {
                return Err(SourceError::Stopped);
            }
            let now = Instant::now();
            if now >= quiet_until {
                return Ok(Vec::new());
            }
            if self.next_poll > now {
                std::thread::sleep(self.next_poll - now);
            }
            self.next_poll = Instant::now() + self.interval;
            let bitmap = self.poll_dirty().map_err(|e| self.stopped_or(e))?;
            let bands = self.dirty_bands(&bitmap);
            if bands.is_empty() {
                continue;
            }
            let mut events = Vec::with_capacity(bands.len());
            for (y0, y1) in bands {
                self.copy_rows(fb, y0, y1);
                events.push(SourceEvent::Damage(Rect { x: 0, y: y0, w: self.width, h: y1 - y0 }));
            }
            return Ok(events);
        }
    }
}

impl Drop for ShmSource {
    fn drop(&mut self) {
        self.stopper.stop();
    }
}

/// Refuses a memfd smaller than the framebuffer (reading past its end would fault), and warns
/// when it is not sealed against shrinking.
fn check_memfd(fd: &OwnedFd, fb_size: usize) -> Result<(), SourceError> {
    // SAFETY: `st` is a plain C struct that fstat fills; the fd is valid for the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a valid descriptor writes only into `st`.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    let size = usize::try_from(st.st_size).unwrap_or(0);
    if size < fb_size {
        return Err(SourceError::protocol(format!(
            "the framebuffer memfd has {size} bytes, fewer than the {fb_size} announced"
        )));
    }
    // SAFETY: F_GET_SEALS takes no argument and only reads the descriptor's seals.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    // Unsealed, the VMM could shrink it under the mapping, and the next read of a row would
    // kill the whole proxy with SIGBUS.
    if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
        return Err(SourceError::protocol("the framebuffer memfd is not sealed against shrinking"));
    }
    Ok(())
}

fn read_frame(sock: &mut UnixStream) -> Result<Vec<u8>, SourceError> {
    let mut prefix = [0u8; 4];
    sock.read_exact(&mut prefix)?;
    let n =
        frame_len(prefix).map_err(|e| SourceError::protocol(format!("display channel: {e}")))?;
    let mut body = vec![0; n];
    sock.read_exact(&mut body)?;
    Ok(body)
}

/// Reads one whole frame by `deadline` (however its bytes trickle in), keeping the first file
/// descriptor passed with any of its bytes.
fn recv_frame_with_fd(
    sock: &UnixStream,
    deadline: Instant,
) -> Result<(Vec<u8>, Option<OwnedFd>), SourceError> {
    let late = || SourceError::protocol("display channel: Hello did not arrive in time");
    let recv_by = |buf: &mut [u8]| -> Result<(usize, Option<OwnedFd>), SourceError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late());
        }
        sock.set_read_timeout(Some(left))?;
        recv_with_fd(sock, buf).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => late(),
            _ => e.into(),
        })
    };
    let mut fd = None;
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let (n, f) = recv_by(&mut prefix[got..])?;
        if n == 0 {
            return Err(SourceError::protocol("display channel closed before Hello"));
        }
        fd = fd.or(f);
        got += n;
    }
    let len =
        frame_len(prefix).map_err(|e| SourceError::protocol(format!("display channel: {e}")))?;
    let mut body = vec![0; len];
    let mut got = 0;
    while got < len {
        let (n, f) = recv_by(&mut body[got..])?;
        if n == 0 {
            return Err(SourceError::protocol("display channel closed inside Hello"));
        }
        fd = fd.or(f);
        got += n;
    }
    Ok((body, fd))
}

/// `recvmsg` with room for file descriptors; returns the bytes read and the first descriptor
/// received (others are closed).
fn recv_with_fd(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    // Room for a few descriptors, aligned for cmsghdr.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is a plain C struct; all-zero is a valid empty value that we fill below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` points at `iov` (our writable buffer) and `control`, both alive for the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let mut first = None;
    // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR walk the control buffer the kernel filled, bounded by
    // msg_controllen; each SCM_RIGHTS payload holds whole `c_int` descriptors now owned by us.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header)
                    / std::mem::size_of::<libc::c_int>();
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    let owned = OwnedFd::from_raw_fd(raw);
                    if first.is_none() {
                        first = Some(owned);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n, first))
}

fn writer_loop(mut w: UnixStream, rx: Receiver<Out>) {
    while let Ok(msg) = rx.recv() {
        let req = match msg {
            Out::GetDirty => VmmRequest::GetDirty,
            Out::Input(InputEvent::Key { down, evdev: Some(code), .. }) => {
                VmmRequest::Key { code, down }
            }
            Out::Input(InputEvent::Key { evdev: None, .. }) => continue,
            Out::Input(InputEvent::Pointer { x, y, buttons, wheel_y, .. }) => VmmRequest::Pointer {
                x: u32::from(x),
                y: u32::from(y),
                buttons: buttons & 0x07,
                // evdev's REL_WHEEL is positive away from the user (up); ours is positive down.
                wheel: wheel_y.saturating_neg(),
            },
        };
        if w.write_all(&req.encode()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
