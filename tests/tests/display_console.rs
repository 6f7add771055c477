//! The display proxy against real QEMU (group `qemu`): `atrium-display serve` admits a
//! WebSocket viewer holding a ticket, reads the VM's VNC socket, and the viewer's image shows
//! the guest's screen; typed keys reach the guest and their output comes back in the image; only
//! the user's own viewer may ask for another screen size.

use std::time::Duration;

use anyhow::ensure;
use atrium_display_testkit::issuer::{JwksServer, TicketIssuer};
use atrium_protocol::display::{ClientMessage, caps};
use atrium_protocol::node::{DisplayEndpoint, DisplaySize};
use atrium_protocol::ticket::{Capabilities, Watermark};
use atrium_tests::display::{
    BareQemu, DisplayOnlyNode, DisplayProxy, DisplayViewer, count_color, keep_artifact,
};
use atrium_tests::node::{NodeProcess, console_image};
use atrium_tests::screen::{Glyphs, find_cells, rows_showing};
use atrium_tests::{Group, skip};
use serde_json::json;

const GREY: [u8; 3] = [0xaa, 0xaa, 0xaa];

/// A bare QEMU's BIOS screen as VM `bios`, behind a display proxy with a test ticket issuer.
struct Bios {
    qemu: BareQemu,
    node: DisplayOnlyNode,
    issuer: TicketIssuer,
    jwks: JwksServer,
    proxy: DisplayProxy,
}

