//! The RFB client against a scripted server on a socket pair: handshake, every encoding the
//! client asks for, input messages, and bad servers.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Instant;

use super::*;

/// The server's side of a session, step by step.
struct Server {
    s: UnixStream,
}

impl Server {
    fn read(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        self.s.read_exact(&mut b).unwrap();
        b
    }

    /// Runs the server half of the handshake; returns the client's SetEncodings list.
    /// Version, security (None taken) and the client's shared flag: the server's next word
    /// is ServerInit.
    fn up_to_server_init(&mut self) {
        self.s.write_all(b"RFB 003.008\n").unwrap();
        assert_eq!(self.read(12), b"RFB 003.008\n");
        self.s.write_all(&[2, 2, 1]).unwrap(); // VNC auth and None offered
        assert_eq!(self.read(1), [1]);
        self.s.write_all(&0u32.to_be_bytes()).unwrap();
        assert_eq!(self.read(1), [1], "shared flag");
    }

    fn handshake(&mut self, w: u16, h: u16) -> Vec<i32> {
        self.up_to_server_init();
        let mut init = Vec::new();
        init.extend_from_slice(&w.to_be_bytes());
        init.extend_from_slice(&h.to_be_bytes());
        init.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        init.extend_from_slice(&4u32.to_be_bytes());
        init.extend_from_slice(b"qemu");
        self.s.write_all(&init).unwrap();
        let pf = self.read(20);
        assert_eq!(pf[0], 0);
        assert_eq!(&pf[4..8], &[32, 24, 0, 1], "32 bpp, depth 24, little-endian, true colour");
        let head = self.read(4);
        assert_eq!(head[0], 2);
        let n = u16::from_be_bytes([head[2], head[3]]);
        (0..n)
            .map(|_| {
                let b = self.read(4);
                i32::from_be_bytes([b[0], b[1], b[2], b[3]])
            })
            .collect()
    }

    fn expect_request(&mut self, incremental: bool, w: u16, h: u16) {
        let b = self.read(10);
        assert_eq!(b[0], 3);
        assert_eq!(b[1], u8::from(incremental));
        assert_eq!(&b[6..8], &w.to_be_bytes());
        assert_eq!(&b[8..10], &h.to_be_bytes());
    }

    fn update(&mut self, rects: &[(Rect, i32, Vec<u8>)]) {
        let mut m = vec![0, 0];
        m.extend_from_slice(&u16::try_from(rects.len()).unwrap().to_be_bytes());
        for (r, enc, payload) in rects {
            for v in [r.x, r.y, r.w, r.h] {
                m.extend_from_slice(&v.to_be_bytes());
            }
            m.extend_from_slice(&enc.to_be_bytes());
            m.extend_from_slice(payload);
        }
        self.s.write_all(&m).unwrap();
    }
}

impl Server {
    /// An 8x4 QEMU: handshake, the first full update request, and an update offering QEMU's
    /// extended key events with one pixel.
    fn qemu_8x4_with_extended_keys(&mut self) {
        self.handshake(8, 4);
        self.expect_request(false, 8, 4);
        self.update(&[
            (Rect::default(), ENC_QEMU_EXT_KEY, vec![]),
            (Rect { x: 0, y: 0, w: 1, h: 1 }, ENC_RAW, raw(&[7])),
        ]);
    }
}

fn pair() -> (Stream, Server) {
    let (a, b) = UnixStream::pair().unwrap();
    (Stream::from(a), Server { s: b })
}

fn raw(pixels: &[u32]) -> Vec<u8> {
    pixels.iter().flat_map(|p| p.to_le_bytes()).collect()
}

