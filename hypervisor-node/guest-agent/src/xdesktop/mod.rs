//! The desktop image's X server, as the agent sees it: the "waiting for sign-in" screen, the
//! clipboard (the X `CLIPBOARD` selection, text or a PNG image) both ways, and whether a
//! session's panel is drawn.
//!
//! One thread owns the event loop ([`run`]): it (re)connects to X with the root's cookie, draws
//! the sign-in screen when X exposes it, and hands the clipboard's events to [`selection`]
//! (serving what the host pasted, reading what another program copies). Other threads use the
//! same connection for their own requests (show or hide the sign-in screen, paste, look for the
//! panel, change the screen's size through [`crate::xscreen`]). The loop follows the screen's
//! size (the root window's) whoever changed it, and says so.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use x11rb::connection::{Connection, RequestConnection as _};
use x11rb::protocol::Event;
use x11rb::protocol::xfixes::{ConnectionExt as _, SelectionEventMask};
use x11rb::protocol::xproto::{
    Atom, ChangeWindowAttributesAux, ClientMessageEvent, ConfigureWindowAux, ConnectionExt as _,
    CreateGCAux, CreateWindowAux, EventMask, Gcontext, ImageFormat, MapState, Property, StackMode,
    Window, WindowClass,
};
use x11rb::rust_connection::{DefaultStream, RustConnection};
use x11rb::{COPY_DEPTH_FROM_PARENT, NONE};

use crate::xauth;

mod selection;

pub use selection::Clip;
use selection::{Reading, ask, piece, receive, serve};

/// The sign-in screen's colours and text.
const GREETER_BACKGROUND: u32 = 0x0024_313f;
const GREETER_TEXT: u32 = 0x00e8_eef4;
const GREETER_LINES: &[&str] = &["Atrium", "", "Waiting for sign-in..."];

type XResult<T> = Result<T, String>;

fn err<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Atoms the agent uses.
#[derive(Debug, Clone, Copy)]
struct Atoms {
    clipboard: Atom,
    targets: Atom,
    utf8: Atom,
    text: Atom,
    text_plain: Atom,
    png: Atom,
    incr: Atom,
    /// The property on the agent's window that receives the clipboard.
    receive: Atom,
}

/// One connection to X and what the agent made on it.
#[derive(Debug)]
pub struct XConn {
    conn: RustConnection,
    root: Window,
    /// The screen's size, width in the high 16 bits (it changes under the connection).
    size: AtomicU32,
    /// An unmapped window that owns and receives selections.
    window: Window,
    greeter: Window,
    gc: Gcontext,
    char_width: i16,
    line_height: i16,
    ascent: i16,
    atoms: Atoms,
}

