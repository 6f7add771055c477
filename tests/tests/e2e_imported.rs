//! An operator's own image in a pool, end to end in a real browser: the disk without Atrium's
//! agent (`scripts/lib/uefi-disk.sh`) uploaded to the broker's image library through the admin
//! API with an API token (as a script of the operator's would), fetched, checked by hash and
//! imported by the node on its own, a pool of it on the whole stack (slapd, the broker, a real
//! node booting it by UEFI under QEMU, the display proxy), and Debian's Chromium through
//! `tests/browser/imported.mjs`: the Pools page says how the image runs, and a user who
//! connects is told to sign in to the OS herself and sees its login prompt. Screenshots are
//! kept in `$ATRIUM_TEST_ARTIFACTS`.

use anyhow::{Context, bail, ensure};
use atrium_tests::broker::ApiClient;
use atrium_tests::browser::{CHROMIUM, Driver, artifacts};
use atrium_tests::node::uefi_disk_without_agent;
use atrium_tests::screen::Screen;
use atrium_tests::stack::{Stack, create_pool};
use atrium_tests::{Group, TempDir, skip, wait_for};
use reqwest::StatusCode;
use serde_json::json;
use sha2::Digest;
use std::time::Duration;

/// Uploads `disk` as `legacyos@1` with an API token, and waits until the node holds it.
async fn upload_image(
    stack: &Stack,
    admin: &ApiClient,
    disk: &std::path::Path,
) -> anyhow::Result<()> {
    let created = admin
        .post_json(
            "/api/v1/admin/tokens",
            json!({"name": "image-upload", "scope": "admin", "expires_in_days": 1}),
            StatusCode::CREATED,
        )
        .await;
    let token = created["token"].as_str().context("a token")?;
    let bytes = std::fs::read(disk)?;
    let sha256 = data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(&bytes));
    let url = format!(
        "{}/api/v1/admin/images/legacyos/1?firmware=uefi&min_memory_mib=256&sha256={sha256}",
        stack.broker.url
    );
    let resp = reqwest::Client::new().put(url).bearer_auth(token).body(bytes).send().await?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    ensure!(status == StatusCode::CREATED, "the upload: {status} {body}");
    ensure!(body["sha256"] == sha256.as_str(), "{body}");
    // The node learns of it at its next heartbeat, fetches it, checks its hash and imports it.
    let ready = wait_for("the node to import the image", Duration::from_secs(180), || async {
        let list = admin.get_json("/api/v1/admin/images", StatusCode::OK).await;
        let node = list[0]["nodes"][0].clone();
        match node["state"].as_str() {
            Some("ready") => Some(Ok(())),
            Some("failed") => Some(Err(node["error"].to_string())),
            _ => None,
        }
    })
    .await;
    match ready {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => bail!("the node refused the image: {why}\n{}", stack.logs()),
        Err(e) => bail!("{e}\n{}", stack.logs()),
    }
}

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
    let stack = Stack::start(None, None).await?;
    let admin = stack.admin().await;
    upload_image(&stack, &admin, &uefi_disk_without_agent()?).await?;
    create_pool(&admin, "legacyos", "legacyos", 1, "1024x768", Some(false)).await?;

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