#[test]
fn handshake_updates_and_input() {
    let (client, mut server) = pair();
    let srv = thread::spawn(move || {
        let encodings = server.handshake(8, 4);
        assert_eq!(encodings[0], ENC_RAW, "raw first on a unix socket");
        assert!(encodings.contains(&ENC_QEMU_EXT_KEY));
        server.expect_request(false, 8, 4);
        let red = 0x00ff0000u32;
        server.update(&[
            (Rect { x: 0, y: 0, w: 8, h: 4 }, ENC_RAW, raw(&[red; 32])),
            (Rect { x: 0, y: 0, w: 2, h: 1 }, ENC_RAW, raw(&[1, 2])),
            (Rect { x: 4, y: 2, w: 2, h: 1 }, ENC_COPYRECT, vec![0, 0, 0, 0]),
            (Rect::default(), ENC_QEMU_EXT_KEY, vec![]),
        ]);
        // A key with a scancode (after the extension was offered), a wheel step, and the next
        // update request, in whatever order the two writing threads interleave them.
        let (mut key, mut ptr, mut req) = (Vec::new(), Vec::new(), Vec::new());
        while key.is_empty() || ptr.is_empty() || req.is_empty() {
            let ty = server.read(1)[0];
            match ty {
                255 => key = [vec![ty], server.read(11)].concat(),
                5 => ptr = [vec![ty], server.read(17)].concat(),
                3 => req = [vec![ty], server.read(9)].concat(),
                other => panic!("unexpected client message {other}"),
            }
        }
        assert_eq!(key[0..2], [255, 0]);
        assert_eq!(key[2..4], 1u16.to_be_bytes());
        assert_eq!(key[4..8], 0x61u32.to_be_bytes());
        assert_eq!(key[8..12], 0x1eu32.to_be_bytes(), "qnum of KeyA");
        assert_eq!(ptr[0..6], [5, 1, 0, 7, 0, 3], "left button at (7, 3), clamped x");
        assert_eq!(ptr[6..8], [5, 1 | 16], "wheel down pressed");
        assert_eq!(ptr[12..14], [5, 1], "wheel released");
        assert_eq!(req[1], 1, "incremental");
        // The same size announced again (as QEMU does after a full update request) changes
        // nothing: the pixels stay.
        server.update(&[
            (Rect { x: 0, y: 0, w: 8, h: 4 }, ENC_EXT_DESKTOP_SIZE, vec![0, 0, 0, 0]),
            (Rect { x: 7, y: 3, w: 1, h: 1 }, ENC_RAW, raw(&[9])),
        ]);
        server.expect_request(true, 8, 4);
        // Resize, then the client asks for a full update of the new size.
        server.update(&[(Rect { x: 0, y: 0, w: 16, h: 2 }, ENC_DESKTOP_SIZE, vec![])]);
        server
    });
    let mut src = RfbSource::handshake(client, false).unwrap();
    assert_eq!(src.name(), "qemu");
    assert_eq!(src.size(), (8, 4));
    let mut fb = Framebuffer::new(8, 4);
    let ev = src.next_update(&mut fb).unwrap();
    assert_eq!(ev.len(), 3);
    assert_eq!(fb.span(0, 0, 3), &[1, 2, 0x00ff0000]);
    assert_eq!(fb.span(4, 2, 2), &[1, 2], "copied from (0, 0)");
    assert!(src.has_extended_keys());

    let input = src.input();
    input.send(InputEvent::Key { down: true, keysym: 0x61, evdev: Some(30) }).unwrap();
    input.send(InputEvent::Pointer { x: 100, y: 3, buttons: 1, wheel_x: 0, wheel_y: 1 }).unwrap();
    let next = thread::spawn(move || {
        let same = src.next_update(&mut fb).unwrap();
        assert_eq!(same, vec![SourceEvent::Damage(Rect { x: 7, y: 3, w: 1, h: 1 })]);
        assert_eq!(fb.span(0, 0, 2), &[1, 2], "not cleared");
        let ev = src.next_update(&mut fb).unwrap();
        (src, fb, ev)
    });
    let (mut src, mut fb, ev) = next.join().unwrap();
    assert_eq!(ev, vec![SourceEvent::Resized { width: 16, height: 2 }]);
    assert_eq!((fb.width(), fb.height()), (16, 2));
    assert_eq!(src.size(), (16, 2));
    let mut server = srv.join().unwrap();

    // After a resize the client asks for the whole new screen; the stopper then unblocks the
    // read in progress.
    let stopper = src.stopper();
    let t = thread::spawn(move || src.next_update(&mut fb).map(|_| ()));
    server.expect_request(false, 16, 2);
    stopper.stop();
    assert!(matches!(t.join().unwrap(), Err(SourceError::Stopped)));
    drop(server);
}

