//! An operator's own image in a pool, end to end in a real browser: the disk without Atrium's
//! agent (`scripts/lib/uefi-disk.sh`) imported with `atrium-node image import`, a pool of it on
//! the whole stack (slapd, the broker, a real node booting it by UEFI under QEMU, the display
//! proxy), and Debian's Chromium through `tests/browser/imported.mjs`: the Pools page says how
//! the image runs, and a user who connects is told to sign in to the OS herself and sees its
//! login prompt. Screenshots are kept in `$ATRIUM_TEST_ARTIFACTS`.

use anyhow::{Context, bail, ensure};
use atrium_tests::browser::{CHROMIUM, Driver, artifacts};
use atrium_tests::node::{import_image, uefi_disk_without_agent};
use atrium_tests::screen::Screen;
use atrium_tests::stack::{Stack, create_pool};
use atrium_tests::{Group, TempDir, skip};
use serde_json::json;

/// The canvas shows a login prompt alone: text in the top rows, nothing further down.
fn shows_login_prompt(s: &Screen) -> bool {
    let cells = s.cells();
    let lit = |rows: &[Vec<Option<u64>>]| rows.iter().flatten().filter(|c| c.is_some()).count();
    cells.len() > 10 && (5..40).contains(&lit(&cells[..3])) && lit(&cells[3..]) <= 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_gets_a_desktop_of_an_imported_image_without_an_agent_in_the_browser()
-> anyhow::Result<()> {
    let name = "a_user_gets_a_desktop_of_an_imported_image_without_an_agent_in_the_browser";
    if skip(Group::Browser, name) || skip(Group::Qemu, name) || skip(Group::Ldap, name) {
        return Ok(());
    }
    let tmp = TempDir::new("e2e-imported");
    let images = tmp.path().join("images");
    let (ok, said) = import_image(
        &images,
        &uefi_disk_without_agent()?,
        &["--name", "legacyos", "--version", "1", "--firmware", "uefi", "--min-memory", "256"],
    )?;
    ensure!(ok, "the import failed: {said}");
    let stack = Stack::start_with_images(&[&images.join("legacyos")]).await?;
    create_pool(&stack.admin().await, "legacyos", "legacyos", 1, "1024x768", Some(false)).await?;

    let cfg = json!({
        "broker": stack.broker.url, "chromium": CHROMIUM, "artifacts": artifacts(),
        "tmp": tmp.path(), "pool": "legacyos",
    });
    let mut driver = Driver::start("imported.mjs", &cfg)?;
    let mut done = false;
    let run = async {
        while let Some(msg) = driver.next().await? {
            if msg["done"] == true {
                done = true;
                continue;
            }
            let path = msg["shot"].as_str().context("a shot without a path")?;
            let screen = Screen::from_png(&std::fs::read(path)?)?;
            let ok = msg["phase"] == "login" && shows_login_prompt(&screen);
            driver.answer(if ok { "ok" } else { "more" }).await?;
        }
        anyhow::Ok(())
    };
    let result = tokio::time::timeout(std::time::Duration::from_secs(600), run)
        .await
        .context("the browser test took over 10 minutes")?;
    if let Err(e) = result.and(driver.finish().await) {
        bail!("{e}\n{}", stack.logs());
    }
    ensure!(done, "the browser driver stopped before it was done\n{}", stack.logs());
    // The node says whose desktop it is, and that it runs no agent.
    let vms = stack.node.list_vms().await?;
    ensure!(
        vms.iter().any(|v| v.image.starts_with("legacyos")
            && !v.agent
            && v.user.as_deref() == Some("alice")),
        "{vms:?}"
    );
    Ok(())
}
