//! The display WebSocket protocol from a browser: every binary message a viewer sends is
//! decoded by `ClientMessage::decode`. Anything it accepts encodes back to the same bytes (one
//! meaning per message), a key's code maps to a scancode or to nothing, and a clipboard image
//! is checked as a PNG file (an answer, never a panic: `filetype::png_size`). The server's
//! messages (which the bench and tests decode) round-trip too.
#![no_main]

use atrium_protocol::display::{ClientMessage, ServerMessage};
use atrium_protocol::{filetype, keymap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ClientMessage::decode(data) {
        assert_eq!(msg.encode(), data, "{msg:?} has one wire form");
        if let ClientMessage::Key { code, .. } = &msg {
            let _ = (keymap::evdev_code(code), keymap::qnum(code));
        }
        if let ClientMessage::ClipboardImage { png } = &msg {
            let _ = filetype::png_size(png);
        }
    }
    if let Ok(msg) = ServerMessage::decode(data) {
        assert_eq!(ServerMessage::decode(&msg.encode()).as_ref(), Ok(&msg));
    }
});
