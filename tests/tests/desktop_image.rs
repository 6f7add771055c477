//! The desktop image on a real node (qemu runtime; TCG on these machines): single sign-on into a
//! graphical session, what the screen shows, the screen's size changed on request, typing, the
//! clipboard both ways, and homes that a dedicated user keeps and a floating user does not.
//! Group `qemu` (and `ldap` for the sign-in through the broker).
//!
//! Boots are slow under TCG, so one test boots the dedicated user's desktop once and makes all
//! the on-screen and clipboard assertions on it; the persistence flows then need a few more
//! desktops (a new one with the same home disk, and floating ones), booted two at a time.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use atrium_protocol::node::{ClipboardState, DisplaySize, VmInfo, VmState};
use atrium_tests::broker::{Broker, BrokerOptions};
use atrium_tests::node::{NodeProcess, cgroups_named, desktop_image, processes_with};
use atrium_tests::rfb::RfbClient;
use atrium_tests::screen::{
    self, Glyphs, Grid, PANEL, Screen, find_cells, panel_rows, rows_showing,
};
use atrium_tests::slapd::Slapd;
use atrium_tests::{Group, skip, wait_for};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

const BOOT: Duration = Duration::from_secs(300);
const SCREEN_WAIT: Duration = Duration::from_secs(120);
/// How long the guest's clipboard may take to show what was copied.
const CLIPBOARD_WAIT: Duration = Duration::from_secs(120);

/// Colours of the desktop image (hypervisor-node/src/image/desktop/jwmrc.in, Xresources, and
/// the agent's sign-in screen).
const DESKTOP: [u8; 3] = [0x2f, 0x5d, 0x8a];
const GREETER: [u8; 3] = [0x24, 0x31, 0x3f];
const TERMINAL: [u8; 3] = [0xff, 0xff, 0xff];
/// X keysyms of the keys that open a terminal from the panel (Ctrl+Alt+T, desktop/jwmrc.in).
const KEYSYM_CONTROL_L: u32 = 0xffe3;
const KEYSYM_ALT_L: u32 = 0xffe9;
/// The session's terminal: `xterm -geometry 90x26`, 2-pixel inner border.
const TERM_COLS: u32 = 90;
const TERM_ROWS: u32 = 26;
const TERM_BORDER: u32 = 2;

fn hex(n: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..n].to_owned()
}

