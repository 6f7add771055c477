//! End to end, in a real browser: Debian's Chromium (headless, driven by playwright-core through
//! `tests/browser/e2e.mjs`) against the whole stack on loopback: slapd, the broker, a real node
//! booting console and graphical desktops under QEMU, and the display proxy. A user signs in,
//! sees the pools, connects, sees the desktop in the canvas, types a command and sees its output,
//! survives a `kill -9` of the node agent and of the display proxy (restarted as the quick start
//! does: the node takes the running desktop back, the viewer comes back by itself to it), opens
//! the graphical desktop and finds herself signed in there, hears a tone played in it (and
//! silences it), finds the desktop taking the size of her window (following it when it changes,
//! and taking the size she chose instead, the guest's own screen checked through the node), and
//! signs out; an administrator creates a pool; a non-administrator sees no admin page and gets
//! 403.
//! Screenshots are kept in `$ATRIUM_TEST_ARTIFACTS`.

use std::time::Duration;

use anyhow::{Context, bail};
use atrium_protocol::node::{DisplaySize, VmState};
use atrium_tests::browser::{CHROMIUM, Driver, artifacts};
use atrium_tests::screen::{Glyphs, PANEL, Screen, panel_rows, rows_showing, tasks};
use atrium_tests::stack::Stack;
use atrium_tests::{Group, TempDir, skip};
use serde_json::json;

/// The canvas shows the console: mostly dark, with a fair amount of lit text pixels.
fn shows_console(s: &Screen) -> bool {
    let lit = s.cells().iter().flatten().filter(|c| c.is_some()).count();
    lit > 20
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_works_in_a_desktop_in_the_browser_and_an_admin_manages_pools() -> anyhow::Result<()>
{
    let name = "a_user_works_in_a_desktop_in_the_browser_and_an_admin_manages_pools";
    if skip(Group::Browser, name) || skip(Group::Qemu, name) || skip(Group::Ldap, name) {
        return Ok(());
    }
    let mut stack = Stack::start(None, None).await?;
    let (console, desktop) = tokio::join!(
        stack.pool("console", "console", 1, "1280x800"),
        stack.pool("desktop", "desktop", 1, "1280x800")
    );
    console?;
    desktop?;

    let tmp = TempDir::new("e2e-browser");
    let word = format!("atrium-{}", rand::random::<u32>() % 1_000_000);
    let cfg = json!({
        "broker": stack.broker.url, "chromium": CHROMIUM, "artifacts": artifacts(),
        "tmp": tmp.path(), "word": word,
    });
    let mut driver = Driver::start("e2e.mjs", &cfg)?;
    let mut done = false;
    let mut seen_console = false;
    let run = async {
        while let Some(msg) = driver.next().await? {
            if msg["done"] == true {
                done = true;
                continue;
            }
            if msg["phase"] == "kill_services" {
                // A crash of the node agent and of the display proxy under a connected viewer;
                // the quick start's supervision starts them again, and the node takes the
                // running desktop back.
                stack.node.kill9();
                stack.display.kill9();
                let restarted = stack.restart_dead().await?;
                anyhow::ensure!(
                    restarted.len() == 2
                        && restarted[0].starts_with("the node agent")
                        && restarted[1].starts_with("the display proxy"),
                    "restarted {restarted:?}"
                );
                driver.answer("ok").await?;
                continue;
            }
            if msg["phase"] == "screen" {
                // The guest's own screen, as its agent reports it to the node.
                let want = DisplaySize::new(
                    msg["width"].as_u64().context("width")?.try_into()?,
                    msg["height"].as_u64().context("height")?.try_into()?,
                );
                // Her running desktop (a desktop assigned while the node was restarting may be
                // listed too, stopped).
                let mut vms = Vec::new();
                let mut ok = false;
                for _ in 0..150 {
                    vms = stack.node.list_vms().await?;
                    let seen: Vec<_> = vms
                        .iter()
                        .filter(|v| {
                            v.image.starts_with("desktop")
                                && v.user.as_deref() == Some("alice")
                                && v.state == VmState::Ready
                        })
                        .map(|v| v.screen)
                        .collect();
                    ok = seen == [Some(want)];
                    if ok {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if !ok {
                    eprintln!(
                        "the guest's screen is not {want} in her ready desktop; the node has:"
                    );
                    for v in &vms {
                        eprintln!(
                            "  {} image {} user {:?} state {:?} screen {:?}",
                            v.id, v.image, v.user, v.state, v.screen
                        );
                    }
                }
                driver.answer(if ok { "ok" } else { "no" }).await?;
                continue;
            }
            let path = msg["shot"].as_str().context("a shot without a path")?;
            let screen = Screen::from_png(&std::fs::read(path)?)?;
            let ok = match msg["phase"].as_str() {
                Some("connected") => {
                    let ok = shows_console(&screen);
                    seen_console |= ok;
                    ok
                }
                // The command's output is a line of its own: exactly the word, from column 0.
                Some("typed") => {
                    !rows_showing(&screen.cells(), &word, &Glyphs::default()).is_empty()
                }
                // The graphical desktop: its panel, with the signed-in user's directory name
                // (at the bottom of the screen, also once the screen changed size).
                Some("desktop" | "resized") => panel_rows(&screen)
                    .and_then(|band| {
                        screen.find_monospace(
                            band.0,
                            band.1,
                            "Alice Andersen (alice)",
                            PANEL,
                            &Glyphs::default(),
                        )
                    })
                    .is_some(),
                // The first window she opened (the terminal) has the focus: keys go to it.
                Some("terminal-focused") => tasks(&screen).first() == Some(&true),
                // Her terminal is the only window left, and has the focus.
                Some("one-window") => tasks(&screen) == [true],
                // The session's terminal: a large white window.
                Some("terminal") => {
                    screen.count([0xff, 0xff, 0xff]) * 5
                        > usize::try_from(screen.width * screen.height)?
                }
                other => bail!("unknown phase {other:?}"),
            };
            driver.answer(if ok { "ok" } else { "more" }).await?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .context("the browser test took over 10 minutes")??;
    if let Err(e) = driver.finish().await {
        bail!("{e}\n{}", stack.logs());
    }
    if !done {
        bail!(
            "the browser driver stopped before it was done; screenshots in {}",
            artifacts().display()
        );
    }
    assert!(seen_console, "the desktop was seen in the canvas");
    Ok(())
}
