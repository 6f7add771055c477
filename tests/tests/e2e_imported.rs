//! An operator's own image in a pool, end to end in a real browser, on the whole stack (slapd,
//! the broker, a real node booting it by UEFI under QEMU, the display proxy) and Debian's
//! Chromium through `tests/browser/imported.mjs`: an administrator uploads the disk without
//! Atrium's agent (`scripts/lib/uefi-disk.sh`) on the portal's Images page, the node fetches it,
//! checks its hash and imports it on its own, the administrator makes a pool of it on the Pools
//! page, which says how the image runs, and a user who connects is told to sign in to the OS
//! herself and sees its login prompt. Then a Debian install with the agent as a service
//! (`scripts/lib/debian-disk.sh`), uploaded as qcow2 with an API token as an operator's script
//! would: her desktop of it signs her in as herself, on the OS's own systemd, and its clipboard
//! reaches the viewer. Screenshots are kept in `$ATRIUM_TEST_ARTIFACTS`.

use anyhow::{Context, bail, ensure};
use atrium_tests::browser::{CHROMIUM, Driver, artifacts};
use atrium_tests::node::{debian_disk, uefi_disk_without_agent};
use atrium_tests::screen::Screen;
use atrium_tests::stack::Stack;
use atrium_tests::{Group, TempDir, skip, wait_for};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

/// The canvas shows a login prompt alone: text in the top rows, nothing further down.
fn shows_login_prompt(s: &Screen) -> bool {
    let cells = s.cells();
    let lit = |rows: &[Vec<Option<u64>>]| rows.iter().flatten().filter(|c| c.is_some()).count();
    cells.len() > 10 && (5..40).contains(&lit(&cells[..3])) && lit(&cells[3..]) <= 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_gets_desktops_of_imported_images_in_the_browser_signed_in_where_the_agent_is()
-> anyhow::Result<()> {
    let name =
        "a_user_gets_desktops_of_imported_images_in_the_browser_signed_in_where_the_agent_is";
    if skip(Group::Browser, name) || skip(Group::Qemu, name) || skip(Group::Ldap, name) {
        return Ok(());
    }
    let tmp = TempDir::new("e2e-imported");
    let stack = Stack::start(None, None).await?;
    let admin = stack.admin().await;

    // The Debian install, as qcow2, through the admin API with a token; its pool is made once
    // the node has it, and its spare boots while the browser works on the other pool.
    let qcow2 = tmp.path().join("debian.qcow2");
    let converted = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(debian_disk()?)
        .arg(&qcow2)
        .status()?;
    ensure!(converted.success(), "qemu-img convert: {converted}");
    let token = admin.admin_token("images").await;
    let url = format!(
        "{}/api/v1/admin/images/debian/12?firmware=uefi&agent=true&min_memory_mib=512&format=qcow2",
        stack.broker.url
    );
    let resp = reqwest::Client::new()
        .put(url)
        .bearer_auth(&token)
        .body(std::fs::read(&qcow2)?)
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::CREATED, "the upload of debian: {}", resp.status());
    std::fs::remove_file(&qcow2)?;
    wait_for("the node to import debian", Duration::from_secs(300), || async {
        let list = admin.get_json("/api/v1/admin/images", StatusCode::OK).await;
        let image = list.as_array()?.iter().find(|i| i["name"] == "debian")?.clone();
        (image["nodes"][0]["state"] == "ready").then_some(())
    })
    .await
    .with_context(|| stack.logs())?;
    let body = json!({"name": "debian", "description": "Debian 12 with Atrium's agent",
        "image": "debian", "vcpus": 1, "memory_mib": 768, "display": "1024x768",
        "kind": "floating", "min_ready": 1, "max_size": 2, "idle_timeout_secs": 1800,
        "max_session_secs": 28800, "clone": false});
    admin.post_json("/api/v1/admin/pools", body, StatusCode::CREATED).await;

    let cfg = json!({
        "broker": stack.broker.url, "chromium": CHROMIUM, "artifacts": artifacts(),
        "tmp": tmp.path(), "pool": "legacyos", "disk": uefi_disk_without_agent()?,
        "agentPool": "debian",
    });
    let mut driver = Driver::start("imported.mjs", &cfg)?;
    let mut done = false;
    let run = async {
        while let Some(msg) = driver.next().await? {
            if msg["done"] == true {
                done = true;
                continue;
            }
            if let Some(pool) = msg["pool"].as_str() {
                wait_for(
                    &format!("a ready desktop in {pool}"),
                    Duration::from_secs(300),
                    || async {
                        let p = admin
                            .get_json(&format!("/api/v1/admin/pools/{pool}"), StatusCode::OK)
                            .await;
                        (p["counts"]["ready"].as_u64().unwrap_or(0) >= 1).then_some(())
                    },
                )
                .await?;
                driver.answer("ok").await?;
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
    // The node says whose desktops they are, and which runs the agent.
    let vms = stack.node.list_vms().await?;
    ensure!(
        vms.iter().any(|v| v.image.starts_with("legacyos")
            && !v.agent
            && v.user.as_deref() == Some("alice")),
        "{vms:?}"
    );
    ensure!(
        vms.iter().any(|v| v.image.starts_with("debian")
            && v.agent
            && v.user.as_deref() == Some("alice")),
        "{vms:?}"
    );
    Ok(())
}
