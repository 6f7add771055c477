//! Readiness of a desktop whose image has no guest agent (an imported OS): it is ready when its
//! screen has settled on something that is neither blank nor the firmware's first screen.
//!
//! The screen is sampled every [`SAMPLE`]. A sample the same as either of the two before it
//! counts as the same screen (a blinking cursor goes back and forth between two pictures; a
//! countdown, a spinner or a progress bar never comes back to the one before last). The
//! desktop is ready once the screen has been the same for [`SETTLE`], is not blank (every pixel
//! one colour but a cursor's: a mode change, a cleared screen), and no longer shows the firmware's
//! picture: the first screen that was not blank is the firmware's (OVMF's logo, SeaBIOS's
//! banner), and the firmware and boot loaders add to it (OVMF writes which option it boots under
//! its logo, and that stays while the loader reads the kernel); while most of that first
//! picture's drawn pixels are still there, the OS has not drawn yet. An OS that keeps the
//! firmware's picture (a boot logo) is ready once its screen has been the same for
//! [`LONG_SETTLE`]. A firmware that finds nothing to boot says so on the serial console, which
//! [`firmware_failure`] reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::console::ConsoleLog;
use crate::runtime::{Frame, VmHandle};

pub const SAMPLE: Duration = Duration::from_secs(1);
/// How long the screen must stay the same.
pub const SETTLE: Duration = Duration::from_secs(5);
/// How long a screen that still shows the firmware's picture must stay the same.
pub const LONG_SETTLE: Duration = Duration::from_secs(90);
/// The size of QEMU's own screen before the guest sets a mode.
const QEMU_PLACEHOLDER: (u32, u32) = (640, 480);
/// The share of the firmware picture's drawn pixels that, still there, mean it is still shown.
pub const FIRMWARE_KEPT: f64 = 0.5;

/// A screen whose pixels are all one colour but fewer than these is blank (a cursor is 16 to
/// 128; `atrium login:` on a text console is 315).
pub const BLANK_PIXELS: usize = 200;

/// What the samples so far say.
#[derive(Debug, Default)]
pub struct Settle {
    /// The first screen that was not blank (the firmware's), and its drawn pixels (those not of
    /// its most common colour).
    first: Option<(Frame, Vec<usize>)>,
    /// The last sample, and the one before it.
    last: Option<Frame>,
    before: Option<Frame>,
    /// Since when the screen has been the same (and not blank).
    since: Option<Instant>,
}

impl Settle {
    /// Takes a sample made at `now`; true once the desktop is ready.
    pub fn observe(&mut self, frame: Frame, now: Instant) -> bool {
        // Before the guest sets a mode, QEMU shows a 640x480 screen of its own ("Guest has not
        // initialized the display"): neither the firmware's picture nor the OS's.
        let placeholder = self.first.is_none() && (frame.width, frame.height) == QEMU_PLACEHOLDER;
        if placeholder || is_blank(&frame) {
            self.since = None;
            self.before = self.last.replace(frame);
            return false;
        }
        let same = [&self.last, &self.before].into_iter().flatten().any(|f| *f == frame);
        if !same || self.since.is_none() {
            self.since = Some(now);
        }
        let (first, drawn) = self.first.get_or_insert_with(|| {
            let dominant = dominant(&frame);
            let drawn = frame
                .rgb
                .chunks_exact(3)
                .enumerate()
                .filter(|(_, px)| *px != dominant)
                .map(|(i, _)| i)
                .collect();
            (frame.clone(), drawn)
        });
        let firmware = kept(first, drawn, &frame) >= FIRMWARE_KEPT;
        let needed = if firmware { LONG_SETTLE } else { SETTLE };
        let ready = self.since.is_some_and(|t| now.duration_since(t) >= needed);
        self.before = self.last.replace(frame);
        ready
    }
}

/// The share of `first`'s `drawn` pixels that `frame` still has, unchanged (0 when the sizes
/// differ).
fn kept(first: &Frame, drawn: &[usize], frame: &Frame) -> f64 {
    if (first.width, first.height) != (frame.width, frame.height)
        || first.rgb.len() != frame.rgb.len()
        || drawn.is_empty()
    {
        return 0.0;
    }
    let same = drawn
        .iter()
        .filter(|&&i| first.rgb[i * 3..i * 3 + 3] == frame.rgb[i * 3..i * 3 + 3])
        .count();
    same as f64 / drawn.len() as f64
}

