//! The shared-memory source against a small in-test VMM that follows
//! [`atrium_protocol::vmm_channel`]: a real memfd passed with `SCM_RIGHTS`, a scripted dirty
//! bitmap, and the input requests it receives.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread;

use super::*;

/// A framebuffer memfd mapped writable, as the VMM holds it.
struct GuestFb {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
}

impl GuestFb {
    /// A framebuffer sealed against shrinking, as the VMM's is.
    fn new(len: usize) -> Self {
        Self::with_seal(len, true)
    }

    fn with_seal(len: usize, sealed: bool) -> Self {
        // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
        let raw = unsafe {
            libc::memfd_create(c"fb".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        assert!(raw >= 0);
        // SAFETY: `raw` is a new descriptor that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: resizing our own memfd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), i64::try_from(len).unwrap()) }, 0);
        if sealed {
            // SAFETY: F_ADD_SEALS on our own memfd, which allows sealing.
            let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
            assert_eq!(r, 0);
        }
        // SAFETY: a new shared mapping of the memfd we just sized.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Self { fd, ptr: ptr.cast(), len }
    }

    fn put(&self, offset: usize, bytes: [u8; 4]) {
        assert!(offset + 4 <= self.len);
        // SAFETY: in bounds of our writable mapping (asserted).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset), 4) };
    }
}

impl Drop for GuestFb {
    fn drop(&mut self) {
        // SAFETY: unmapping the region we mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn send_with_fd(sock: &UnixStream, bytes: &[u8], fd: Option<&OwnedFd>) {
    let mut control = [0u64; 4];
    let mut iov = libc::iovec { iov_base: bytes.as_ptr().cast_mut().cast(), iov_len: bytes.len() };
    // SAFETY: plain C struct, filled below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure size computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: the control buffer has room for one descriptor (CMSG_SPACE(4) <= 32 bytes).
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd.as_raw_fd());
        }
    }
    // SAFETY: `msg` points at live buffers for the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    assert_eq!(usize::try_from(n).unwrap(), bytes.len());
}

const W: u32 = 64;
const H: u32 = 48;
const STRIDE: u32 = W * 4 + 64; // padded rows
const PAGE: u32 = 4096;

fn hello(format: u32, fb_size: u64) -> Vec<u8> {
    VmmEvent::Hello { width: W, height: H, stride: STRIDE, format, fb_size, page_size: PAGE }
        .encode()
}

fn read_request(s: &mut UnixStream) -> Option<VmmRequest> {
    let mut p = [0u8; 4];
    s.read_exact(&mut p).ok()?;
    let mut body = vec![0; frame_len(p).unwrap()];
    s.read_exact(&mut body).unwrap();
    Some(VmmRequest::decode(&body).unwrap())
}