impl Bios {
    /// `resizable`: the node says the VM's screen may change size.
    async fn start(resizable: bool) -> anyhow::Result<Self> {
        let qemu = BareQemu::start().await?;
        let vms = vec![(
            "bios".into(),
            DisplayEndpoint::VncUnix { path: qemu.socket.display().to_string() },
        )];
        let node = if resizable {
            DisplayOnlyNode::resizable(vms).await?
        } else {
            DisplayOnlyNode::start(vms).await?
        };
        let issuer = TicketIssuer::generate("k1");
        let jwks = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await?;
        let proxy = DisplayProxy::start(&jwks.url(), &node.socket, "").await?;
        Ok(Self { qemu, node, issuer, jwks, proxy })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_and_a_shadow_see_a_bare_qemu_bios_screen() -> anyhow::Result<()> {
    if skip(Group::Qemu, "a_viewer_and_a_shadow_see_a_bare_qemu_bios_screen") {
        return Ok(());
    }
    let Bios { qemu: _qemu, node: _node, issuer, jwks: _jwks, proxy } = Bios::start(false).await?;

    let mut user = DisplayViewer::connect(
        &proxy.ws_url("bios", &issuer.ticket("bios", Capabilities::default())),
    )
    .await?;
    let shadow_caps = Capabilities { view_only: true, shadow: true, ..Default::default() };
    let mut shadow =
        DisplayViewer::connect(&proxy.ws_url("bios", &issuer.ticket("bios", shadow_caps))).await?;
    assert_eq!(shadow.caps, caps::VIEW_ONLY | caps::SHADOW | caps::VIDEO);
    // SeaBIOS prints its banner in grey (0xa8a8a8 from the VGA DAC) on black (text mode,
    // 720x400).
    let text = |v: &DisplayViewer| count_color(&v.rgb, [0xa8, 0xa8, 0xa8]) > 1_000;
    let seen =
        user.wait_until("SeaBIOS text in the user's image", Duration::from_secs(60), text).await;
    keep_artifact("display-bios.png", &user.png());
    seen.map_err(|e| {
        anyhow::anyhow!(
            "{e} (see display-bios.png; {:?})\nproxy log:\n{}",
            user.images,
            proxy.log()
        )
    })?;
    eprintln!("bios: {} frames, {} bytes, {:?}", user.frames, user.bytes, user.images);
    shadow.wait_until("SeaBIOS text in the shadow's image", Duration::from_secs(60), text).await?;
    assert_eq!((user.width, user.height), (shadow.width, shadow.height));
    assert!(user.images.contains_key("png"), "{:?}", user.images);
    ensure!(!user.images.contains_key("jpeg"), "text was sent lossy: {:?}", user.images);
    let metrics = proxy.metrics().await?;
    assert!(metrics.contains("atrium_display_clients 2"), "{metrics}");
    assert!(metrics.contains("atrium_display_desktops 1"), "one source for both viewers");
    Ok(())
}

/// Only the user's own viewer may ask the desktop for another size: it is told the largest,
/// its requests reach the node fitted to what the screen takes, the newest winning; a shadow
/// and a view-only viewer are not told and their requests go nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_users_own_viewer_resizes_the_desktop() -> anyhow::Result<()> {
    if skip(Group::Qemu, "only_the_users_own_viewer_resizes_the_desktop") {
        return Ok(());
    }
    let Bios { qemu: _qemu, node, issuer, jwks: _jwks, proxy } = Bios::start(true).await?;
    let ticket = |caps| issuer.ticket("bios", caps);
    let mut user =
        DisplayViewer::connect(&proxy.ws_url("bios", &ticket(Capabilities::default()))).await?;
    let shadow_caps = Capabilities { view_only: true, shadow: true, ..Default::default() };
    let mut shadow = DisplayViewer::connect(&proxy.ws_url("bios", &ticket(shadow_caps))).await?;
    let watch_caps = Capabilities { view_only: true, ..Default::default() };
    let mut watcher = DisplayViewer::connect(&proxy.ws_url("bios", &ticket(watch_caps))).await?;
    for v in [&mut user, &mut shadow, &mut watcher] {
        v.pump(Duration::from_secs(10)).await?;
    }
    assert_eq!(user.max_size, Some((720, 400)), "the user's viewer is told the largest size");
    assert_eq!(shadow.max_size, None, "a shadow is told it may resize");
    assert_eq!(watcher.max_size, None, "a view-only viewer is told it may resize");

    let requests = || node.screen_requests.lock().expect("requests").clone();
    shadow.send(ClientMessage::Resize { width: 640, height: 360 }).await?;
    watcher.send(ClientMessage::Resize { width: 640, height: 360 }).await?;
    // Beyond the largest, not a multiple of 8, below the smallest: fitted.
    user.send(ClientMessage::Resize { width: 1001, height: 200 }).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while requests().is_empty() {
        ensure!(std::time::Instant::now() < deadline, "no size reached the node");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    user.send(ClientMessage::Resize { width: 517, height: 333 }).await?;
    let want = ("bios".to_owned(), DisplaySize::new(512, 333));
    while requests().last() != Some(&want) {
        ensure!(std::time::Instant::now() < deadline, "the node got {:?}", requests());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give the ignored requests time to arrive, had they been passed on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = requests();
    assert_eq!(got[0], ("bios".to_owned(), DisplaySize::new(720, 320)), "{got:?}");
    assert_eq!(got.last(), Some(&want), "{got:?}");
    assert!(
        got.iter().all(|(_, s)| *s != DisplaySize::new(640, 360)),
        "a watching viewer's size reached the node: {got:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_types_a_command_into_the_console_and_sees_its_output() -> anyhow::Result<()> {
    if skip(Group::Qemu, "a_viewer_types_a_command_into_the_console_and_sees_its_output") {
        return Ok(());
    }
    let image = console_image()?;
    let node = NodeProcess::start(&image, "").await?;
    let spec = json!({ "image": "console", "vcpus": 1, "memory_mib": 256, "display": "1024x768" });
    let id = node.ready_vm(&spec, Duration::from_secs(240)).await?;

    let issuer = TicketIssuer::generate("k1");
    let jwks = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await?;
    let proxy = DisplayProxy::start(&jwks.url(), &node.local_socket(), "").await?;
    let rights = Capabilities { clipboard_copy_out: true, ..Default::default() };
    let url = proxy.ws_url(&id, &issuer.ticket(&id, rights));
    let mut viewer = DisplayViewer::connect(&url).await?;
    assert_eq!((viewer.width, viewer.height), (1024, 768));
    viewer
        .wait_until("console text", Duration::from_secs(60), |v| count_color(&v.rgb, GREY) > 2_000)
        .await?;

    let word = format!("atrium-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    viewer.type_text(&format!("echo {word}\n")).await?;
    let n = word.len();
    // The output line shows the word alone, and the line above (the command as typed) shows
    // the same cells: the guest ran what the viewer typed, and its output reached the viewer.
    let found = viewer
        .wait_until("the command's output in the image", Duration::from_secs(60), |v| {
            let grid = v.screen().cells();
            rows_showing(&grid, &word, &Glyphs::default())
                .into_iter()
                .any(|r| r > 0 && find_cells(&grid[r - 1], &grid[r][..n]).is_some())
        })
        .await;
    keep_artifact("display-console-typed.png", &viewer.png());
    found.map_err(|e| {
        anyhow::anyhow!("{e} (see display-console-typed.png)\nproxy log:\n{}", proxy.log())
    })?;

    // A program in the desktop copies (the console's clipboard is a file the agent watches):
    // the text reaches the viewer, whose ticket lets the clipboard out.
    viewer.type_text(&format!("echo {word} | tee clipboard.txt\n")).await?;
    let copied = format!("{word}\n");
    viewer
        .wait_until("the desktop's clipboard at the viewer", Duration::from_secs(60), |v| {
            v.clipboard.as_deref() == Some(copied.as_str())
        })
        .await
        .map_err(|e| {
            anyhow::anyhow!("{e}: it has {:?}\nproxy log:\n{}", viewer.clipboard, proxy.log())
        })?;

    // A view-only shadow sees the same screen and cannot type.
    let shadow_caps = Capabilities { view_only: true, shadow: true, ..Default::default() };
    let mut shadow =
        DisplayViewer::connect(&proxy.ws_url(&id, &issuer.ticket(&id, shadow_caps))).await?;
    shadow
        .wait_until("the word in the shadow's image", Duration::from_secs(60), |v| {
            !rows_showing(&v.screen().cells(), &word, &Glyphs::default()).is_empty()
        })
        .await?;
    shadow.type_text("xyz").await?;
    atrium_tests::wait_for("six dropped key events", Duration::from_secs(10), || async {
        let m = proxy.metrics().await.ok()?;
        m.contains("atrium_display_input_dropped_total 6").then_some(())
    })
    .await?;
    Ok(())
}

/// The display proxy needs no root: run as a user and group of its own (a number no account
/// has), it reaches the node's local socket and the VM's display socket through the group the
/// node gives them (`node.local_socket_group`), and shows the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_display_proxy_runs_without_root_through_the_nodes_group() -> anyhow::Result<()> {
    if skip(Group::Qemu, "the_display_proxy_runs_without_root_through_the_nodes_group") {
        return Ok(());
    }
    const PROXY_ID: u32 = 250_123;
    let image = console_image()?;
    let node = NodeProcess::start(&image, &format!("local_socket_group = \"{PROXY_ID}\"")).await?;
    let spec = json!({ "image": "console", "vcpus": 1, "memory_mib": 256, "display": "1024x768" });
    let id = node.ready_vm(&spec, Duration::from_secs(240)).await?;

    let issuer = TicketIssuer::generate("k1");
    let jwks = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await?;
    let proxy =
        DisplayProxy::start_unprivileged(&jwks.url(), &node.local_socket(), PROXY_ID).await?;
    let pid = proxy.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default().to_owned();
    ensure!(uid.split_whitespace().skip(1).all(|u| u == PROXY_ID.to_string()), "{uid}");
    let url = proxy.ws_url(&id, &issuer.ticket(&id, Capabilities::default()));
    let mut viewer = DisplayViewer::connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nproxy log:\n{}", proxy.log()))?;
    viewer
        .wait_until("console text", Duration::from_secs(60), |v| count_color(&v.rgb, GREY) > 2_000)
        .await?;
    Ok(())
}

/// Whether two images differ at most in one text cell (SeaBIOS's cursor blinks).
fn same_but_cursor(a: &[u8], b: &[u8], width: u16) -> bool {
    let w = usize::from(width);
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for (i, _) in a.chunks_exact(3).zip(b.chunks_exact(3)).enumerate().filter(|(_, (p, q))| p != q)
    {
        let (x, y) = (i % w, i / w);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    a.len() == b.len() && (x0 == usize::MAX || (x1 - x0 < 16 && y1 - y0 < 20))
}

/// Pumps until the image stands still but for the cursor (lossy areas refined).
async fn settle(v: &mut DisplayViewer) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let before = v.rgb.clone();
        let until = std::time::Instant::now() + Duration::from_millis(1500);
        while std::time::Instant::now() < until {
            v.pump(Duration::from_millis(300)).await?;
        }
        if same_but_cursor(&before, &v.rgb, v.width) {
            return Ok(());
        }
        ensure!(std::time::Instant::now() < deadline, "the screen never settled");
    }
}

/// `rgb` with `text` (the time filled in at `minute`) drawn as the proxy draws a watermark.
fn watermarked(rgb: &[u8], w: u16, h: u16, mark: &Watermark, minute: i64) -> Vec<u8> {
    use atrium_display::framebuffer::Framebuffer;
    use atrium_display::watermark::{Font, Mask, Pattern, Spec, Style};
    let font = Font::load(std::path::Path::new(atrium_display::config::DEFAULT_WATERMARK_FONT))
        .expect("the watermark font (fonts-dejavu-core)");
    let style =
        Style { opacity: mark.opacity, size: mark.size, angle: mark.angle, spacing: mark.spacing };
    let spec = Spec { lines: mark.text.split('\n').map(str::to_owned).collect(), style };
    let mask = Mask::new(&Pattern::new(&font, &spec.lines_at(minute), style), w, h);
    let mut fb = Framebuffer::new(w, h);
    for (p, c) in fb.pixels_mut().iter_mut().zip(rgb.chunks_exact(3)) {
        *p = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
    }
    let all = fb.bounds();
    mask.blend(&mut fb, all);
    fb.pixels()
        .iter()
        .flat_map(|p| {
            let [_, r, g, b] = p.to_be_bytes();
            [r, g, b]
        })
        .collect()
}

/// A viewer whose ticket asks for a watermark gets the desktop's pixels with the watermark drawn
/// in by the proxy (exactly: the same text, font, angle and strength drawn over what a viewer
/// without one saw), never a frame without it; a viewer already watching sees it too while that
/// viewer is there, and the plain screen again once it has gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watermark_is_drawn_into_the_pixels_every_viewer_of_the_desktop_receives()
-> anyhow::Result<()> {
    let name = "a_watermark_is_drawn_into_the_pixels_every_viewer_of_the_desktop_receives";
    if skip(Group::Qemu, name) {
        return Ok(());
    }
    let Bios { qemu: _qemu, node: _node, issuer, jwks: _jwks, proxy } = Bios::start(false).await?;
    let mark = Watermark {
        text: "alice · 10.0.0.5\n{time}".into(),
        opacity: 40,
        size: 18,
        angle: 30,
        spacing: 4,
    };
    let marked_ticket = || {
        let c = TicketIssuer::watermarked_claims("bios", Capabilities::default(), 30, mark.clone());
        issuer.sign(&c)
    };
    let mut plain = DisplayViewer::connect(
        &proxy.ws_url("bios", &issuer.ticket("bios", Capabilities::default())),
    )
    .await?;
    let text = |v: &DisplayViewer| count_color(&v.rgb, [0xa8, 0xa8, 0xa8]) > 1_000;
    plain.wait_until("SeaBIOS text", Duration::from_secs(60), text).await?;
    // SeaBIOS redraws now and then (a boot retry): compare screens taken while it stood still.
    let mut last = String::new();
    for attempt in 1..=3 {
        settle(&mut plain).await?;
        let before = plain.rgb.clone();
        let (w, h) = (plain.width, plain.height);
        let mut marked = DisplayViewer::connect(&proxy.ws_url("bios", &marked_ticket())).await?;
        let first_frame = marked.pump(Duration::from_secs(20)).await?;
        ensure!(first_frame, "no frame for the watermarked viewer");
        let minute = i64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() / 60,
        )?;
        // Its very first frame already carries the watermark (no plain frame, even briefly).
        let differs = marked.rgb.iter().zip(&before).filter(|(a, b)| a != b).count();
        ensure!(differs > 1_000, "the first frame has no watermark ({differs} bytes differ)");
        settle(&mut marked).await?;
        settle(&mut plain).await?;
        let expected = [minute, minute + 1, minute - 1]
            .into_iter()
            .map(|m| watermarked(&before, w, h, &mark, m));
        let matched = expected.clone().any(|e| same_but_cursor(&e, &marked.rgb, w));
        keep_artifact("display-watermark.png", &marked.png());
        if matched {
            // Both settled one after the other: the minute may have turned, or the screen
            // changed, between the two; they catch up with each other within a few rounds.
            let mut rounds = 0;
            while !same_but_cursor(&plain.rgb, &marked.rgb, w) && rounds < 5 {
                settle(&mut plain).await?;
                settle(&mut marked).await?;
                rounds += 1;
            }
            keep_artifact("display-watermark-other-viewer.png", &plain.png());
            ensure!(
                same_but_cursor(&plain.rgb, &marked.rgb, w),
                "the viewer without a watermark in its ticket sees the desktop's watermark too"
            );
            let inked = marked
                .rgb
                .chunks_exact(3)
                .zip(before.chunks_exact(3))
                .filter(|(a, b)| a != b)
                .count();
            eprintln!(
                "watermark: {inked} of {} pixels inked, attempt {attempt}",
                usize::from(w) * usize::from(h)
            );
            drop(marked);
            plain
                .wait_until("the plain screen again", Duration::from_secs(30), |v| {
                    same_but_cursor(&v.rgb, &before, w)
                })
                .await?;
            return Ok(());
        }
        let off = expected.map(|e| e.iter().zip(&marked.rgb).filter(|(a, b)| a != b).count()).min();
        last = format!("attempt {attempt}: {off:?} bytes differ from the expected watermark");
        eprintln!("watermark: {last}");
        drop(marked);
    }
    anyhow::bail!("the watermarked image never matched (see display-watermark.png): {last}")
}
