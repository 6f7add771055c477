//! Watermarks and session recording as people use them, in Chromium (tests/browser/recording.mjs):
//! real console desktops (QEMU), the real display proxy, node and broker. The watermark is in
//! the pixels the browser receives where policy says so and nowhere else; the recording of the
//! watermarked session plays in the admin portal, and seeking into its middle (and to a later
//! moment) shows the screens the user saw then; a chunk changed on the volume is reported.

use std::time::Duration;

use anyhow::Context;
use atrium_tests::broker::{policies_with, pool_policy};
use atrium_tests::browser::{CHROMIUM, Driver, artifacts};
use atrium_tests::screen::Screen;
use atrium_tests::stack::Stack;
use atrium_tests::{Group, TempDir, skip};
use serde_json::json;

/// The sixteen colours of the VGA text console: a console screen has no other.
const VGA: [[u8; 3]; 16] = [
    [0x00, 0x00, 0x00],
    [0x00, 0x00, 0xaa],
    [0x00, 0xaa, 0x00],
    [0x00, 0xaa, 0xaa],
    [0xaa, 0x00, 0x00],
    [0xaa, 0x00, 0xaa],
    [0xaa, 0x55, 0x00],
    [0xaa, 0xaa, 0xaa],
    [0x55, 0x55, 0x55],
    [0x55, 0x55, 0xff],
    [0x55, 0xff, 0x55],
    [0x55, 0xff, 0xff],
    [0xff, 0x55, 0x55],
    [0xff, 0x55, 0xff],
    [0xff, 0xff, 0x55],
    [0xff, 0xff, 0xff],
];

/// Pixels in no colour of the console: a watermark blended over it.
fn blended(s: &Screen) -> usize {
    s.rgb.chunks_exact(3).filter(|p| !VGA.iter().any(|c| c[..] == **p)).count()
}

/// Pixels that differ between two screens of one size (`None` when the sizes differ).
fn differing(a: &Screen, b: &Screen) -> Option<usize> {
    ((a.width, a.height) == (b.width, b.height))
        .then(|| a.rgb.chunks_exact(3).zip(b.rgb.chunks_exact(3)).filter(|(x, y)| x != y).count())
}

/// A console cell where the cursor blinks (8x16) and a little more: the recording's clock
/// starts when the proxy takes the viewer, a moment after the broker dates it.
const CURSOR_SLACK: usize = 300;

fn load(path: &str) -> anyhow::Result<Screen> {
    Screen::from_png(&std::fs::read(path).with_context(|| format!("reading {path}"))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watermarked_session_is_recorded_and_played_back_in_the_browser() -> anyhow::Result<()> {
    let name = "a_watermarked_session_is_recorded_and_played_back_in_the_browser";
    if skip(Group::Browser, name) || skip(Group::Qemu, name) || skip(Group::Ldap, name) {
        return Ok(());
    }
    let policies =
        policies_with("record", &pool_policy("rec", &["watermark", "record", "record_input"]));
    let dir = policies.path().to_owned();
    let stack = Stack::start_with(|o| o.policies_dir = Some(dir), None).await?;
    let (plain, rec) = tokio::join!(
        stack.pool("plain", "console", 1, "1024x768"),
        stack.pool("rec", "console", 1, "1024x768")
    );
    plain?;
    rec?;
    let tmp = TempDir::new("e2e-recording");
    let cfg = json!({
        "broker": stack.broker.url, "chromium": CHROMIUM, "artifacts": artifacts(), "tmp": tmp.path(),
    });
    let mut driver = Driver::start("recording.mjs", &cfg)?;
    let run = async {
        while let Some(msg) = driver.next().await? {
            if msg["done"] == true {
                eprintln!("e2e recording: seeks took {} ms", msg["seek_ms"]);
                continue;
            }
            let answer = match msg["phase"].as_str() {
                Some("console") => {
                    let s = load(msg["shot"].as_str().context("shot")?)?;
                    // Text on the screen (watermarked or not).
                    let text = s.count([0xaa, 0xaa, 0xaa]) > 500;
                    if text { "ok" } else { "more" }
                }
                Some("plain") => {
                    let n = blended(&load(msg["shot"].as_str().context("shot")?)?);
                    eprintln!("e2e recording: {n} blended pixels without a watermark");
                    if n == 0 { "ok" } else { "no" }
                }
                Some("watermarked") => {
                    let s = load(msg["shot"].as_str().context("shot")?)?;
                    let n = blended(&s);
                    eprintln!("e2e recording: {n} blended pixels with the watermark");
                    // Tiled over the whole screen: in every quarter of it.
                    let (w, h) = (s.width, s.height);
                    let quarters =
                        [(0, 0), (w / 2, 0), (0, h / 2), (w / 2, h / 2)].iter().all(|&(x0, y0)| {
                            (y0..y0 + h / 2)
                                .any(|y| (x0..x0 + w / 2).any(|x| !VGA.contains(&s.pixel(x, y))))
                        });
                    if n > 2_000 && quarters { "ok" } else { "no" }
                }
                Some("differ") => {
                    let a = load(msg["shot"].as_str().context("shot")?)?;
                    let b = load(msg["other"].as_str().context("other")?)?;
                    let d = differing(&a, &b).unwrap_or(usize::MAX);
                    eprintln!("e2e recording: her two moments differ in {d} pixels");
                    if d > 2_000 { "ok" } else { "no" }
                }
                Some("same") => {
                    let played = load(msg["shot"].as_str().context("shot")?)?;
                    let seen = load(msg["other"].as_str().context("other")?)?;
                    let d = differing(&played, &seen);
                    eprintln!("e2e recording: played and seen differ in {d:?} pixels");
                    // The watermark she saw is in the recording too.
                    if d.is_some_and(|d| d <= CURSOR_SLACK) && blended(&played) > 2_000 {
                        "ok"
                    } else {
                        "no"
                    }
                }
                Some("tamper") => {
                    let id = msg["id"].as_str().context("id")?;
                    let folder = stack.broker.dir().join("recordings").join(id);
                    let file = std::fs::read_dir(&folder)?
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|e| e == "chunk"))
                        .max()
                        .context("a chunk file")?;
                    let mut bytes = std::fs::read(&file)?;
                    let last = bytes.last_mut().context("an empty chunk")?;
                    *last ^= 0xff;
                    std::fs::write(&file, bytes)?;
                    "ok"
                }
                other => anyhow::bail!("unknown phase {other:?}"),
            };
            driver.answer(answer).await?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .context("the browser test took over 10 minutes")??;
    if let Err(e) = driver.finish().await {
        anyhow::bail!("{e}\n{}", stack.logs());
    }
    Ok(())
}