/// The state the X thread shares with the rest of the agent.
#[derive(Debug)]
pub struct Desktop {
    display: String,
    xauthority: PathBuf,
    x: Mutex<Option<Arc<XConn>>>,
    /// What the host pasted: served to programs that ask for the clipboard while the agent
    /// owns it.
    paste: Mutex<Option<Clip>>,
    /// What both sides know (last pasted in or copied out), so nothing is echoed back.
    known: Mutex<Option<Clip>>,
    /// The sign-in screen has been drawn once (the desktop is ready).
    pub greeter_drawn: AtomicBool,
    /// The desktop's panel has been mapped once (its shell runs: the desktop is ready).
    pub panel_up: AtomicBool,
    /// Whether the sign-in screen should show (no session).
    greeter_wanted: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Desktop {
    pub fn new(display: String, xauthority: PathBuf) -> Self {
        Self {
            display,
            xauthority,
            x: Mutex::new(None),
            paste: Mutex::new(None),
            known: Mutex::new(None),
            greeter_drawn: AtomicBool::new(false),
            panel_up: AtomicBool::new(false),
            greeter_wanted: AtomicBool::new(true),
        }
    }

    pub fn display(&self) -> &str {
        &self.display
    }

    pub fn xauthority(&self) -> &std::path::Path {
        &self.xauthority
    }

    /// Gives the screen this size; returns its size afterwards.
    pub fn set_screen_size(&self, width: u16, height: u16) -> XResult<(u16, u16)> {
        let x = self.current()?;
        crate::xscreen::set_size(&x.conn, x.root, (width, height))
    }

    fn current(&self) -> XResult<Arc<XConn>> {
        lock(&self.x).clone().ok_or_else(|| "the X server is not connected".to_owned())
    }

    /// Asks the window manager to do something: a client message to the root window, as its
    /// own command line would send (`jwm -restart` sends `_JWM_RESTART`).
    pub fn tell_window_manager(&self, message: &str) -> XResult<()> {
        let x = self.current()?;
        let atom = x.conn.intern_atom(false, message.as_bytes()).map_err(err("atom"))?;
        let atom = atom.reply().map_err(err("atom"))?.atom;
        let event = ClientMessageEvent::new(32, x.root, atom, [0u32; 5]);
        x.conn
            .send_event(false, x.root, EventMask::SUBSTRUCTURE_REDIRECT, event)
            .map_err(err("telling the window manager"))?;
        x.conn.flush().map_err(err("flush"))
    }

    /// Whether the agent is connected to X.
    pub fn connected(&self) -> bool {
        lock(&self.x).is_some()
    }

    /// Shows (no session) or hides (a session starts) the sign-in screen.
    pub fn show_greeter(&self, show: bool) -> XResult<()> {
        self.greeter_wanted.store(show, Ordering::SeqCst);
        let x = self.current()?;
        if show {
            let above = ConfigureWindowAux::new().stack_mode(StackMode::ABOVE);
            x.conn.configure_window(x.greeter, &above).map_err(err("raising"))?;
            x.conn.map_window(x.greeter).map_err(err("mapping the sign-in screen"))?;
        } else {
            x.conn.unmap_window(x.greeter).map_err(err("unmapping the sign-in screen"))?;
        }
        // A round trip: the server has done it when this returns.
        x.conn.get_input_focus().map_err(err("sync"))?.reply().map_err(err("sync"))?;
        Ok(())
    }

    /// The panel, when one is mapped, and a picture of it: a top-level window along the top or
    /// bottom edge, nearly as wide as the screen and at most 80 pixels high. `None` without one.
    pub fn panel_pixels(&self) -> XResult<Option<(Window, Vec<u8>)>> {
        let x = self.current()?;
        let tree = x.conn.query_tree(x.root).map_err(err("query_tree"))?;
        let tree = tree.reply().map_err(err("query_tree"))?;
        for &w in tree.children.iter().rev() {
            if w == x.greeter || w == x.window {
                continue;
            }
            let Ok(attrs) = x.conn.get_window_attributes(w).map_err(err("attributes")) else {
                continue;
            };
            // The window may be gone by now: skip it.
            let Ok(attrs) = attrs.reply() else { continue };
            if attrs.map_state != MapState::VIEWABLE {
                continue;
            }
            let Ok(geo) = x.conn.get_geometry(w).map_err(err("geometry")) else { continue };
            let Ok(geo) = geo.reply() else { continue };
            let (width, height) = x.size();
            let wide = u32::from(geo.width) * 10 >= u32::from(width) * 9;
            let low = (8..=80).contains(&geo.height);
            let bottom = i32::from(geo.y) + i32::from(geo.height) >= i32::from(height) - 1;
            if !(wide && low && (geo.y <= 0 || bottom)) {
                continue;
            }
            let image = x.conn.get_image(ImageFormat::Z_PIXMAP, w, 0, 0, geo.width, geo.height, !0);
            let Ok(image) = image.map_err(err("get_image")) else { continue };
            if let Ok(image) = image.reply() {
                return Ok(Some((w, image.data)));
            }
        }
        Ok(None)
    }
}

/// Connects to the display with the cookie in the Xauthority file.
fn connect(desktop: &Desktop) -> XResult<XConn> {
    let n = xauth::display_number(&desktop.display)
        .ok_or_else(|| format!("display {:?} is not :N", desktop.display))?;
    let file = std::fs::read(&desktop.xauthority)
        .map_err(|e| format!("{}: {e}", desktop.xauthority.display()))?;
    let entries = xauth::parse(&file)
        .ok_or_else(|| format!("{} is not an Xauthority file", desktop.xauthority.display()))?;
    let (name, data) = xauth::cookie_for(&entries, n)
        .ok_or_else(|| format!("{} has no cookie for :{n}", desktop.xauthority.display()))?;
    let socket = format!("/tmp/.X11-unix/X{n}");
    let stream = UnixStream::connect(&socket).map_err(|e| format!("{socket}: {e}"))?;
    let (stream, _) = DefaultStream::from_unix_stream(stream).map_err(err("X socket"))?;
    let conn = RustConnection::connect_to_stream_with_auth_info(stream, 0, name, data)
        .map_err(err("connecting to X"))?;
    setup(conn)
}

fn setup(conn: RustConnection) -> XResult<XConn> {
    let screen = conn.setup().roots.first().ok_or("X has no screen")?.clone();
    let intern = |name: &[u8]| -> XResult<Atom> {
        Ok(conn.intern_atom(false, name).map_err(err("atom"))?.reply().map_err(err("atom"))?.atom)
    };
    let atoms = Atoms {
        clipboard: intern(b"CLIPBOARD")?,
        targets: intern(b"TARGETS")?,
        utf8: intern(b"UTF8_STRING")?,
        text: intern(b"TEXT")?,
        text_plain: intern(b"text/plain;charset=utf-8")?,
        png: intern(b"image/png")?,
        incr: intern(b"INCR")?,
        receive: intern(b"ATRIUM_CLIPBOARD")?,
    };
    // An image is served in one property change: with BIG-REQUESTS (every X server the
    // desktop runs has it) a request may be far larger than a clipboard image.
    conn.prefetch_maximum_request_bytes();
    conn.xfixes_query_version(5, 0)
        .map_err(err("XFixes"))?
        .reply()
        .map_err(err("XFixes (the X server has no XFixes extension)"))?;
    // The root's size changes (a new screen size) come as its ConfigureNotify; windows mapped
    // or restacked on it (the panel) as MapNotify and ConfigureNotify, so the sign-in screen
    // stays on top while it shows.
    conn.change_window_attributes(
        screen.root,
        &ChangeWindowAttributesAux::new()
            .event_mask(EventMask::STRUCTURE_NOTIFY | EventMask::SUBSTRUCTURE_NOTIFY),
    )
    .map_err(err("watching the screen's size"))?;
    let window = conn.generate_id().map_err(err("id"))?;
    conn.create_window(
        COPY_DEPTH_FROM_PARENT,
        window,
        screen.root,
        -10,
        -10,
        1,
        1,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new().event_mask(EventMask::PROPERTY_CHANGE),
    )
    .map_err(err("creating the agent's window"))?;
    conn.xfixes_select_selection_input(
        window,
        atoms.clipboard,
        SelectionEventMask::SET_SELECTION_OWNER
            | SelectionEventMask::SELECTION_WINDOW_DESTROY
            | SelectionEventMask::SELECTION_CLIENT_CLOSE,
    )
    .map_err(err("watching the clipboard"))?;
    let greeter = conn.generate_id().map_err(err("id"))?;
    conn.create_window(
        COPY_DEPTH_FROM_PARENT,
        greeter,
        screen.root,
        0,
        0,
        screen.width_in_pixels,
        screen.height_in_pixels,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new()
            .background_pixel(GREETER_BACKGROUND)
            .override_redirect(1)
            .event_mask(EventMask::EXPOSURE),
    )
    .map_err(err("creating the sign-in screen"))?;
    // X's built-in bitmap font: always there, even without font packages.
    let font = conn.generate_id().map_err(err("id"))?;
    conn.open_font(font, b"fixed").map_err(err("font"))?;
    let metrics = conn.query_font(font).map_err(err("font"))?.reply().map_err(err("font"))?;
    let gc = conn.generate_id().map_err(err("id"))?;
    conn.create_gc(
        gc,
        greeter,
        &CreateGCAux::new().foreground(GREETER_TEXT).background(GREETER_BACKGROUND).font(font),
    )
    .map_err(err("graphics context"))?;
    conn.flush().map_err(err("flush"))?;
    Ok(XConn {
        root: screen.root,
        size: AtomicU32::new(pack(screen.width_in_pixels, screen.height_in_pixels)),
        window,
        greeter,
        gc,
        char_width: metrics.max_bounds.character_width.max(1),
        line_height: metrics.font_ascent + metrics.font_descent + 6,
        ascent: metrics.font_ascent,
        atoms,
        conn,
    })
}

fn pack(width: u16, height: u16) -> u32 {
    (u32::from(width) << 16) | u32::from(height)
}

impl XConn {
    /// The screen's size now.
    fn size(&self) -> (u16, u16) {
        let v = self.size.load(Ordering::SeqCst);
        ((v >> 16) as u16, (v & 0xffff) as u16)
    }
}

/// The screen took a new size: the sign-in screen covers it again, its text centred anew.
fn screen_resized(x: &XConn, width: u16, height: u16) -> XResult<()> {
    x.size.store(pack(width, height), Ordering::SeqCst);
    let cover = ConfigureWindowAux::new().width(u32::from(width)).height(u32::from(height));
    x.conn.configure_window(x.greeter, &cover).map_err(err("resizing the sign-in screen"))?;
    // Cleared with exposures: a mapped sign-in screen is drawn again (unmapped, nothing).
    x.conn.clear_area(true, x.greeter, 0, 0, 0, 0).map_err(err("clearing the sign-in screen"))?;
    x.conn.flush().map_err(err("flush"))
}

/// Puts the sign-in screen above every other window, when it shows.
fn raise_greeter(desktop: &Desktop, x: &XConn) -> XResult<()> {
    if !desktop.greeter_wanted.load(Ordering::SeqCst) {
        return Ok(());
    }
    let above = ConfigureWindowAux::new().stack_mode(StackMode::ABOVE);
    x.conn.configure_window(x.greeter, &above).map_err(err("raising the sign-in screen"))?;
    x.conn.flush().map_err(err("flush"))
}

fn draw_greeter(x: &XConn) -> XResult<()> {
    let lines = i16::try_from(GREETER_LINES.len()).unwrap_or(1);
    let (width, height) = x.size();
    // Above the middle, where the pointer starts.
    let top = i16::try_from(height * 2 / 5).unwrap_or(0) - lines * x.line_height / 2;
    for (i, line) in (0i16..).zip(GREETER_LINES) {
        if line.is_empty() {
            continue;
        }
        let chars = i16::try_from(line.len()).unwrap_or(0);
        let left = i16::try_from(width / 2).unwrap_or(0) - chars * x.char_width / 2;
        let baseline = top + i * x.line_height + x.ascent;
        x.conn
            .image_text8(x.greeter, x.gc, left, baseline, line.as_bytes())
            .map_err(err("drawing the sign-in screen"))?;
    }
    x.conn.get_input_focus().map_err(err("sync"))?.reply().map_err(err("sync"))?;
    Ok(())
}

/// The X thread: connects (again, whenever X restarts), then handles events until the
/// connection fails. `copied` is called with each text or image the guest's programs put on
/// the clipboard; `resized` with the screen's size when connected and whenever it changes; `log`
/// with what went wrong.
pub fn run(
    desktop: &Desktop,
    copied: &dyn Fn(Clip),
    resized: &dyn Fn(u16, u16),
    log: &dyn Fn(&str),
) {
    let mut last_error = String::new();
    loop {
        match connect(desktop) {
            Ok(x) => {
                let x = Arc::new(x);
                *lock(&desktop.x) = Some(Arc::clone(&x));
                last_error.clear();
                log(&format!("connected to X on {}", desktop.display));
                let (width, height) = x.size();
                resized(width, height);
                if desktop.greeter_wanted.load(Ordering::SeqCst)
                    && let Err(e) = desktop.show_greeter(true)
                {
                    log(&e);
                }
                // A paste from before a restart of X: own the clipboard again.
                let pending = lock(&desktop.paste).clone();
                if let Some(clip) = pending
                    && let Err(e) = desktop.paste(clip)
                {
                    log(&e);
                }
                let e = event_loop(desktop, &x, copied, resized);
                *lock(&desktop.x) = None;
                log(&format!("the X connection ended: {e}"));
            }
            Err(e) => {
                // X starts after the agent: say so once, not at every retry.
                if e != last_error {
                    log(&format!("waiting for X: {e}"));
                    last_error = e;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn event_loop(
    desktop: &Desktop,
    x: &XConn,
    copied: &dyn Fn(Clip),
    resized: &dyn Fn(u16, u16),
) -> String {
    let mut reading = Reading::Idle;
    loop {
        let event = match x.conn.wait_for_event() {
            Ok(e) => e,
            Err(e) => return e.to_string(),
        };
        let result = match event {
            Event::Expose(e) if e.window == x.greeter && e.count == 0 => {
                draw_greeter(x).map(|()| {
                    desktop.greeter_drawn.store(true, Ordering::SeqCst);
                })
            }
            Event::ConfigureNotify(e) if e.window == x.root => {
                if (e.width, e.height) == x.size() {
                    Ok(())
                } else {
                    let r = screen_resized(x, e.width, e.height);
                    resized(e.width, e.height);
                    r
                }
            }
            // Another window came up or moved while the sign-in screen shows: it stays on top.
            Event::MapNotify(e) if e.event == x.root && e.window != x.greeter => {
                raise_greeter(desktop, x)
            }
            Event::ConfigureNotify(e) if e.event == x.root && e.window != x.greeter => {
                raise_greeter(desktop, x)
            }
            Event::XfixesSelectionNotify(e) if e.selection == x.atoms.clipboard => {
                if e.owner == NONE || e.owner == x.window {
                    Ok(())
                } else {
                    // A new owner: whatever was being received is stale. First which forms it
                    // has: text is taken when there is any, else an image.
                    reading = Reading::Idle;
                    ask(x, x.atoms.targets, e.timestamp)
                }
            }
            Event::SelectionNotify(e) if e.requestor == x.window => {
                receive(desktop, x, &mut reading, e.property, e.target, e.time, copied)
            }
            Event::PropertyNotify(e)
                if e.window == x.window
                    && e.atom == x.atoms.receive
                    && e.state == Property::NEW_VALUE =>
            {
                piece(desktop, x, &mut reading, copied)
            }
            Event::SelectionRequest(e) => serve(desktop, x, &e),
            Event::SelectionClear(e) if e.selection == x.atoms.clipboard => {
                *lock(&desktop.paste) = None;
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            // Requests failing on a live connection (a window gone): keep going.
            eprintln!("atrium-guest-agent: X: {e}");
        }
    }
}