#[test]
fn keysyms_without_the_qemu_extension() {
    let (client, mut server) = pair();
    let srv = thread::spawn(move || {
        server.handshake(8, 4);
        let key = server.read(8);
        assert_eq!(key, [4, 0, 0, 0, 0, 0, 0xff, 0x0d], "Return released, as a keysym");
        server
    });
    let src = RfbSource::handshake(client, true).unwrap();
    src.input().send(InputEvent::Key { down: false, keysym: 0xff0d, evdev: Some(28) }).unwrap();
    let _server = srv.join().unwrap();
}

#[test]
fn hostile_servers_are_errors() {
    type Script = fn(&mut Server);
    let cases: Vec<(&str, Script)> = vec![
        ("not RFB", |s| s.s.write_all(b"HTTP/1.1 200").unwrap()),
        ("auth only", |s| {
            s.s.write_all(b"RFB 003.008\n").unwrap();
            s.read(12);
            s.s.write_all(&[1, 2]).unwrap();
        }),
        ("refused", |s| {
            s.s.write_all(b"RFB 003.008\n").unwrap();
            s.read(12);
            s.s.write_all(&[0, 0, 0, 0, 4]).unwrap();
            s.s.write_all(b"busy").unwrap();
        }),
        ("zero size", |s| {
            s.up_to_server_init();
            s.s.write_all(&[0; 24]).unwrap();
        }),
    ];
    for (what, script) in cases {
        let (client, mut server) = pair();
        let t = thread::spawn(move || {
            script(&mut server);
            server
        });
        assert!(RfbSource::handshake(client, false).is_err(), "{what}");
        drop(t.join().unwrap());
    }

    // After the handshake: a rectangle outside the screen, an unknown encoding, an unknown
    // message type, a bad CopyRect source, and an update of thousands of whole-screen copies
    // (a megabyte of work from a small message) all end the session with an error.
    let bad_updates: Vec<Vec<(Rect, i32, Vec<u8>)>> = vec![
        vec![(Rect { x: 6, y: 0, w: 4, h: 1 }, ENC_RAW, raw(&[0; 4]))],
        vec![(Rect { x: 0, y: 0, w: 1, h: 1 }, 7, vec![0; 4])],
        vec![(Rect { x: 0, y: 0, w: 2, h: 2 }, ENC_COPYRECT, vec![0, 7, 0, 7])],
        vec![(Rect { x: 0, y: 0, w: 8, h: 4 }, ENC_COPYRECT, vec![0, 0, 0, 0]); 9000],
    ];
    for rects in bad_updates {
        let (client, mut server) = pair();
        let t = thread::spawn(move || {
            server.handshake(8, 4);
            server.expect_request(false, 8, 4);
            server.update(&rects);
            server
        });
        let mut src = RfbSource::handshake(client, false).unwrap();
        let mut fb = Framebuffer::new(8, 4);
        assert!(src.next_update(&mut fb).is_err());
        drop(t.join().unwrap());
    }
    let (client, mut server) = pair();
    let t = thread::spawn(move || {
        server.handshake(8, 4);
        server.s.write_all(&[99]).unwrap();
        server
    });
    let mut src = RfbSource::handshake(client, false).unwrap();
    let mut fb = Framebuffer::new(8, 4);
    assert!(matches!(src.next_update(&mut fb), Err(SourceError::Protocol(_))));
    drop(t.join().unwrap());
}

#[test]
fn cursor_and_cut_text() {
    let (client, mut server) = pair();
    let srv = thread::spawn(move || {
        server.handshake(8, 4);
        server.expect_request(false, 8, 4);
        // Cut text arrives between updates.
        let mut m = vec![3, 0, 0, 0];
        m.extend_from_slice(&3u32.to_be_bytes());
        m.extend_from_slice(&[b'h', 0xe9, b'!']);
        server.s.write_all(&m).unwrap();
        // A 2x1 cursor, hotspot (1, 0): one visible white pixel, one masked.
        let mut payload = raw(&[0x00ffffff, 0x00ffffff]);
        payload.push(0b1000_0000);
        server.update(&[(Rect { x: 1, y: 0, w: 2, h: 1 }, ENC_CURSOR, payload)]);
        server
    });
    let mut src = RfbSource::handshake(client, false).unwrap();
    let mut fb = Framebuffer::new(8, 4);
    assert_eq!(src.next_update(&mut fb).unwrap(), vec![SourceEvent::Clipboard("hé!".into())]);
    let ev = src.next_update(&mut fb).unwrap();
    let SourceEvent::Cursor(c) = &ev[0] else { panic!("{ev:?}") };
    assert_eq!((c.width, c.height, c.hot_x, c.hot_y), (2, 1, 1, 0));
    assert_eq!(c.rgba, [255, 255, 255, 255, 255, 255, 255, 0]);
    let _server = srv.join().unwrap();
}

