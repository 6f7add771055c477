//! A minimal RFB (VNC) client for tests: connects to a QEMU VNC socket, asks for QEMU's
//! extended key event (exact PC scancodes, independent of the guest's layout) and types text
//! on a US keyboard. Enough to drive a guest's console; no framebuffer decoding (screens are
//! read with the node's screenshot API).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// QEMU's extended key event pseudo-encoding.
const ENCODING_QEMU_EXT_KEY: i32 = -258;
const KEYSYM_SHIFT_L: u32 = 0xffe1;
const KEYSYM_RETURN: u32 = 0xff0d;
const KEYSYM_ALTGR: u32 = 0xfe03;

#[derive(Debug)]
pub struct RfbClient {
    stream: UnixStream,
    pub width: u16,
    pub height: u16,
    pub name: String,
    ext_keys: bool,
    /// Pause between key events: a guest under TCG drains its PS/2 queue slowly.
    pub key_delay: Duration,
}

/// The DOM `code` and shift state of a character on a US keyboard.
pub fn us_key(c: char) -> Option<(String, bool)> {
    let plain = |code: &str| Some((code.to_owned(), false));
    let shifted = |code: &str| Some((code.to_owned(), true));
    match c {
        'a'..='z' => Some((format!("Key{}", c.to_ascii_uppercase()), false)),
        'A'..='Z' => Some((format!("Key{c}"), true)),
        '0'..='9' => Some((format!("Digit{c}"), false)),
        ' ' => plain("Space"),
        '-' => plain("Minus"),
        '_' => shifted("Minus"),
        '=' => plain("Equal"),
        '+' => shifted("Equal"),
        '.' => plain("Period"),
        '>' => shifted("Period"),
        ',' => plain("Comma"),
        '<' => shifted("Comma"),
        '/' => plain("Slash"),
        '?' => shifted("Slash"),
        ';' => plain("Semicolon"),
        ':' => shifted("Semicolon"),
        '\'' => plain("Quote"),
        '"' => shifted("Quote"),
        '\\' => plain("Backslash"),
        '|' => shifted("Backslash"),
        '[' => plain("BracketLeft"),
        ']' => plain("BracketRight"),
        '~' => shifted("Backquote"),
        '!' => shifted("Digit1"),
        '@' => shifted("Digit2"),
        '#' => shifted("Digit3"),
        '$' => shifted("Digit4"),
        '%' => shifted("Digit5"),
        '&' => shifted("Digit7"),
        '*' => shifted("Digit8"),
        '(' => shifted("Digit9"),
        ')' => shifted("Digit0"),
        '\n' => plain("Enter"),
        _ => None,
    }
}

/// The DOM `code`, shift and AltGr that type `c` on a German (`de`) keyboard, for what tests
/// type on one: letters (`y` and `z` are swapped against US), digits, space, Enter and
/// `-|$().,`.
pub fn de_key(c: char) -> Option<(String, bool, bool)> {
    let key = |code: &str, shift: bool, altgr: bool| Some((code.to_owned(), shift, altgr));
    match c {
        'y' => key("KeyZ", false, false),
        'Y' => key("KeyZ", true, false),
        'z' => key("KeyY", false, false),
        'Z' => key("KeyY", true, false),
        'a'..='z' | 'A'..='Z' | '0'..='9' | ' ' | '\n' | '.' | ',' => {
            us_key(c).map(|(code, shift)| (code, shift, false))
        }
        '-' => key("Slash", false, false),
        '|' => key("IntlBackslash", false, true),
        '$' => key("Digit4", true, false),
        '(' => key("Digit8", true, false),
        ')' => key("Digit9", true, false),
        '"' => key("Digit2", true, false),
        '/' => key("Digit7", true, false),
        '<' => key("IntlBackslash", false, false),
        '>' => key("IntlBackslash", true, false),
        _ => None,
    }
}

impl RfbClient {
    /// Connects, negotiates RFB 3.8 with no authentication, and shares the desktop.
    pub async fn connect(path: &Path) -> anyhow::Result<Self> {
        let mut stream = UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting to {}", path.display()))?;
        let mut version = [0u8; 12];
        stream.read_exact(&mut version).await.context("reading the RFB version")?;
        if !version.starts_with(b"RFB 003.") {
            bail!("not an RFB server: {:?}", String::from_utf8_lossy(&version));
        }
        stream.write_all(b"RFB 003.008\n").await?;
        let n = stream.read_u8().await?;
        if n == 0 {
            let len = stream.read_u32().await?;
            let mut reason = vec![0u8; usize::try_from(len.min(4096))?];
            stream.read_exact(&mut reason).await?;
            bail!("the server refused: {}", String::from_utf8_lossy(&reason));
        }
        let mut types = vec![0u8; usize::from(n)];
        stream.read_exact(&mut types).await?;
        if !types.contains(&1) {
            bail!("the server wants authentication ({types:?}); Atrium's VNC sockets have none");
        }
        stream.write_u8(1).await?;
        let result = stream.read_u32().await?;
        if result != 0 {
            bail!("security handshake failed ({result})");
        }
        stream.write_u8(1).await?; // shared
        let width = stream.read_u16().await?;
        let height = stream.read_u16().await?;
        let mut pixel_format = [0u8; 16];
        stream.read_exact(&mut pixel_format).await?;
        let name_len = stream.read_u32().await?;
        let mut name = vec![0u8; usize::try_from(name_len.min(4096))?];
        stream.read_exact(&mut name).await?;
        Ok(Self {
            stream,
            width,
            height,
            name: String::from_utf8_lossy(&name).into_owned(),
            ext_keys: false,
            key_delay: Duration::from_millis(30),
        })
    }