/// Takes screenshots until `check` finds what it looks for; fails naming the last one.
async fn wait_screen<T>(
    node: &NodeProcess,
    id: &str,
    name: &str,
    what: &str,
    mut check: impl FnMut(&Screen) -> Option<T>,
) -> anyhow::Result<(Screen, T)> {
    let deadline = Instant::now() + SCREEN_WAIT;
    loop {
        let s = node.screenshot(id, name).await?;
        if let Some(v) = check(&s) {
            return Ok((s, v));
        }
        ensure!(Instant::now() < deadline, "{what} never showed on screen (see {name})");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

fn share(s: &Screen, color: [u8; 3]) -> f64 {
    let n = u32::try_from(s.count(color)).unwrap_or(u32::MAX);
    f64::from(n) / f64::from(s.width * s.height)
}

/// The session's terminal: its cell grid, from the white rectangle of its text area.
fn terminal_grid(s: &Screen) -> Option<Grid> {
    let (x0, y0, x1, y1) = s.region_of(TERMINAL, 300)?;
    let (w, h) = ((x1 - x0).checked_sub(2 * TERM_BORDER)?, (y1 - y0).checked_sub(2 * TERM_BORDER)?);
    (w % TERM_COLS == 0 && h % TERM_ROWS == 0).then_some(Grid {
        x: x0 + TERM_BORDER,
        y: y0 + TERM_BORDER,
        cell_w: w / TERM_COLS,
        cell_h: h / TERM_ROWS,
        cols: TERM_COLS,
        rows: TERM_ROWS,
    })
}

/// Creates a desktop VM for `user`, waits until it is ready and its agent confirmed the session.
async fn signed_in_desktop(
    node: &NodeProcess,
    user: &Value,
    persistent_disk: Option<&str>,
) -> anyhow::Result<(VmInfo, Duration, Duration)> {
    let mut spec = json!({
        "image": "desktop", "vcpus": 1, "memory_mib": 512, "display": "1024x768", "user": user,
    });
    if let Some(d) = persistent_disk {
        spec["persistent_disk"] = json!(d);
    }
    let t0 = Instant::now();
    let (status, body) = node.call("POST", "/api/v1/vms", Some(&spec)).await?;
    ensure!(status == 201, "create: {status} {}", String::from_utf8_lossy(&body));
    let created: VmInfo = serde_json::from_slice(&body)?;
    let id = created.id.clone();
    let ready = node.wait_settled(&id, BOOT).await?;
    ensure!(
        ready.state == VmState::Ready,
        "VM is {:?}: {:?}\nconsole:\n{}\nnode log:\n{}",
        ready.state,
        ready.error,
        node.console_log(&id).await.unwrap_or_default(),
        node.log()
    );
    let boot = t0.elapsed();
    let username = user["username"].as_str().context("username")?.to_owned();
    let confirmed = wait_for("the session to be confirmed", Duration::from_secs(150), || async {
        node.vm(&id).await.ok().filter(|v| v.user.as_deref() == Some(username.as_str()))
    })
    .await;
    if let Err(e) = confirmed {
        bail!("{e}\nconsole:\n{}", node.console_log(&id).await.unwrap_or_default());
    }
    let session = t0.elapsed() - boot;
    Ok((ready, boot, session))
}

async fn vnc(info: &VmInfo) -> anyhow::Result<RfbClient> {
    let atrium_protocol::node::DisplayEndpoint::VncUnix { path } = &info.display_endpoint else {
        bail!("expected a VNC socket, got {:?}", info.display_endpoint);
    };
    let mut rfb = RfbClient::connect(Path::new(path)).await?;
    ensure!(rfb.enable_qemu_ext_keys().await?, "QEMU's VNC server has no extended key event");
    Ok(rfb)
}

/// Waits for the session's terminal to show its first prompt.
async fn terminal_ready(node: &NodeProcess, id: &str, name: &str) -> anyhow::Result<Grid> {
    let (_, grid) = wait_screen(node, id, name, "the terminal's prompt", |s| {
        let grid = terminal_grid(s)?;
        let cells = s.cells_in(&grid, TERMINAL);
        cells[0].iter().any(Option::is_some).then_some(grid)
    })
    .await?;
    Ok(grid)
}

/// A PNG file of `width`x`height` pixels of noise (it hardly compresses).
fn noise_png(width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let pixels: Vec<u8> = (0..width * height * 3)
        .map(|_| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 56) as u8
        })
        .collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&pixels)?;
    Ok(out)
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a shell command in the session's terminal and waits for the clipboard the command sets.
async fn run_for_clipboard(
    node: &NodeProcess,
    rfb: &mut RfbClient,
    id: &str,
    after: u64,
    command: &str,
    expect: &str,
) -> anyhow::Result<ClipboardState> {
    rfb.type_text(&format!("{command}\n")).await?;
    match node.wait_clipboard(id, after, expect, CLIPBOARD_WAIT).await {
        Ok(c) => Ok(c),
        Err(e) => {
            let shot = format!("desktop-{id}-no-clipboard.png");
            let _ = node.screenshot(id, &shot).await;
            let log = node.console_log(id).await.unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "{e} after `{command}` (see {shot}); console:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        }
    }
}

/// Signs the user out and removes the VM; only a persistent disk may stay.
async fn sign_out_and_delete(node: &NodeProcess, id: &str, shot: &str) -> anyhow::Result<()> {
    let (status, body) = node.call("DELETE", &format!("/api/v1/vms/{id}/session"), None).await?;
    ensure!(status == 200, "end session: {status} {}", String::from_utf8_lossy(&body));
    // The agent ends the session (its files written out) and shows the sign-in screen again.
    wait_screen(node, id, shot, "the sign-in screen after sign-out", |s| {
        (share(s, GREETER) > 0.9).then_some(())
    })
    .await?;
    let (status, _) = node.call("DELETE", &format!("/api/v1/vms/{id}"), None).await?;
    ensure!(status == 204, "delete: {status}");
    ensure!(processes_with(&format!("guest=atrium-{id}")).is_empty(), "QEMU of {id} still runs");
    ensure!(!node.state_dir.join("vms").join(id).exists(), "the folder of {id} remains");
    ensure!(cgroups_named(id).is_empty(), "cgroups of {id} remain");
    Ok(())
}

fn disks(node: &NodeProcess) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(node.state_dir.join("disks"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desktop_signs_in_draws_types_shares_the_clipboard_and_keeps_dedicated_homes()
-> anyhow::Result<()> {
    if skip(
        Group::Qemu,
        "desktop_signs_in_draws_types_shares_the_clipboard_and_keeps_dedicated_homes",
    ) {
        return Ok(());
    }
    let image = desktop_image()?;
    let node = NodeProcess::start(&image, "").await?;
    let disk = format!("alice-home-{}", hex(6));
    let alice = json!({
        "username": "alice", "display_name": "Alice Example", "uid": 20001, "gid": 20001,
        "keyboard_layout": "us",
    });

    // 1. A dedicated desktop: ready (the sign-in screen drawn), then the node tells the agent
    //    who signed in and the agent confirms once the user's session has drawn its panel.
    let (a, boot, session) = signed_in_desktop(&node, &alice, Some(&disk)).await?;
    let id = a.id.clone();
    eprintln!(
        "desktop: create to ready {} ms, ready to session drawn {} ms",
        boot.as_millis(),
        session.as_millis()
    );

    // 2. The screen: the desktop and its panel, no sign-in screen, and the panel shows who is
    //    signed in ("Alice Example (alice)" in the panel's monospace font: 21 cells whose
    //    alike and unlike characters are alike and unlike cells).
    let label = "Alice Example (alice)";
    let (shot, (band, at)) = wait_screen(&node, &id, "desktop-session.png", "the panel", |s| {
        let band = panel_rows(s)?;
        let at = s.find_monospace(band.0, band.1, label, PANEL, &Glyphs::default())?;
        Some((band, at))
    })
    .await?;
    assert_eq!((shot.width, shot.height), (1024, 768));
    assert!(share(&shot, GREETER) < 0.01, "the sign-in screen still shows");
    assert!(share(&shot, DESKTOP) > 0.2, "little desktop background ({})", share(&shot, DESKTOP));
    assert!(band.1 - band.0 >= 20, "the panel is {} pixels high", band.1 - band.0);
    assert!(at.0 > shot.width / 2, "the user's name is not on the panel's right: {at:?}");
    assert!(
        shot.find_monospace(band.0, band.1, "Bob Example (alice)", PANEL, &Glyphs::default())
            .is_none(),
        "the label check accepts another name"
    );

    // 2b. The screen changes size on request (the viewer's window), within what the VM's
    //     display holds: the agent reports the size it has, the node's request waits for the
    //     change, and the session's panel follows to the new bottom edge.
    ensure!(
        node.vm(&id).await?.screen == Some(DisplaySize::new(1024, 768)),
        "the agent does not report the screen's size"
    );
    let screen_path = format!("/api/v1/vms/{id}/screen");
    for (size, status, field) in [
        ("1032x768", 400, Some("size")),
        ("1024x776", 400, Some("size")),
        ("801x600", 400, Some("size")),
        ("big", 400, Some("size")),
    ] {
        let (got, body) = node.call("PUT", &screen_path, Some(&json!({ "size": size }))).await?;
        let err: Value = serde_json::from_slice(&body)?;
        ensure!(got == status && err["field"].as_str() == field, "resize to {size}: {got} {err}");
    }
    let (got, body) = node.call("PUT", &screen_path, Some(&json!({ "size": "800x600" }))).await?;
    ensure!(got == 200, "resize to 800x600: {got} {}", String::from_utf8_lossy(&body));
    ensure!(
        serde_json::from_slice::<Value>(&body)?["size"] == "800x600",
        "the screen took {}",
        String::from_utf8_lossy(&body)
    );
    let (small, _) = wait_screen(&node, &id, "desktop-resized.png", "the panel at 800x600", |s| {
        let band = panel_rows(s).filter(|_| (s.width, s.height) == (800, 600))?;
        s.find_monospace(band.0, band.1, label, PANEL, &Glyphs::default())
    })
    .await?;
    assert_eq!((small.width, small.height), (800, 600));
    ensure!(node.vm(&id).await?.screen == Some(DisplaySize::new(800, 600)), "screen not reported");
    let (got, _) = node.call("PUT", &screen_path, Some(&json!({ "size": "1024x768" }))).await?;
    ensure!(got == 200, "resize back to 1024x768: {got}");
    wait_screen(&node, &id, "desktop-session.png", "the panel back at 1024x768", |s| {
        let band = panel_rows(s).filter(|_| (s.width, s.height) == (1024, 768))?;
        s.find_monospace(band.0, band.1, label, PANEL, &Glyphs::default())
    })
    .await?;

    // 3. Typing: text typed into the terminal through the VM's VNC socket shows up, and the
    //    shell's prompt names the signed-in user.
    let grid = terminal_ready(&node, &id, "desktop-terminal.png").await?;
    assert!((6..=16).contains(&grid.cell_w), "odd terminal cells: {grid:?}");
    let mut rfb = vnc(&a).await?;
    let word = format!("atrium-{}", hex(8));
    rfb.type_text(&format!("echo {word}\n")).await?;
    let (_, (cells, row)) = wait_screen(&node, &id, "desktop-typed.png", "the typed text", |s| {
        let g = terminal_grid(s)?;
        let cells = s.cells_in(&g, TERMINAL);
        let n = word.len();
        let row = rows_showing(&cells, &word, &Glyphs::default())
            .into_iter()
            .find(|&r| r > 0 && find_cells(&cells[r - 1], &cells[r][..n]).is_some())?;
        Some((cells, row))
    })
    .await?;
    let mut glyphs = Glyphs::default();
    glyphs.learn(&cells[row][..word.len()], &word);
    let command = format!("alice@atrium:~$ echo {word}");
    let prompt = &cells[row - 1];
    assert!(
        glyphs.consistent(&prompt[..command.len()], &command)
            && prompt[command.len()..].iter().all(Option::is_none),
        "the line above the output is not {command:?} (see desktop-typed.png)"
    );

    // 4. The clipboard, guest to host: a program copies, the node has it.
    let copied = run_for_clipboard(
        &node,
        &mut rfb,
        &id,
        0,
        &format!("echo {word} | xclip -selection clipboard"),
        &format!("{word}\n"),
    )
    .await?;

    // 5. Host to guest, and back: the host's text is on X's clipboard (a program reads it,
    //    changes it and copies the result, which comes back). 100 KB of it, in one go each
    //    way (the protocol carries up to 256 KiB).
    let paste: String = (0..4000).map(|i| format!("paste-{i:05}-{}\n", hex(12))).collect();
    let (status, body) = node
        .call("POST", &format!("/api/v1/vms/{id}/clipboard"), Some(&json!({ "text": paste })))
        .await?;
    ensure!(status == 204, "paste: {status} {}", String::from_utf8_lossy(&body));
    let upper = run_for_clipboard(
        &node,
        &mut rfb,
        &id,
        copied.seq,
        "xclip -o -selection clipboard | tr a-z A-Z | xclip -selection clipboard",
        &paste.to_uppercase(),
    )
    .await?;

    // 5b. An image, both ways: the host's PNG is on X's clipboard as image/png (a program saves
    //     it and copies its hash as text), and the same file copied in the guest comes back
    //     to the node whole. Noise, so about 340 KB: more than one X request holds without
    //     BIG-REQUESTS.
    let image = noise_png(360, 240)?;
    let sent = sha256_hex(&image);
    let body = json!({ "png": base64::engine::general_purpose::STANDARD.encode(&image) });
    let (status, body) =
        node.call("POST", &format!("/api/v1/vms/{id}/clipboard"), Some(&body)).await?;
    ensure!(status == 204, "paste an image: {status} {}", String::from_utf8_lossy(&body));
    let hashed = run_for_clipboard(
        &node,
        &mut rfb,
        &id,
        upper.seq,
        "xclip -o -selection clipboard -t image/png > /tmp/in.png; \
         sha256sum < /tmp/in.png | cut -c1-64 | xclip -selection clipboard",
        &format!("{sent}\n"),
    )
    .await?;
    rfb.type_text("xclip -selection clipboard -t image/png -i /tmp/in.png\n").await?;
    let back = wait_for("the guest's image on the node", CLIPBOARD_WAIT, || async {
        node.clipboard(&id, hashed.seq).await.ok().filter(|c| c.png.is_some())
    })
    .await?;
    ensure!(back.text.is_none(), "an image came with text {:?}", back.text);
    ensure!(back.png.as_deref() == Some(&image[..]), "the image came back changed");

    // 6. A file in the dedicated user's home.
    let kept = format!("kept-{}", hex(8));
    let kept_copied = run_for_clipboard(
        &node,
        &mut rfb,
        &id,
        back.seq,
        &format!("echo {kept} > ~/kept.txt && xclip -selection clipboard < ~/kept.txt"),
        &format!("{kept}\n"),
    )
    .await?;
    // 6b. The panel's menu starts programs as the user, not as the panel's own account:
    //     Ctrl+Alt+T (the menu's Terminal) asks the agent, which starts a second terminal as
    //     alice; in it, the owners of the desktop's programs.
    for (code, keysym, down) in [
        ("ControlLeft", KEYSYM_CONTROL_L, true),
        ("AltLeft", KEYSYM_ALT_L, true),
        ("KeyT", u32::from('t'), true),
        ("KeyT", u32::from('t'), false),
        ("AltLeft", KEYSYM_ALT_L, false),
        ("ControlLeft", KEYSYM_CONTROL_L, false),
    ] {
        rfb.key(code, keysym, down).await?;
    }
    wait_for("the agent starting the menu's terminal", SCREEN_WAIT, || async {
        let log = node.console_log(&id).await.unwrap_or_default();
        log.contains("started terminal for alice").then_some(())
    })
    .await?;
    // The new terminal (xterm's default 80x24, placed where the first one is) has the focus
    // and its shell's prompt alone (the pointer is lower down): typing goes to it whole.
    let new_terminal = Grid { cols: 80, rows: 24, ..grid };
    let prompt = "alice@atrium:~$";
    wait_screen(&node, &id, "desktop-launched.png", "the second terminal's prompt", |s| {
        let cells = s.cells_in(&new_terminal, TERMINAL);
        let row = &cells[0];
        (screen::tasks(s) == [false, true]
            && glyphs.consistent(&row[..prompt.len()], prompt)
            && row[prompt.len()].is_none()
            && row[prompt.len() + 2..].iter().all(Option::is_none)
            && cells[1..4].iter().flatten().all(Option::is_none))
        .then_some(())
    })
    .await?;
    run_for_clipboard(
        &node,
        &mut rfb,
        &id,
        kept_copied.seq,
        "for p in /proc/[0-9]*; do c=$(cat $p/comm 2>/dev/null); case \"$c\" in jwm|xterm) \
         echo \"$c $(stat -c %U $p)\";; esac; done | sort | tr '\\n' ' ' | xclip -selection clipboard",
        "jwm atrium-shell xterm alice xterm alice ",
    )
    .await?;

    let log = node.console_log(&id).await.unwrap_or_default();
    for needle in [
        "atrium-sysinit: formatting the new home disk",
        "atrium-sysinit: the home disk /dev/vdb is on /home",
        "atrium-guest-agent: ready",
        "session started for alice (uid 20001)",
    ] {
        assert!(log.contains(needle), "{needle:?} is not in the console log:\n{log}");
    }
    let memory = log
        .lines()
        .find(|l| l.contains("guest memory in use"))
        .map(str::to_owned)
        .unwrap_or_default();
    eprintln!("desktop: {memory}");
    drop(rfb);

    // 7. Sign-out: the session ends and the sign-in screen shows; the VM goes, its home disk
    //    stays (a disk of its own, not a layer over the image).
    sign_out_and_delete(&node, &id, "desktop-signed-out.png").await?;
    let home = node.state_dir.join("disks").join(format!("{disk}.qcow2"));
    ensure!(home.exists(), "the home disk {} is gone", home.display());
    let info = std::process::Command::new("qemu-img").arg("info").arg("-U").arg(&home).output()?;
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(!info.contains("backing file"), "the home disk is a layer over a base:\n{info}");

    // 8. A floating user and the dedicated user again, side by side: the floating user's file
    //    goes with their desktop; the dedicated user finds theirs on a new desktop.
    let bob = json!({ "username": "bob", "display_name": "Bob Builder" });
    let (b, c) = tokio::join!(
        signed_in_desktop(&node, &bob, None),
        signed_in_desktop(&node, &alice, Some(&disk))
    );
    let (b, c) = ((b?).0, (c?).0);
    terminal_ready(&node, &b.id, "desktop-floating.png").await?;
    let mut rfb = vnc(&b).await?;
    let gone = format!("gone-{}", hex(8));
    run_for_clipboard(
        &node,
        &mut rfb,
        &b.id,
        0,
        &format!("echo {gone} > ~/gone.txt && xclip -selection clipboard < ~/gone.txt"),
        &format!("{gone}\n"),
    )
    .await?;
    drop(rfb);
    sign_out_and_delete(&node, &b.id, "desktop-floating-out.png").await?;
    assert_eq!(
        disks(&node)?,
        [format!("{disk}.json"), format!("{disk}.qcow2")],
        "a floating desktop left a disk behind"
    );

    terminal_ready(&node, &c.id, "desktop-again.png").await?;
    let mut rfb = vnc(&c).await?;
    run_for_clipboard(
        &node,
        &mut rfb,
        &c.id,
        0,
        "xclip -selection clipboard < ~/kept.txt",
        &format!("{kept}\n"),
    )
    .await?;
    drop(rfb);
    let log = node.console_log(&c.id).await.unwrap_or_default();
    assert!(
        !log.contains("formatting the new home disk")
            && log.contains("atrium-sysinit: the home disk /dev/vdb is on /home"),
        "the kept home disk was not mounted as it was:\n{log}"
    );

    // 9. The floating user on a new desktop, now with a German keyboard: their file is not
    //    there, and the keys type what the layout says (`z` and `y` are swapped against US).
    //    This desktop is a spare the user is then signed in to, as the broker does it, by a
    //    caller that gives up at once (a broker whose request timed out on a loaded host): the
    //    node still records the session once the guest confirms it.
    let bob_de =
        json!({ "username": "bob", "display_name": "Bob Builder", "keyboard_layout": "de" });
    let spare = json!({ "image": "desktop", "vcpus": 1, "memory_mib": 512, "display": "1024x768" });
    let (status, body) = node.call("POST", "/api/v1/vms", Some(&spare)).await?;
    ensure!(status == 201, "create: {status} {}", String::from_utf8_lossy(&body));
    let d: VmInfo = serde_json::from_slice(&body)?;
    let d = node.wait_settled(&d.id, BOOT).await?;
    ensure!(
        d.state == VmState::Ready && d.user.is_none(),
        "the spare is {:?}, user {:?}",
        d.state,
        d.user
    );
    // A spare shows only the sign-in screen: the desktop's panel, already running behind it,
    // is not on top (the panel would be 4% of the screen, at its bottom).
    let spare_shot = node.screenshot(&d.id, "desktop-spare-ready.png").await?;
    ensure!(
        panel_rows(&spare_shot).is_none() && share(&spare_shot, GREETER) > 0.98,
        "the spare's screen is not the sign-in screen alone (see desktop-spare-ready.png)"
    );
    let path = format!("/api/v1/vms/{}/session", d.id);
    let gave_up = node
        .call_giving_up("POST", &path, &json!({ "user": bob_de }), Duration::from_millis(30))
        .await;
    ensure!(gave_up.is_err(), "the session was confirmed within 30 ms: {gave_up:?}");
    let recorded = wait_for("the session to be recorded", Duration::from_secs(150), || async {
        node.vm(&d.id).await.ok().filter(|v| v.user.as_deref() == Some("bob"))
    })
    .await;
    if let Err(e) = recorded {
        bail!("{e}\nnode log:\n{}", node.log());
    }
    terminal_ready(&node, &d.id, "desktop-floating-again.png").await?;
    let mut rfb = vnc(&d).await?;
    let command = "echo zy $(ls) | xclip -selection clipboard";
    rfb.type_text_de(&format!("{command}\n")).await?;
    if let Err(e) = node.wait_clipboard(&d.id, 0, "zy\n", CLIPBOARD_WAIT).await {
        let _ = node.screenshot(&d.id, "desktop-de-failed.png").await;
        bail!("{e} after `{command}` typed on a German keyboard (see desktop-de-failed.png)");
    }
    drop(rfb);
    for id in [&c.id, &d.id] {
        let (status, _) = node.call("DELETE", &format!("/api/v1/vms/{id}"), None).await?;
        assert_eq!(status, 204);
    }
    Ok(())
}

/// The whole sign-in: a directory user signs in to the broker (as the web client does) and
/// connects to a pool of desktops; the spare the node booted becomes theirs, and they are in a
/// graphical session as themselves (their directory uid), their name on the panel. The pool
/// asks for clones: the node makes a template meanwhile, the pool refills with a clone, and the
/// next user's session on it works the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_through_the_broker_lands_the_user_in_their_desktop() -> anyhow::Result<()> {
    let name = "signing_in_through_the_broker_lands_the_user_in_their_desktop";
    if skip(Group::Ldap, name) || skip(Group::Qemu, name) {
        return Ok(());
    }
    let image = desktop_image()?;
    let slapd = Slapd::start()?;
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await?;
    let node = NodeProcess::start(
        &image,
        &format!(
            "id = \"node-1\"\ndisplay_url = \"ws://127.0.0.1:1\"\n\n[broker]\nurl = \"{}\"\nheartbeat_secs = 1\nenrolment_token = {:?}\n",
            broker.url,
            broker.enrolment_token("node-1")?
        ),
    )
    .await?;
    let mut admin = broker.client();
    admin.login_ok("carol", "carol-pw").await;
    wait_for("the node to register", Duration::from_secs(30), || async {
        let n = admin.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
        (n[0]["id"] == "node-1" && n[0]["state"] == "up").then_some(())
    })
    .await?;
    admin
        .post_json(
            "/api/v1/admin/pools",
            json!({"name":"desktop","image":"desktop","vcpus":1,"memory_mib":512,"display":"1024x768",
                   "kind":"floating","min_ready":1,"max_size":1,"idle_timeout_secs":600,"max_session_secs":3600,
                   "clone":true}),
            StatusCode::CREATED,
        )
        .await;
    wait_for("a ready spare desktop", BOOT, || async {
        let p = admin.get_json("/api/v1/admin/pools/desktop", StatusCode::OK).await;
        (p["counts"]["ready"] == 1).then_some(())
    })
    .await?;

    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let c = alice.post_json("/api/v1/pools/desktop/connect", json!({}), StatusCode::OK).await;
    assert_eq!((c["status"].as_str(), c["source"].as_str()), (Some("ready"), Some("spare")), "{c}");
    let vm = node.list_vms().await?.into_iter().find(|v| v.user.as_deref() == Some("alice"));
    let vm = vm.context("no VM on the node is alice's")?;

    // Her name from the directory on the panel, and a terminal.
    wait_screen(&node, &vm.id, "desktop-broker.png", "the panel with alice's name", |s| {
        let band = panel_rows(s)?;
        s.find_monospace(band.0, band.1, "Alice Andersen (alice)", PANEL, &Glyphs::default())
    })
    .await?;
    terminal_ready(&node, &vm.id, "desktop-broker-terminal.png").await?;
    // She is herself in the guest: her directory uid and gid, her name (and no other groups).
    let mut rfb = vnc(&vm).await?;
    run_for_clipboard(
        &node,
        &mut rfb,
        &vm.id,
        0,
        "id | xclip -selection clipboard",
        "uid=10001(alice) gid=10001(alice)\n",
    )
    .await?;
    drop(rfb);

    // The pool asks for clones: the first spare booted while the node made the template.
    ensure!(!vm.cloned, "the first desktop was a clone before any template was made");
    wait_for("the node's template", BOOT, || async {
        let (_, body) = node.call("GET", "/metrics", None).await.ok()?;
        String::from_utf8_lossy(&body).contains("\natrium_node_templates 1\n").then_some(())
    })
    .await
    .with_context(|| node.log())?;

    // Sign-out ends the floating desktop: the node deletes it.
    alice.post_json("/api/v1/auth/logout", json!({}), StatusCode::NO_CONTENT).await;
    wait_for("the VM to be deleted on the node", Duration::from_secs(60), || async {
        node.vm(&vm.id).await.is_err().then_some(())
    })
    .await?;

    // The pool refills with a clone of the template (no boot), and the pool's page says so.
    let spare = wait_for("a ready cloned spare", BOOT, || async {
        let d = admin.get_json("/api/v1/admin/desktops", StatusCode::OK).await;
        d.as_array()?.iter().find(|d| d["state"] == "ready" && d["cloned"] == true).cloned()
    })
    .await
    .with_context(|| node.log())?;
    let version = spare["image"].as_str().unwrap_or_default();
    ensure!(version.starts_with("desktop@"), "the desktop runs {version:?}");
    // Bob gets it: his session on the clone is drawn and works as on a booted desktop, and
    // the clone is its own (its host name is its VM id, not the template's).
    let mut bob = broker.client();
    bob.login_ok("bob", "bob-pw").await;
    let c = bob.post_json("/api/v1/pools/desktop/connect", json!({}), StatusCode::OK).await;
    assert_eq!((c["status"].as_str(), c["source"].as_str()), (Some("ready"), Some("spare")), "{c}");
    let clone = wait_for("bob's session on the clone", Duration::from_secs(60), || async {
        node.list_vms().await.ok()?.into_iter().find(|v| v.user.as_deref() == Some("bob"))
    })
    .await
    .with_context(|| node.log())?;
    ensure!(clone.cloned, "bob's desktop was booted");
    let console = node.console_log(&clone.id).await?;
    ensure!(!console.contains("atrium-sysinit: done"), "the clone booted:\n{console}");
    terminal_ready(&node, &clone.id, "desktop-broker-clone.png").await?;
    let mut rfb = vnc(&clone).await?;
    run_for_clipboard(
        &node,
        &mut rfb,
        &clone.id,
        0,
        "echo $(hostname) $(id -un) | xclip -selection clipboard",
        &format!("{} bob\n", clone.id),
    )
    .await?;
    drop(rfb);
    bob.post_json("/api/v1/auth/logout", json!({}), StatusCode::NO_CONTENT).await;
    Ok(())
}

#[test]
fn the_desktop_image_names_its_packages_and_disks() -> anyhow::Result<()> {
    if skip(Group::Qemu, "the_desktop_image_names_its_packages_and_disks") {
        return Ok(());
    }
    let image = desktop_image()?;
    let m: Value = serde_json::from_slice(&std::fs::read(image.join("manifest.json"))?)?;
    assert_eq!(m["kind"], "desktop");
    assert_eq!(m["disk"]["purpose"], "root");
    assert_eq!(m["disk"]["format"], "raw");
    assert!(m["home_disk"]["size_mib"].as_u64().is_some_and(|s| s >= 1024), "{}", m["home_disk"]);
    let packages: Vec<&str> = m["packages"]
        .as_array()
        .context("packages")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for wanted in ["xserver-xorg-core", "jwm", "xterm", "xfe", "xclip", "fonts-dejavu-core", "bash"]
    {
        assert!(packages.contains(&wanted), "{wanted} is not in {packages:?}");
    }
    // Left out on purpose (docs/node.md): no 3D stack, no udev, no maintainer-script tools.
    for unwanted in ["udev", "perl-base", "debconf", "libgl1-mesa-dri", "dpkg"] {
        assert!(!packages.contains(&unwanted), "{unwanted} is in the image");
    }
    assert!(!packages.iter().any(|p| p.starts_with("libllvm")), "LLVM is in the image");
    let modules: Vec<&str> =
        m["modules"].as_array().context("modules")?.iter().filter_map(Value::as_str).collect();
    for needed in ["bochs", "virtio_blk", "virtio_input", "virtio_mmio", "ext4"] {
        assert!(modules.contains(&needed), "{needed} missing from {modules:?}");
    }
    // The root disk is an ext4 file system (the magic number at 1080).
    let mut magic = [0u8; 2];
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(image.join("root.img"))?;
        f.seek(SeekFrom::Start(1080))?;
        f.read_exact(&mut magic)?;
    }
    assert_eq!(magic, [0x53, 0xef], "root.img is not ext2/3/4");
    Ok(())
}