#[test]
fn maps_the_framebuffer_follows_dirty_pages_and_sends_input() {
    let fb_size = usize::try_from(STRIDE * H).unwrap();
    let guest = GuestFb::new(fb_size);
    // Pixel (1, 0) red with a garbage X byte; pixel (0, 20) green.
    guest.put(4, [0, 0, 0xff, 0x7f]);
    guest.put(usize::try_from(20 * STRIDE).unwrap(), [0, 0xff, 0, 0]);
    let (client, mut server) = UnixStream::pair().unwrap();
    send_with_fd(
        &server,
        &hello(FORMAT_XRGB8888, u64::try_from(fb_size).unwrap()),
        Some(&guest.fd),
    );

    let (dirty_tx, dirty_rx) = mpsc::channel::<Vec<u8>>();
    let (req_tx, req_rx) = mpsc::channel::<VmmRequest>();
    let vmm = thread::spawn(move || {
        while let Some(req) = read_request(&mut server) {
            if req == VmmRequest::GetDirty {
                let pages = (STRIDE * H).div_ceil(PAGE);
                let bitmap =
                    dirty_rx
                        .try_recv()
                        .unwrap_or(vec![0; usize::try_from(pages.div_ceil(8)).unwrap()]);
                server.write_all(&VmmEvent::Dirty { pages, bitmap }.encode()).unwrap();
            } else {
                req_tx.send(req).unwrap();
            }
        }
    });

    let mut src = ShmSource::from_stream(client, "vm-1", Duration::from_millis(1)).unwrap();
    assert_eq!(src.size(), (64, 48));
    let mut fb = Framebuffer::new(64, 48);
    assert_eq!(src.next_update(&mut fb).unwrap(), vec![SourceEvent::Damage(fb.bounds())]);
    assert_eq!(fb.span(0, 0, 2), &[0, 0x00ff0000], "X byte dropped");
    assert_eq!(fb.span(0, 20, 1), &[0x0000ff00]);

    // The guest writes pixel (3, 30): byte 30 * 320 + 12 = 9612, page 2. Only rows in page 2
    // (bytes 8192..12288: rows 25..=38) are reported.
    guest.put(usize::try_from(30 * STRIDE + 12).unwrap(), [0xff, 0, 0, 0]);
    dirty_tx.send(vec![0b0000_0100]).unwrap();
    let ev = src.next_update(&mut fb).unwrap();
    assert_eq!(ev, vec![SourceEvent::Damage(Rect { x: 0, y: 25, w: 64, h: 14 })]);
    assert_eq!(fb.span(3, 30, 1), &[0x000000ff]);

    let input = src.input();
    input.send(InputEvent::Key { down: true, keysym: 0x61, evdev: Some(30) }).unwrap();
    input.send(InputEvent::Key { down: true, keysym: 0x61, evdev: None }).unwrap();
    input.send(InputEvent::Pointer { x: 5, y: 6, buttons: 0x1f, wheel_x: 2, wheel_y: 1 }).unwrap();
    assert_eq!(req_rx.recv().unwrap(), VmmRequest::Key { code: 30, down: true });
    assert_eq!(
        req_rx.recv().unwrap(),
        VmmRequest::Pointer { x: 5, y: 6, buttons: 7, wheel: -1 },
        "unmapped key dropped; back/forward dropped; wheel in evdev's direction"
    );

    let stopper = src.stopper();
    let t = thread::spawn(move || src.next_update(&mut fb).map(|_| ()));
    stopper.stop();
    assert!(matches!(t.join().unwrap(), Err(SourceError::Stopped)));
    vmm.join().unwrap();
}

#[test]
fn bad_hellos_are_refused() {
    let fb_size = usize::try_from(STRIDE * H).unwrap();
    let small = GuestFb::new(4096);
    let good = GuestFb::new(fb_size);
    let unsealed = GuestFb::with_seal(fb_size, false);
    let size = u64::try_from(fb_size).unwrap();
    let cases: Vec<(&str, Vec<u8>, Option<&OwnedFd>)> = vec![
        ("no memfd", hello(FORMAT_XRGB8888, size), None),
        ("memfd too small", hello(FORMAT_XRGB8888, size), Some(&small.fd)),
        ("memfd that can shrink", hello(FORMAT_XRGB8888, size), Some(&unsealed.fd)),
        ("other format", hello(0x1234, size), Some(&good.fd)),
        ("size below stride * height", hello(FORMAT_XRGB8888, 100), Some(&good.fd)),
        ("not a Hello", VmmEvent::Dirty { pages: 1, bitmap: vec![1] }.encode(), Some(&good.fd)),
    ];
    for (what, bytes, fd) in cases {
        let (client, server) = UnixStream::pair().unwrap();
        send_with_fd(&server, &bytes, fd);
        assert!(ShmSource::from_stream(client, "vm", Duration::from_millis(1)).is_err(), "{what}");
    }
    // A Hello cut short and never finished is given up at its deadline, not waited for.
    let (client, server) = UnixStream::pair().unwrap();
    let h = hello(FORMAT_XRGB8888, size);
    send_with_fd(&server, &h[..h.len() - 1], Some(&good.fd));
    let err = recv_frame_with_fd(&client, Instant::now() + Duration::from_millis(200))
        .expect_err("half a Hello");
    assert!(err.to_string().contains("in time"), "{err}");
    // A dirty bitmap of the wrong length ends the source.
    let (client, mut server) = UnixStream::pair().unwrap();
    send_with_fd(&server, &hello(FORMAT_XRGB8888, size), Some(&good.fd));
    let vmm = thread::spawn(move || {
        let _ = read_request(&mut server);
        server.write_all(&VmmEvent::Dirty { pages: 1, bitmap: vec![1] }.encode()).unwrap();
        server
    });
    let mut src = ShmSource::from_stream(client, "vm", Duration::from_millis(1)).unwrap();
    let mut fb = Framebuffer::new(64, 48);
    src.next_update(&mut fb).unwrap();
    assert!(matches!(src.next_update(&mut fb), Err(SourceError::Protocol(_))));
    drop(vmm.join().unwrap());
}
