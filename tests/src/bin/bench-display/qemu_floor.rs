//! What QEMU's VNC server itself allows: key-to-update times measured straight on the VM's VNC
//! socket, with no proxy and no browser in between, after the browsers have left.
//!
//! - `plain`: a key, then the first update that carries pixels (what any VNC client gets);
//! - `after_tick_0` and `after_tick_25`: the key sent 0 and 25 ms after one of QEMU's refresh
//!   checks (seen through a pending forced update of one pixel), which shows how long the guest
//!   takes to draw the echo and that the rest is QEMU's refresh timer;
//! - `nudged`: with a no-op client message every 25 ms, which keeps QEMU's refresh timer at its
//!   fastest (what `keep_refresh_after_input_ms` does).
//!
//! Keys are spaced by random gaps, so they do not fall at one phase of the 30 ms timer.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::Rng;
use serde_json::{Map, Value, json};

use super::round;

/// Keys per measurement.
const KEYS: usize = 30;

/// One framebuffer update: when it arrived, the pixels of its raw rectangles, their count.
#[derive(Debug, Clone, Copy)]
struct Update {
    at: Instant,
    pixels: u64,
    raw_rects: u32,
}

#[derive(Debug, Default)]
struct Log {
    updates: Mutex<Vec<Update>>,
    arrived: Condvar,
    closed: AtomicBool,
}

impl Log {
    fn len(&self) -> usize {
        self.updates.lock().expect("log lock").len()
    }

    /// The first update from index `from` on that satisfies `pred`, waiting up to `timeout`.
    fn wait(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Update) -> bool,
    ) -> Option<Update> {
        let end = Instant::now() + timeout;
        let mut u = self.updates.lock().expect("log lock");
        loop {
            if let Some(hit) = u.iter().skip(from).find(|x| pred(x)) {
                return Some(*hit);
            }
            let left = end.checked_duration_since(Instant::now())?;
            if self.closed.load(Ordering::Relaxed) {
                return None;
            }
            u = self.arrived.wait_timeout(u, left).expect("log lock").0;
        }
    }
}

struct Client {
    w: Arc<Mutex<UnixStream>>,
    width: u16,
    height: u16,
    log: Arc<Log>,
}