    /// Asks for QEMU's extended key event; true when the server acknowledged it.
    pub async fn enable_qemu_ext_keys(&mut self) -> anyhow::Result<bool> {
        // SetEncodings: raw, and the pseudo-encoding.
        let mut msg = vec![2u8, 0];
        msg.extend_from_slice(&2u16.to_be_bytes());
        msg.extend_from_slice(&0i32.to_be_bytes());
        msg.extend_from_slice(&ENCODING_QEMU_EXT_KEY.to_be_bytes());
        self.stream.write_all(&msg).await?;
        // QEMU answers with a framebuffer update holding one pseudo-rectangle of that encoding.
        let ack = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let ty = self.stream.read_u8().await?;
                if ty != 0 {
                    bail!("unexpected server message {ty} before any update was requested");
                }
                let _pad = self.stream.read_u8().await?;
                let rects = self.stream.read_u16().await?;
                if rects == 0 {
                    continue;
                }
                // Nothing was requested, so the first rectangle must be the acknowledgement
                // (a rectangle with pixels would need decoding).
                let mut r = [0u8; 12];
                self.stream.read_exact(&mut r).await?;
                let enc = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
                if enc == ENCODING_QEMU_EXT_KEY && rects == 1 {
                    return Ok(true);
                }
                bail!("unexpected update ({rects} rectangles, encoding {enc}) before any was requested");
            }
        })
        .await;
        self.ext_keys = matches!(ack, Ok(Ok(true)));
        Ok(self.ext_keys)
    }

    /// One key: a QEMU extended key event (scancode and keysym) when enabled, else a keysym.
    pub async fn key(&mut self, dom_code: &str, keysym: u32, down: bool) -> anyhow::Result<()> {
        let mut msg = Vec::with_capacity(12);
        if self.ext_keys {
            let qnum = atrium_protocol::keymap::qnum(dom_code)
                .with_context(|| format!("no scancode for {dom_code}"))?;
            msg.extend_from_slice(&[255, 0]);
            msg.extend_from_slice(&u16::from(down).to_be_bytes());
            msg.extend_from_slice(&keysym.to_be_bytes());
            msg.extend_from_slice(&u32::from(qnum).to_be_bytes());
        } else {
            msg.extend_from_slice(&[4, u8::from(down), 0, 0]);
            msg.extend_from_slice(&keysym.to_be_bytes());
        }
        self.stream.write_all(&msg).await?;
        tokio::time::sleep(self.key_delay).await;
        Ok(())
    }

    /// Types `text` as the keys of a German keyboard ([`de_key`]), for a guest set to that
    /// layout.
    pub async fn type_text_de(&mut self, text: &str) -> anyhow::Result<()> {
        for c in text.chars() {
            let (code, shift, altgr) =
                de_key(c).with_context(|| format!("cannot type {c:?} on a German keyboard"))?;
            let keysym = if c == '\n' { KEYSYM_RETURN } else { u32::from(c) };
            if shift {
                self.key("ShiftLeft", KEYSYM_SHIFT_L, true).await?;
            }
            if altgr {
                self.key("AltRight", KEYSYM_ALTGR, true).await?;
            }
            self.key(&code, keysym, true).await?;
            self.key(&code, keysym, false).await?;
            if altgr {
                self.key("AltRight", KEYSYM_ALTGR, false).await?;
            }
            if shift {
                self.key("ShiftLeft", KEYSYM_SHIFT_L, false).await?;
            }
        }
        Ok(())
    }

    /// Types `text` (`\n` is Enter) on a US layout.
    pub async fn type_text(&mut self, text: &str) -> anyhow::Result<()> {
        for c in text.chars() {
            let (code, shift) = us_key(c).with_context(|| format!("cannot type {c:?}"))?;
            let keysym = if c == '\n' { KEYSYM_RETURN } else { u32::from(c) };
            if shift {
                self.key("ShiftLeft", KEYSYM_SHIFT_L, true).await?;
            }
            self.key(&code, keysym, true).await?;
            self.key(&code, keysym, false).await?;
            if shift {
                self.key("ShiftLeft", KEYSYM_SHIFT_L, false).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn us_layout() {
        assert_eq!(us_key('a'), Some(("KeyA".into(), false)));
        assert_eq!(us_key('Q'), Some(("KeyQ".into(), true)));
        assert_eq!(us_key('|'), Some(("Backslash".into(), true)));
        assert_eq!(us_key('\n'), Some(("Enter".into(), false)));
        assert_eq!(us_key('é'), None);
        for c in "echo atrium-0123456789abcdef | tee clipboard.txt <>\n".chars() {
            let (code, _) = us_key(c).expect("typable");
            assert!(atrium_protocol::keymap::qnum(&code).is_some(), "{code}");
        }
        assert_eq!(de_key('z'), Some(("KeyY".into(), false, false)));
        assert_eq!(de_key('|'), Some(("IntlBackslash".into(), false, true)));
        assert_eq!(de_key('~'), None);
        for c in "echo zy $(ls) | xclip -selection clipboard\n".chars() {
            let (code, _, _) = de_key(c).expect("typable");
            assert!(atrium_protocol::keymap::qnum(&code).is_some(), "{code}");
        }
    }
}