/// QEMU's audio extension: asked for after the handshake, enabled (16-bit stereo at 48 kHz)
/// once the server acknowledges it, and its data and end reported; a data message over the
/// limit is an error.
#[test]
fn sound_through_qemus_audio_extension() {
    let (client, mut server) = pair();
    let srv = thread::spawn(move || {
        let first = server.handshake(8, 4);
        assert!(!first.contains(&ENC_QEMU_AUDIO), "sound is not asked for unless wanted");
        // The client asks again, now with the audio extension (before its first request).
        let head = server.read(4);
        assert_eq!(head[0], 2);
        let n = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let encodings: Vec<i32> = server
            .read(n * 4)
            .chunks(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert!(encodings.contains(&ENC_QEMU_AUDIO), "{encodings:?}");
        server.expect_request(false, 8, 4);
        server.update(&[
            (Rect::default(), ENC_QEMU_AUDIO, vec![]),
            (Rect { x: 0, y: 0, w: 1, h: 1 }, ENC_RAW, raw(&[7])),
        ]);
        // Set the format (S16, stereo, 48000 Hz), then enable.
        assert_eq!(server.read(10), [255, 1, 0, 2, 3, 2, 0, 0, 0xbb, 0x80]);
        assert_eq!(server.read(4), [255, 1, 0, 0]);
        let mut m = vec![255, 1, 0, 1]; // begin
        m.extend_from_slice(&[255, 1, 0, 2]);
        m.extend_from_slice(&8u32.to_be_bytes());
        m.extend_from_slice(&[1, 0, 2, 0, 3, 0, 4, 0]);
        m.extend_from_slice(&[255, 1, 0, 0]); // end
        // Far more than an audio timer tick's worth.
        m.extend_from_slice(&[255, 1, 0, 2]);
        m.extend_from_slice(&(u32::try_from(MAX_AUDIO_DATA).unwrap() + 1).to_be_bytes());
        server.s.write_all(&m).unwrap();
        server
    });
    let mut src = RfbSource::handshake(client, false).unwrap();
    assert!(!src.has_sound());
    src.enable_sound().unwrap();
    assert!(src.has_sound());
    let mut fb = Framebuffer::new(8, 4);
    let ev = src.next_update(&mut fb).unwrap();
    assert!(ev.iter().all(|e| matches!(e, SourceEvent::Damage(_))), "{ev:?}");
    assert_eq!(
        src.next_update(&mut fb).unwrap(),
        vec![SourceEvent::Sound(vec![1, 0, 2, 0, 3, 0, 4, 0])]
    );
    assert_eq!(src.next_update(&mut fb).unwrap(), vec![SourceEvent::SoundEnded]);
    let err = src.next_update(&mut fb).unwrap_err();
    assert!(err.to_string().contains("audio data over the limit"), "{err}");
    let _server = srv.join().unwrap();
}

/// Reads client messages until one of type `ty` arrives; returns it whole.
fn read_until(server: &mut Server, ty: u8) -> Vec<u8> {
    loop {
        let t = server.read(1)[0];
        let body = match t {
            3 => server.read(9),
            4 => server.read(7),
            5 => server.read(5),
            255 => server.read(11),
            other => panic!("unexpected client message {other}"),
        };
        if t == ty {
            return [vec![t], body].concat();
        }
    }
}

#[test]
fn nudges_keep_the_refresh_going_while_input_is_recent() {
    let (client, mut server) = pair();
    let srv = thread::spawn(move || {
        server.qemu_8x4_with_extended_keys();
        let key = read_until(&mut server, 255);
        assert_eq!(key[2..4], [0, 1], "the key itself, pressed");
        let nudge = read_until(&mut server, 255);
        assert_eq!(nudge, [255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "a release of no key");
        server
    });
    let mut src = RfbSource::handshake(client, false).unwrap();
    src.set_keep_refresh(Some(Duration::from_millis(100)));
    let mut fb = Framebuffer::new(8, 4);
    src.next_update(&mut fb).unwrap();
    assert!(src.has_extended_keys());
    let t0 = Instant::now();
    assert_eq!(src.polled().unwrap().keep_alive(t0), None, "no input yet: nothing to do");
    src.input().send(InputEvent::Key { down: true, keysym: 0x61, evdev: Some(30) }).unwrap();
    let p = src.polled().unwrap();
    let now = Instant::now();
    let due = p.keep_alive(now).expect("input is recent");
    assert!(due > now, "the key itself reset QEMU's timer: the first nudge waits a period");
    let next = p.keep_alive(due).expect("still recent");
    assert!(next > due);
    assert_eq!(p.keep_alive(now + Duration::from_millis(150)), None, "the window has passed");
    let _server = srv.join().unwrap();
}

#[test]
fn no_nudge_is_due_within_a_period_of_input_or_of_an_update_with_pixels() {
    let (client, mut server) = pair();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let srv = thread::spawn(move || {
        server.qemu_8x4_with_extended_keys();
        read_until(&mut server, 255);
        wait.recv().unwrap();
        server.update(&[(Rect { x: 1, y: 0, w: 1, h: 1 }, ENC_RAW, raw(&[8]))]);
        server
    });
    let mut src = RfbSource::handshake(client, false).unwrap();
    src.set_keep_refresh(Some(Duration::from_secs(10)));
    let mut fb = Framebuffer::new(8, 4);
    src.next_update(&mut fb).unwrap();
    std::thread::sleep(NUDGE_AFTER_UPDATE);

    // A key is itself a nudge: the next one is due a period after it (the input clock counts
    // whole milliseconds, hence the one of slack).
    let key = Instant::now();
    src.input().send(InputEvent::Key { down: true, keysym: 0x61, evdev: Some(30) }).unwrap();
    let p = src.polled().unwrap();
    let due = p.keep_alive(key).expect("input is recent");
    assert!(
        due + Duration::from_millis(1) >= key + NUDGE_EVERY,
        "due {:?} after the key",
        due - key
    );
    // Input a little later moves it on.
    std::thread::sleep(Duration::from_millis(10));
    let key2 = Instant::now();
    src.input().send(InputEvent::Key { down: false, keysym: 0x61, evdev: Some(30) }).unwrap();
    let due2 = src.polled().unwrap().keep_alive(key2).expect("input is recent");
    assert!(due2 + Duration::from_millis(1) >= key2 + NUDGE_EVERY);
    assert!(due2 > due, "the later key pushed the nudge back");

    // An update with pixels: QEMU's interval is short already; the nudge waits until after its
    // next refresh.
    go.send(()).unwrap();
    let before = Instant::now();
    src.next_update(&mut fb).unwrap();
    let due3 = src.polled().unwrap().keep_alive(Instant::now()).expect("input is recent");
    assert!(due3 >= before + NUDGE_AFTER_UPDATE, "due {:?} after the update", due3 - before);
    assert!(due3 > due2);
    let _server = srv.join().unwrap();
}

#[tokio::test]
async fn a_polled_desktop_decodes_small_updates_in_place_and_large_ones_on_the_pool() {
    use crate::desktop::Desktop;
    use crate::metrics::Metrics;
    use crate::pipeline::pool::EncodePool;
    use crate::source::open::OpenedSource;

    let (w, h) = (640u16, 480u16);
    let (client, mut server) = pair();
    let (go_on, wait) = std::sync::mpsc::channel::<()>();
    let srv = thread::spawn(move || {
        server.handshake(w, h);
        server.expect_request(false, w, h);
        server.update(&[(Rect { x: 0, y: 0, w, h }, ENC_RAW, raw(&vec![1; 640 * 480]))]);
        server.expect_request(true, w, h);
        // Larger than the pool threshold, then a small one.
        server.update(&[(Rect { x: 0, y: 0, w, h: 200 }, ENC_RAW, raw(&vec![2; 640 * 200]))]);
        server.expect_request(true, w, h);
        server.update(&[(Rect { x: 5, y: 300, w: 2, h: 1 }, ENC_RAW, raw(&[3, 4]))]);
        server.expect_request(true, w, h);
        let _ = wait.recv();
    });
    let src = tokio::task::spawn_blocking(move || RfbSource::handshake(client, false))
        .await
        .unwrap()
        .unwrap();
    let metrics = Arc::new(Metrics::default());
    let opened = OpenedSource { source: Box::new(src), guest: None };
    let desktop = Desktop::start("vm", opened, metrics, EncodePool::new(1, 4), None).await.unwrap();
    let mut frames = desktop.frames();
    let mut last = Arc::clone(&frames.borrow_and_update());
    assert_eq!(last.frame.fb.span(0, 0, 1), &[1]);
    while last.frame.fb.span(5, 300, 2) != [3, 4] {
        tokio::time::timeout(Duration::from_secs(5), frames.changed()).await.unwrap().unwrap();
        last = Arc::clone(&frames.borrow_and_update());
    }
    assert_eq!(last.frame.fb.span(0, 199, 1), &[2], "the large update was applied first");
    assert_eq!(last.frame.fb.span(0, 200, 1), &[1]);
    assert!(desktop.is_alive());
    drop(go_on);
    srv.join().unwrap();
}

/// Runs `Desktop::start` on a current-thread runtime of its own thread, as the service does,
/// with a task beside it that reports every 10 ms on `ticks` while the runtime is free to run it.
fn desktop_on_own_runtime(
    client: Stream,
    first_update_timeout: Duration,
    ticks: std::sync::mpsc::Sender<Result<(), String>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> thread::JoinHandle<()> {
    use crate::desktop::Desktop;
    use crate::metrics::Metrics;
    use crate::pipeline::pool::EncodePool;
    use crate::source::open::OpenedSource;

    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let src = tokio::task::spawn_blocking(move || RfbSource::handshake(client, false))
                .await
                .unwrap()
                .unwrap();
            let opened = OpenedSource { source: Box::new(src), guest: None };
            let metrics = Arc::new(Metrics::default());
            let started = Desktop::start_within(
                "vm",
                opened,
                metrics,
                EncodePool::new(1, 4),
                None,
                first_update_timeout,
            )
            .await;
            let desktop = match started {
                Ok(d) => d,
                Err(e) => {
                    let _ = ticks.send(Err(e.to_string()));
                    return;
                }
            };
            let ticker = tokio::spawn(async move {
                loop {
                    if ticks.send(Ok(())).is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            let _ = stop.await;
            ticker.abort();
            drop(desktop);
        });
    })
}

#[test]
fn a_server_flooding_small_messages_does_not_take_the_runtime_from_everything_else() {
    let (w, h) = (64u16, 48u16);
    let (client, mut server) = pair();
    let (ticks_tx, ticks) = std::sync::mpsc::channel();
    let (stop_tx, stop) = tokio::sync::oneshot::channel();
    let rt = desktop_on_own_runtime(client, Duration::from_secs(15), ticks_tx, stop);
    server.handshake(w, h);
    server.expect_request(false, w, h);
    server.update(&[(Rect { x: 0, y: 0, w, h }, ENC_RAW, raw(&vec![1; 64 * 48]))]);
    assert_eq!(ticks.recv_timeout(Duration::from_secs(10)), Ok(Ok(())), "the desktop started");
    // Bells without end: the socket never runs dry, so the reader never sees "would block".
    let flood = {
        let mut s = server.s.try_clone().unwrap();
        thread::spawn(move || {
            let bells = [2u8; 64 * 1024];
            while s.write_all(&bells).is_ok() {}
        })
    };
    // Let the flood fill the socket, then forget the ticks sent before it.
    thread::sleep(Duration::from_millis(200));
    while ticks.try_recv().is_ok() {}
    for n in 0..5 {
        assert_eq!(
            ticks.recv_timeout(Duration::from_secs(10)),
            Ok(Ok(())),
            "tick {n}: the other task ran while bells poured in"
        );
    }
    let _ = stop_tx.send(());
    rt.join().unwrap();
    // The desktop is gone: the flood's writes fail and its thread ends.
    let _ = server.s.shutdown(std::net::Shutdown::Both);
    flood.join().unwrap();
}

#[test]
fn a_handshake_trickled_a_byte_at_a_time_is_given_up_at_its_deadline() {
    let (client, mut server) = pair();
    let srv = thread::spawn(move || {
        server.up_to_server_init();
        // ServerInit with a 64 KiB name, a byte every 100 ms: each read gets its byte well
        // within its own timeout. Returns how many bytes went out before the client hung up.
        let init = [0u8, 8, 0, 4].into_iter().chain([0; 16]).chain([0, 1, 0, 0]);
        let mut sent = 0;
        for b in init.chain([b'x'; 36]) {
            if server.s.write_all(&[b]).is_err() {
                break;
            }
            sent += 1;
            thread::sleep(Duration::from_millis(100));
        }
        sent
    });
    let err = RfbSource::handshake_within(client, false, Duration::from_millis(500))
        .expect_err("the handshake cannot finish by its deadline");
    assert!(err.to_string().contains("in time"), "{err}");
    // The client gave up at its deadline (a few bytes in), not when the trickle stopped.
    let sent = srv.join().unwrap();
    assert!(sent < 60, "the client read all {sent} bytes: no overall deadline");
}

#[test]
fn a_server_silent_after_its_handshake_is_given_up_and_released() {
    let (w, h) = (64u16, 48u16);
    let (client, mut server) = pair();
    let (ticks_tx, ticks) = std::sync::mpsc::channel();
    let (_stop_tx, stop) = tokio::sync::oneshot::channel();
    let rt = desktop_on_own_runtime(client, Duration::from_millis(300), ticks_tx, stop);
    server.handshake(w, h);
    server.expect_request(false, w, h);
    // No update ever comes.
    let got = ticks.recv_timeout(Duration::from_secs(30)).expect("start gave up");
    let err = got.expect_err("no desktop without a first image");
    assert!(err.contains("no image"), "{err}");
    rt.join().unwrap();
    // The source was stopped: its side of the connection is closed.
    let mut b = [0u8; 1];
    server.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(server.s.read(&mut b).unwrap(), 0, "the client hung up");
}

/// A polled desktop with sound: QEMU's audio reaches whoever subscribed to the desktop's
/// sound as 20 ms Opus messages.
#[tokio::test]
async fn a_desktops_sound_reaches_its_listeners_as_opus() {
    use atrium_protocol::display::ServerMessage;

    use crate::desktop::Desktop;
    use crate::metrics::Metrics;
    use crate::pipeline::pool::EncodePool;
    use crate::source::open::OpenedSource;

    let (client, mut server) = pair();
    let (go_on, wait) = std::sync::mpsc::channel::<()>();
    let (listening, heard) = std::sync::mpsc::channel::<()>();
    let srv = thread::spawn(move || {
        server.handshake(8, 4);
        // SetEncodings again, with audio.
        let head = server.read(4);
        server.read(usize::from(u16::from_be_bytes([head[2], head[3]])) * 4);
        server.expect_request(false, 8, 4);
        server.update(&[
            (Rect::default(), ENC_QEMU_AUDIO, vec![]),
            (Rect { x: 0, y: 0, w: 8, h: 4 }, ENC_RAW, raw(&[1; 32])),
        ]);
        assert_eq!(server.read(14)[..4], [255, 1, 0, 2]);
        heard.recv().unwrap();
        // A tenth of a second of sound, in 10 ms pieces.
        for _ in 0..10 {
            let mut m = vec![255, 1, 0, 2];
            m.extend_from_slice(&1920u32.to_be_bytes());
            m.extend_from_slice(&[0x10; 1920]);
            server.s.write_all(&m).unwrap();
        }
        let _ = wait.recv();
    });
    let src = tokio::task::spawn_blocking(move || {
        let mut s = RfbSource::handshake(client, false)?;
        s.enable_sound()?;
        Ok::<_, SourceError>(s)
    })
    .await
    .unwrap()
    .unwrap();
    let metrics = Arc::new(Metrics::default());
    let opened = OpenedSource { source: Box::new(src), guest: None };
    let desktop = Desktop::start("vm", opened, Arc::clone(&metrics), EncodePool::new(1, 4), None)
        .await
        .unwrap();
    assert!(desktop.has_sound());
    let mut sound = desktop.sound().expect("a desktop with sound");
    listening.send(()).unwrap();
    let mut ats = Vec::new();
    while ats.len() < 5 {
        let m = tokio::time::timeout(Duration::from_secs(5), sound.recv()).await.unwrap().unwrap();
        let ServerMessage::Audio { at, .. } = ServerMessage::decode(&m).unwrap() else {
            panic!("not sound")
        };
        ats.push(at);
    }
    assert_eq!(ats, [0, 960, 1920, 2880, 3840]);
    drop(go_on);
    srv.join().unwrap();
}
