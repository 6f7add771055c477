//! The clipboard both ways, on the X thread's connection: what the host pasted is served to
//! programs that ask for `CLIPBOARD` while the agent owns it (text as UTF-8, Latin-1 or TEXT,
//! an image as `image/png`, in one property); what another program copies is read (its forms
//! first, `TARGETS`: text when there is any, else a PNG image), in pieces when large (`INCR`),
//! and handed to the host unless both sides know it already.

use atrium_protocol::agent::{MAX_CLIPBOARD, MAX_CLIPBOARD_IMAGE};
use atrium_protocol::filetype::png_size;
use x11rb::connection::{Connection, RequestConnection as _};
use x11rb::protocol::xproto::{
    Atom, AtomEnum, ConnectionExt as _, EventMask, PropMode, SELECTION_NOTIFY_EVENT,
    SelectionNotifyEvent, SelectionRequestEvent,
};
use x11rb::wrapper::ConnectionExt as _;
use x11rb::{CURRENT_TIME, NONE};

use super::{Atoms, Desktop, XConn, XResult, err, lock};

/// What the clipboard holds, as it crosses: text (UTF-8) or an image (a PNG file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clip {
    Text(Vec<u8>),
    Png(Vec<u8>),
}

impl Clip {
    /// The most bytes of this kind that cross.
    fn limit(&self) -> usize {
        match self {
            Clip::Text(_) => MAX_CLIPBOARD,
            Clip::Png(_) => MAX_CLIPBOARD_IMAGE,
        }
    }

    fn len(&self) -> usize {
        match self {
            Clip::Text(b) | Clip::Png(b) => b.len(),
        }
    }
}

impl Desktop {
    /// Puts `clip` on the clipboard: the agent owns `CLIPBOARD` and serves it.
    pub fn paste(&self, clip: Clip) -> XResult<()> {
        if clip.len() > clip.limit() {
            return Err(format!("{} bytes are over the limit of {}", clip.len(), clip.limit()));
        }
        if let Clip::Png(png) = &clip {
            png_size(png)?;
        }
        *lock(&self.paste) = Some(clip.clone());
        *lock(&self.known) = Some(clip);
        let x = self.current()?;
        x.conn
            .set_selection_owner(x.window, x.atoms.clipboard, CURRENT_TIME)
            .map_err(err("taking the clipboard"))?;
        let owner = x
            .conn
            .get_selection_owner(x.atoms.clipboard)
            .map_err(err("checking the clipboard"))?
            .reply()
            .map_err(err("checking the clipboard"))?
            .owner;
        if owner != x.window {
            return Err("the X server did not give the agent the clipboard".into());
        }
        Ok(())
    }

    /// Forgets the clipboard (a session ended).
    pub fn clear_clipboard(&self) {
        *lock(&self.paste) = None;
        if let Ok(x) = self.current() {
            let _ = x.conn.set_selection_owner(NONE, x.atoms.clipboard, CURRENT_TIME);
            let _ = x.conn.flush();
        }
    }

    /// Whether `clip` differs from what both sides know; if so, it becomes known.
    fn take_if_new(&self, clip: &Clip) -> bool {
        let mut known = lock(&self.known);
        if known.as_ref() == Some(clip) {
            return false;
        }
        *known = Some(clip.clone());
        true
    }
}

/// What the event loop is doing with the clipboard another program owns (between asking for
/// it and its answer, nothing: the answer says what it is).
#[derive(Debug)]
pub(super) enum Reading {
    Idle,
    /// Receiving it in pieces (`INCR`); `over` once it has grown past the limit: the rest is
    /// still taken (so that the owner finishes) and thrown away.
    Pieces {
        target: Atom,
        data: Vec<u8>,
        over: bool,
    },
}

/// Latin-1 (`STRING`) to UTF-8.
fn latin1_to_utf8(b: &[u8]) -> Vec<u8> {
    b.iter().map(|&c| char::from(c)).collect::<String>().into_bytes()
}

/// UTF-8 to Latin-1 for old programs; characters beyond Latin-1 become `?`.
fn utf8_to_latin1(b: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(b).chars().map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?')).collect()
}

pub(super) fn ask(x: &XConn, target: Atom, time: u32) -> XResult<()> {
    x.conn
        .convert_selection(x.window, x.atoms.clipboard, target, x.atoms.receive, time)
        .map_err(err("asking for the clipboard"))?;
    x.conn.flush().map_err(err("flush"))
}