impl Client {
    fn connect(path: &Path) -> anyhow::Result<Self> {
        let mut s = UnixStream::connect(path)
            .with_context(|| format!("connecting to {}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf)?;
        s.write_all(b"RFB 003.008\n")?;
        let mut n = [0u8; 1];
        s.read_exact(&mut n)?;
        let mut types = vec![0u8; usize::from(n[0])];
        s.read_exact(&mut types)?;
        if !types.contains(&1) {
            bail!("the VNC server wants authentication");
        }
        s.write_all(&[1])?;
        let mut result = [0u8; 4];
        s.read_exact(&mut result)?;
        s.write_all(&[1])?; // shared
        let mut init = [0u8; 24];
        s.read_exact(&mut init)?;
        let width = u16::from_be_bytes([init[0], init[1]]);
        let height = u16::from_be_bytes([init[2], init[3]]);
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
        let mut name = vec![0u8; usize::try_from(name_len.min(4096))?];
        s.read_exact(&mut name)?;
        s.write_all(&[0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])?;
        let encodings: [i32; 7] = [0, 1, -223, -308, -258, -239, -224];
        let mut m = vec![2, 0, 0, 7];
        for e in encodings {
            m.extend_from_slice(&e.to_be_bytes());
        }
        s.write_all(&m)?;
        s.set_read_timeout(None)?;
        let log = Arc::new(Log::default());
        let reader_log = Arc::clone(&log);
        let reader = s.try_clone()?;
        std::thread::Builder::new().name("qemu-probe".into()).spawn(move || {
            let _ = read_updates(reader, &reader_log);
            reader_log.closed.store(true, Ordering::Relaxed);
            reader_log.arrived.notify_all();
        })?;
        Ok(Self { w: Arc::new(Mutex::new(s)), width, height, log })
    }

    fn send(&self, m: &[u8]) -> std::io::Result<()> {
        self.w.lock().expect("writer lock").write_all(m)
    }

    fn request(&self, incremental: bool, w: u16, h: u16) -> std::io::Result<()> {
        let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
        m.extend_from_slice(&w.to_be_bytes());
        m.extend_from_slice(&h.to_be_bytes());
        self.send(&m)
    }

    fn key(&self, keysym: u32, down: bool) -> std::io::Result<()> {
        let mut m = vec![4, u8::from(down), 0, 0];
        m.extend_from_slice(&keysym.to_be_bytes());
        self.send(&m)
    }

    fn press(&self, keysym: u32) -> std::io::Result<()> {
        self.key(keysym, true)?;
        std::thread::sleep(Duration::from_millis(2));
        self.key(keysym, false)
    }

    /// Presses a key and returns how long until an update with more than `forced_pixels`
    /// pixels (or more than one raw rectangle) arrives, asking for updates as they come.
    fn measure_key(&self, keysym: u32, forced_pixels: u64) -> anyhow::Result<Option<f64>> {
        let mut seen = self.log.len();
        let t0 = Instant::now();
        self.press(keysym)?;
        self.request(true, self.width, self.height)?;
        let end = t0 + Duration::from_millis(500);
        loop {
            let Some(left) = end.checked_duration_since(Instant::now()) else { return Ok(None) };
            let Some(u) = self.log.wait(seen, left, |_| true) else { return Ok(None) };
            seen = self.log.len();
            if u.pixels > forced_pixels || u.raw_rects > 1 {
                return Ok(Some(u.at.duration_since(t0).as_secs_f64() * 1e3));
            }
            self.request(true, self.width, self.height)?;
        }
    }
}

fn read_updates(mut s: UnixStream, log: &Log) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    loop {
        s.read_exact(&mut byte)?;
        match byte[0] {
            0 => {
                let mut h = [0u8; 3];
                s.read_exact(&mut h)?;
                let count = u16::from_be_bytes([h[1], h[2]]);
                let (mut pixels, mut raw_rects) = (0u64, 0u32);
                for _ in 0..count {
                    let mut r = [0u8; 12];
                    s.read_exact(&mut r)?;
                    let w = u64::from(u16::from_be_bytes([r[4], r[5]]));
                    let h = u64::from(u16::from_be_bytes([r[6], r[7]]));
                    let enc = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
                    let skip = match enc {
                        0 => {
                            pixels += w * h;
                            raw_rects += 1;
                            w * h * 4
                        }
                        1 => 4,
                        -308 => {
                            let mut n = [0u8; 4];
                            s.read_exact(&mut n)?;
                            u64::from(n[0]) * 16
                        }
                        -239 => w * h * 4 + w.div_ceil(8) * h,
                        -224 => break,
                        _ => 0,
                    };
                    std::io::copy(&mut (&mut s).take(skip), &mut std::io::sink())?;
                }
                log.updates.lock().expect("log lock").push(Update {
                    at: Instant::now(),
                    pixels,
                    raw_rects,
                });
                log.arrived.notify_all();
            }
            2 | 150 => {}
            3 => {
                let mut h = [0u8; 7];
                s.read_exact(&mut h)?;
                let n = u64::from(u32::from_be_bytes([h[3], h[4], h[5], h[6]]));
                std::io::copy(&mut (&mut s).take(n), &mut std::io::sink())?;
            }
            other => {
                return Err(std::io::Error::other(format!("server message {other}")));
            }
        }
    }
}

fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// Letters a to z, over and over.
fn letter(i: usize) -> u32 {
    u32::from(b'a') + u32::try_from(i % 26).expect("below 26")
}

pub fn run(vnc: &Path) -> anyhow::Result<Map<String, Value>> {
    let c = Client::connect(vnc)?;
    c.request(false, c.width, c.height)?;
    c.log.wait(0, Duration::from_secs(10), |u| u.pixels > 0).context("no first update")?;
    let mut rng = rand::thread_rng();
    let gap = |rng: &mut rand::rngs::ThreadRng| Duration::from_millis(rng.gen_range(120..220));

    let mut plain = Vec::new();
    for i in 0..KEYS {
        std::thread::sleep(gap(&mut rng));
        if let Some(ms) = c.measure_key(letter(i), 0)? {
            plain.push(ms);
        }
    }

    // Keys placed relative to a refresh check: a pending forced update of one pixel (which
    // QEMU sends as a 16x1 block) is answered at the next check.
    let mut aligned = |offset_ms: u64| -> anyhow::Result<Vec<f64>> {
        let mut out = Vec::new();
        for i in 0..KEYS {
            std::thread::sleep(gap(&mut rng));
            let from = c.log.len();
            c.request(false, 1, 1)?;
            let Some(tick) = c.log.wait(from, Duration::from_millis(500), |u| u.pixels > 0) else {
                continue;
            };
            let at = tick.at + Duration::from_millis(offset_ms);
            if let Some(d) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            if let Some(ms) = c.measure_key(letter(i), 16)? {
                out.push(ms);
            }
        }
        Ok(out)
    };
    let mut after_0 = aligned(0)?;
    let mut after_25 = aligned(25)?;

    let nudging = Arc::new(AtomicBool::new(true));
    let (w, flag) = (Arc::clone(&c.w), Arc::clone(&nudging));
    let nudger = std::thread::spawn(move || {
        while flag.load(Ordering::Relaxed) {
            let nudge = [255u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            if w.lock().expect("writer lock").write_all(&nudge).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    });
    let mut nudged = Vec::new();
    for i in 0..KEYS {
        std::thread::sleep(gap(&mut rng));
        if let Some(ms) = c.measure_key(letter(i), 0)? {
            nudged.push(ms);
        }
    }
    nudging.store(false, Ordering::Relaxed);
    let _ = nudger.join();
    // Leave the shell's line empty: Ctrl+U.
    c.key(0xffe3, true)?;
    c.press(u32::from(b'u'))?;
    c.key(0xffe3, false)?;

    let m = |v: &mut Vec<f64>| median(v).map(|x| round(x, 1));
    let out = json!({
        "qemu_key_to_update_ms_p50": m(&mut plain),
        "qemu_key_to_update_nudged_ms_p50": m(&mut nudged),
        "qemu_key_0ms_after_refresh_ms_p50": m(&mut after_0),
        "qemu_key_25ms_after_refresh_ms_p50": m(&mut after_25),
        "qemu_probe_samples": [plain.len(), after_0.len(), after_25.len(), nudged.len()],
    });
    eprintln!("bench: QEMU's VNC server alone: {out}");
    Ok(out.as_object().cloned().unwrap_or_default())
}
