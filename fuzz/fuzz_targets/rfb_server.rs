//! A VNC server's byte stream, as the display proxy reads it: the handshake, then every
//! server message until the stream ends or is refused. Whatever the server sends, the proxy
//! answers with an error or a framebuffer, never a panic, a hang or unbounded memory.
#![no_main]

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use atrium_display::framebuffer::Framebuffer;
use atrium_display::source::FramebufferSource;
use atrium_display::source::rfb::{RfbSource, Stream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks what the proxy asks for: ZRLE (a TCP server) or raw (QEMU's
    // socket).
    let Some((&first, server_bytes)) = data.split_first() else { return };
    let (client, mut server) = UnixStream::pair().expect("socket pair");
    // Inputs stay under the socket's buffer (the fuzzer's -max_len), so all of the stream
    // is written before the proxy reads; then the server hangs up.
    server.write_all(server_bytes).expect("the server's bytes fit the socket buffer");
    server.shutdown(Shutdown::Write).expect("shutdown");
    let Ok(mut source) = RfbSource::handshake(Stream::from(client), first & 1 == 1) else {
        return;
    };
    let (w, h) = source.size();
    let mut fb = Framebuffer::new(w, h);
    // Each update is either decoded into the framebuffer or ends the session; the stream's
    // end ends it at the latest.
    while source.next_update(&mut fb).is_ok() {
        let (w, h) = source.size();
        assert_eq!((fb.width(), fb.height()), (w, h), "the framebuffer follows the screen");
    }
    drop(server);
});