/// The longest property read at once, in 32-bit units (a little over the clipboard's larger
/// limit, so an oversized text or image is noticed).
fn read_units() -> u32 {
    u32::try_from(MAX_CLIPBOARD.max(MAX_CLIPBOARD_IMAGE) / 4 + 2).expect("small")
}

/// What to ask a program for, of the forms (`TARGETS`) it offers: text when it has any
/// (UTF-8, else Latin-1), else a PNG image, else UTF-8 text from one that offers only `TEXT`
/// (it converts; Latin-1 is asked next if it cannot); `None` when it has none of these (files,
/// rich text alone).
fn pick(a: &Atoms, offered: &[Atom]) -> Option<Atom> {
    [a.utf8, a.text_plain, AtomEnum::STRING.into(), a.png]
        .into_iter()
        .find(|t| offered.contains(t))
        .or_else(|| offered.contains(&a.text).then_some(a.utf8))
}

/// The most bytes of `target` that cross.
fn limit_of(x: &XConn, target: Atom) -> usize {
    if target == x.atoms.png { MAX_CLIPBOARD_IMAGE } else { MAX_CLIPBOARD }
}

fn too_big(x: &XConn, target: Atom) -> String {
    let what = if target == x.atoms.png { "an image" } else { "text" };
    format!("the clipboard holds {what} of more than {} bytes; not copied", limit_of(x, target))
}

pub(super) fn receive(
    desktop: &Desktop,
    x: &XConn,
    reading: &mut Reading,
    property: Atom,
    target: Atom,
    time: u32,
    copied: &dyn Fn(Clip),
) -> XResult<()> {
    // An answer ends whatever was being received before: it is the newest clipboard.
    *reading = Reading::Idle;
    if property == NONE {
        // The owner lists no forms (an old program): ask for UTF-8 text; it has no UTF-8: ask
        // for Latin-1 once.
        if target == x.atoms.targets {
            return ask(x, x.atoms.utf8, time);
        }
        if target == x.atoms.utf8 {
            return ask(x, AtomEnum::STRING.into(), time);
        }
        return Ok(());
    }
    let reply = x
        .conn
        .get_property(true, x.window, x.atoms.receive, AtomEnum::ANY, 0, read_units())
        .map_err(err("reading the clipboard"))?
        .reply()
        .map_err(err("reading the clipboard"))?;
    if target == x.atoms.targets {
        let offered: Vec<Atom> = reply.value32().map(Iterator::collect).unwrap_or_default();
        return match pick(&x.atoms, &offered) {
            Some(form) => ask(x, form, time),
            None => Ok(()),
        };
    }
    if reply.type_ == x.atoms.incr {
        // Deleting the property (done above) asks the owner for the first piece.
        *reading = Reading::Pieces { target, data: Vec::new(), over: false };
        return x.conn.flush().map_err(err("flush"));
    }
    if reply.bytes_after > 0 || reply.value.len() > limit_of(x, target) {
        return Err(too_big(x, target));
    }
    deliver(desktop, x, target, reply.value, copied);
    Ok(())
}

pub(super) fn piece(
    desktop: &Desktop,
    x: &XConn,
    reading: &mut Reading,
    copied: &dyn Fn(Clip),
) -> XResult<()> {
    let Reading::Pieces { target, data, over } = reading else { return Ok(()) };
    let reply = x
        .conn
        .get_property(true, x.window, x.atoms.receive, AtomEnum::ANY, 0, read_units())
        .map_err(err("reading the clipboard"))?
        .reply()
        .map_err(err("reading the clipboard"))?;
    x.conn.flush().map_err(err("flush"))?;
    if reply.value.is_empty() {
        let (target, data, over) = (*target, std::mem::take(data), *over);
        *reading = Reading::Idle;
        if over {
            return Err(too_big(x, target));
        }
        deliver(desktop, x, target, data, copied);
        return Ok(());
    }
    if !*over {
        data.extend_from_slice(&reply.value);
        if data.len() > limit_of(x, *target) {
            *data = Vec::new();
            *over = true;
        }
    }
    Ok(())
}

