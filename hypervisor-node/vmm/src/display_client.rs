//! The client side of the display channel's handshake, for the node (screenshots) and tests:
//! connect, and take `Hello` with the framebuffer memfd that comes with it (`SCM_RIGHTS`).

use std::fs::File;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;

use atrium_protocol::vmm_channel::{VmmEvent, frame_len};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// What `Hello` says about the framebuffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramebufferInfo {
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub format: u32,
    pub fb_size: u64,
    pub page_size: u32,
}

/// Connects to a display channel; returns the stream, the geometry and the framebuffer memfd.
pub fn connect(path: &Path) -> io::Result<(UnixStream, FramebufferInfo, File)> {
    let stream = UnixStream::connect(path)?;
    let (info, fb) = read_hello(&stream)?;
    Ok((stream, info, fb))
}

/// Reads the `Hello` frame and its file descriptor.
pub fn read_hello(stream: &UnixStream) -> io::Result<(FramebufferInfo, File)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let mut buf = [0u8; 64];
    let (n, fd) =
        stream.recv_with_fd(&mut buf[..]).map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let fb = fd.ok_or_else(|| bad("Hello came without the framebuffer fd"))?;
    let prefix: [u8; 4] =
        buf.get(..4).and_then(|b| b.try_into().ok()).ok_or_else(|| bad("short Hello"))?;
    let len = frame_len(prefix).map_err(|e| bad(&e.to_string()))?;
    if n != 4 + len {
        return Err(bad("Hello is not one whole frame"));
    }
    match VmmEvent::decode(&buf[4..n]).map_err(|e| bad(&e.to_string()))? {
        VmmEvent::Hello { width, height, stride, format, fb_size, page_size } => {
            Ok((FramebufferInfo { width, height, stride, format, fb_size, page_size }, fb))
        }
        _ => Err(bad("the first message is not Hello")),
    }
}