/// The most common colour among a sample of the frame's pixels.
fn dominant(f: &Frame) -> [u8; 3] {
    let mut counts: std::collections::HashMap<[u8; 3], usize> = std::collections::HashMap::new();
    for px in f.rgb.chunks_exact(3).step_by(97) {
        *counts.entry([px[0], px[1], px[2]]).or_default() += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map_or([0; 3], |(c, _)| c)
}

/// Every pixel is one colour (the most common among a sample of them) but a cursor's few.
pub fn is_blank(f: &Frame) -> bool {
    let dominant = dominant(f);
    f.rgb.chunks_exact(3).filter(|px| *px != dominant).take(BLANK_PIXELS).count() < BLANK_PIXELS
}

/// What a firmware that found nothing to boot says on the serial console (OVMF) or its debug
/// port (SeaBIOS), when the console log has it. OVMF tries every boot option first (a loader
/// Secure Boot refused is one of them); its last is its own UEFI shell where it has one, which
/// waits at its prompt (a `startup.nsh` that boots an OS never shows it). SeaBIOS tries every
/// disk, then says so (and tries again a minute later).
pub fn firmware_failure(console: &str) -> Option<&'static str> {
    [
        ("No bootable option or device was found", "no bootable option or device"),
        ("Shell> ", "it started its own UEFI shell"),
        ("No bootable device.", "no bootable device"),
    ]
    .into_iter()
    .find(|(needle, _)| console.contains(needle))
    .map(|(_, why)| why)
}

/// What says a starting VM is ready: its agent, or (without one) its screen.
pub enum Readiness {
    Agent(watch::Receiver<bool>),
    /// `Some(Ok)` once settled, `Some(Err(why))` when the firmware found nothing to boot.
    Screen(watch::Receiver<Option<Result<(), String>>>),
}

impl Readiness {
    /// Samples `handle`'s screen in a task of its own (returned, to be ended with the VM).
    pub fn screen(
        handle: Arc<dyn VmHandle>,
        console: Arc<ConsoleLog>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(None);
        (Self::Screen(rx), tokio::spawn(watch_screen(handle, console, tx)))
    }

    /// Waits until ready: `Err(None)` when the agent's connection closed first (the VM's end
    /// tells why), `Err(Some(why))` when the VM cannot become ready.
    pub async fn wait(&mut self) -> Result<(), Option<String>> {
        match self {
            Self::Agent(rx) => rx.wait_for(|r| *r).await.map(drop).map_err(|_| None),
            // The sampler never ends without a word: ended, it is a failure.
            Self::Screen(rx) => match rx.wait_for(Option::is_some).await {
                Ok(r) => r.clone().unwrap_or(Ok(())).map_err(Some),
                Err(_) => Err(Some("sampling the desktop's screen ended".into())),
            },
        }
    }

    /// What did not come in time.
    pub fn awaited(&self) -> &'static str {
        match self {
            Self::Agent(_) => "the guest agent did not report ready",
            Self::Screen(_) => "the desktop's screen did not settle",
        }
    }
}