fn deliver(desktop: &Desktop, x: &XConn, target: Atom, data: Vec<u8>, copied: &dyn Fn(Clip)) {
    let clip = if target == x.atoms.png {
        if let Err(e) = png_size(&data) {
            eprintln!("atrium-guest-agent: the clipboard's image is refused: {e}");
            return;
        }
        Clip::Png(data)
    } else if target == Atom::from(AtomEnum::STRING) {
        Clip::Text(latin1_to_utf8(&data))
    } else {
        Clip::Text(String::from_utf8_lossy(&data).into_owned().into_bytes())
    };
    if clip.len() > clip.limit() {
        eprintln!("atrium-guest-agent: {}", too_big(x, target));
        return;
    }
    if desktop.take_if_new(&clip) {
        copied(clip);
    }
}

/// Answers a program that asks the agent (the clipboard's owner) for what the host pasted.
pub(super) fn serve(desktop: &Desktop, x: &XConn, e: &SelectionRequestEvent) -> XResult<()> {
    let clip = lock(&desktop.paste).clone();
    // Obsolete clients name no property: use the target.
    let property = if e.property == NONE { e.target } else { e.property };
    let a = x.atoms;
    let done = match clip {
        Some(_) if e.selection != a.clipboard || e.owner != x.window => false,
        Some(c) if e.target == a.targets => {
            let offered: &[Atom] = match c {
                Clip::Png(_) => &[a.targets, a.png],
                Clip::Text(_) => {
                    &[a.targets, a.utf8, a.text_plain, a.text, AtomEnum::STRING.into()]
                }
            };
            x.conn
                .change_property32(
                    PropMode::REPLACE,
                    e.requestor,
                    property,
                    AtomEnum::ATOM,
                    offered,
                )
                .map_err(err("answering TARGETS"))?;
            true
        }
        Some(Clip::Png(png)) if e.target == a.png => {
            // The request's header and the image must fit in one request.
            if png.len() + 64 > x.conn.maximum_request_bytes() {
                eprintln!(
                    "atrium-guest-agent: the X server takes no request as large as the image"
                );
                false
            } else {
                x.conn
                    .change_property8(PropMode::REPLACE, e.requestor, property, a.png, &png)
                    .map_err(err("answering with the image"))?;
                true
            }
        }
        Some(Clip::Text(t))
            if e.target == a.utf8 || e.target == a.text || e.target == a.text_plain =>
        {
            x.conn
                .change_property8(PropMode::REPLACE, e.requestor, property, a.utf8, &t)
                .map_err(err("answering with the text"))?;
            true
        }
        Some(Clip::Text(t)) if e.target == Atom::from(AtomEnum::STRING) => {
            let latin1 = utf8_to_latin1(&t);
            x.conn
                .change_property8(
                    PropMode::REPLACE,
                    e.requestor,
                    property,
                    AtomEnum::STRING,
                    &latin1,
                )
                .map_err(err("answering with the text"))?;
            true
        }
        _ => false,
    };
    let notify = SelectionNotifyEvent {
        response_type: SELECTION_NOTIFY_EVENT,
        sequence: 0,
        time: e.time,
        requestor: e.requestor,
        selection: e.selection,
        target: e.target,
        property: if done { property } else { NONE },
    };
    x.conn
        .send_event(false, e.requestor, EventMask::NO_EVENT, notify)
        .map_err(err("answering a clipboard request"))?;
    x.conn.flush().map_err(err("flush"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_taken_before_an_image_and_an_image_before_nothing() {
        let a = Atoms {
            clipboard: 101,
            targets: 102,
            utf8: 103,
            text: 104,
            text_plain: 105,
            png: 106,
            incr: 107,
            receive: 108,
        };
        let string = Atom::from(AtomEnum::STRING);
        assert_eq!(pick(&a, &[a.targets, a.png, a.utf8]), Some(a.utf8));
        assert_eq!(pick(&a, &[a.png, string]), Some(string));
        assert_eq!(pick(&a, &[a.text_plain, string]), Some(a.text_plain));
        assert_eq!(pick(&a, &[a.targets, a.png]), Some(a.png));
        assert_eq!(pick(&a, &[a.targets, a.text]), Some(a.utf8), "TEXT alone: UTF-8 asked");
        assert_eq!(pick(&a, &[a.targets, 999]), None);
        assert_eq!(pick(&a, &[]), None);
    }

    #[test]
    fn latin1_conversions() {
        assert_eq!(latin1_to_utf8(b"caf\xe9"), "café".as_bytes());
        assert_eq!(utf8_to_latin1("café €".as_bytes()), b"caf\xe9 ?");
        assert_eq!(utf8_to_latin1(b""), b"");
    }
}