/// Samples the VM's screen until it has settled (then sends `Ok`) or the firmware said it found
/// nothing to boot (then sends why).
async fn watch_screen(
    handle: Arc<dyn VmHandle>,
    console: Arc<ConsoleLog>,
    out: watch::Sender<Option<Result<(), String>>>,
) {
    let mut settle = Settle::default();
    loop {
        tokio::time::sleep(SAMPLE).await;
        if let Some(why) = firmware_failure(&console.text()) {
            let _ = out.send(Some(Err(format!("the firmware found nothing to boot ({why})"))));
            return;
        }
        match handle.screenshot().await {
            Ok(frame) => {
                if settle.observe(frame, Instant::now()) {
                    let _ = out.send(Some(Ok(())));
                    return;
                }
            }
            // The VM is gone or its control is: the monitor sees its end.
            Err(e) => tracing::debug!("sampling the screen of a desktop without an agent: {e}"),
        }
        if out.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: u32, h: u32, paint: impl Fn(u32, u32) -> [u8; 3]) -> Frame {
        let mut rgb = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(&paint(x, y));
            }
        }
        Frame { width: w, height: h, rgb }
    }

    const BLACK: [u8; 3] = [0, 0, 0];
    const GREY: [u8; 3] = [0xaa, 0xaa, 0xaa];

    /// A logo: a block in the middle.
    fn logo() -> Frame {
        frame(320, 200, |x, y| {
            if (140..180).contains(&x) && (80..120).contains(&y) { GREY } else { BLACK }
        })
    }

    /// The logo, and a line of text above it.
    fn logo_and_text() -> Frame {
        let logo = logo();
        frame(320, 200, |x, y| {
            let i = ((y * 320 + x) * 3) as usize;
            if y < 16 && x % 9 < 6 && x < 280 {
                GREY
            } else {
                [logo.rgb[i], logo.rgb[i + 1], logo.rgb[i + 2]]
            }
        })
    }

    /// Text in the top rows, with a cursor that is on or off.
    fn login(cursor: bool) -> Frame {
        frame(320, 200, |x, y| {
            let text = y < 16 && x % 9 < 6 && x < 200;
            let caret = cursor && (16..24).contains(&y) && x < 8;
            if text || caret { GREY } else { BLACK }
        })
    }

    #[test]
    fn the_firmware_logo_and_blank_screens_never_make_a_desktop_ready() {
        let mut s = Settle::default();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // QEMU's own screen first, for long: not a picture of the guest's.
        let placeholder = frame(640, 480, |x, y| if y < 16 && x < 300 { GREY } else { BLACK });
        for i in 0..100 {
            assert!(!s.observe(placeholder.clone(), at(i)));
        }
        let t0 = at(100);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // The logo stays for a minute, then the firmware writes under it what it boots, and
        // that stays as long: still the firmware's.
        for i in 0..30 {
            assert!(!s.observe(logo(), at(i)), "ready on the firmware's logo at {i} s");
        }
        for i in 30..60 {
            assert!(!s.observe(logo_and_text(), at(i)), "ready on the firmware's text at {i} s");
        }
        // A blank screen as long: not ready either.
        let blank = frame(320, 200, |_, _| BLACK);
        assert!(is_blank(&blank) && !is_blank(&logo()));
        for i in 60..120 {
            assert!(!s.observe(blank.clone(), at(i)));
        }
        // The OS's screen, its cursor blinking: ready SETTLE after the cursor's second picture
        // was first seen (at 121 s: new then), not before.
        let mut ready_at = None;
        for i in 120..140 {
            if s.observe(login(i % 2 == 0), at(i)) {
                ready_at = Some(i);
                break;
            }
        }
        assert_eq!(ready_at, Some(121 + SETTLE.as_secs()));
    }

    #[test]
    fn a_screen_that_keeps_changing_is_not_settled() {
        let mut s = Settle::default();
        let t0 = Instant::now();
        assert!(!s.observe(logo(), t0));
        // A spinner: a moving block.
        for i in 1..30u32 {
            let f = frame(320, 200, |x, y| {
                if (i * 10..i * 10 + 20).contains(&x) && (150..170).contains(&y) {
                    GREY
                } else {
                    BLACK
                }
            });
            assert!(!s.observe(f, t0 + Duration::from_secs(u64::from(i))), "ready at {i}");
        }
    }

    #[test]
    fn a_countdown_is_not_still_though_little_of_it_changes() {
        let mut s = Settle::default();
        let t0 = Instant::now();
        assert!(!s.observe(logo(), t0));
        // A boot menu's seconds left: one digit's cell changes each second, never back.
        for i in 1..30u32 {
            let f = frame(320, 200, |x, y| {
                let digit = (300..308).contains(&x) && (0..16).contains(&y) && (x + y + i) % 3 == 0;
                let text = y < 16 && x < 200 && x % 9 < 6;
                if digit || text { GREY } else { BLACK }
            });
            assert!(!s.observe(f, t0 + Duration::from_secs(u64::from(i))), "ready at {i}");
        }
    }

    #[test]
    fn an_os_that_keeps_the_firmware_logo_is_ready_once_it_has_long_been_still() {
        let mut s = Settle::default();
        let t0 = Instant::now();
        let long = LONG_SETTLE.as_secs();
        for i in 0..long {
            assert!(!s.observe(logo_and_text(), t0 + Duration::from_secs(i)));
        }
        assert!(s.observe(logo_and_text(), t0 + Duration::from_secs(long)));
    }

    #[test]
    fn a_firmware_with_nothing_to_boot_is_read_from_the_console() {
        let log = "BdsDxe: failed to load Boot0001 \"UEFI Misc Device\"\r\n\
                   BdsDxe: No bootable option or device was found.\r\n";
        assert_eq!(firmware_failure(log), Some("no bootable option or device"));
        let shell = "\x1b[1m\x1b[33m\x1b[40mShell> \x1b[0m";
        assert_eq!(firmware_failure(shell), Some("it started its own UEFI shell"));
        let seabios = "Booting from Hard Disk...\nBoot failed: not a bootable disk\n\n\
                       Booting from Floppy...\nBoot failed: could not read the boot disk\n\n\
                       No bootable device.\n";
        assert_eq!(firmware_failure(seabios), Some("no bootable device"));
        let booting = "Booting from Hard Disk...\nBooting from 0000:7c00\n";
        assert_eq!(firmware_failure(booting), None);
        assert_eq!(firmware_failure("atrium-init: starting init after 3.16 s"), None);
    }
}
