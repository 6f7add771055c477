//! The broker's image library with a real node: what a node must not import. A disk cut short
//! is uploaded whole (the broker does not read disks) and the node refuses it at import, saying
//! why; a file changed in the library after its upload reaches the node with another SHA-256,
//! and the node throws it away unimported; an upload under a name and version the node has for
//! another image leaves the node's own in place. Each time nothing is left in the node's images
//! folder, and the administrators' list says why. (A good image, uploaded on the portal and
//! booted: e2e_imported.rs.) Groups `qemu` (the node runs `qemu-img`) and `ldap`.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use anyhow::{Context, ensure};
use atrium_tests::broker::ApiClient;
use atrium_tests::node::{uefi_disk, uefi_disk_without_agent};
use atrium_tests::stack::Stack;
use atrium_tests::{Group, skip, wait_for};
use reqwest::StatusCode;
use serde_json::Value;

/// Uploads `bytes` as `name@1` (a UEFI image) with an API token; the library's entry.
async fn upload(stack: &Stack, token: &str, name: &str, bytes: Vec<u8>) -> anyhow::Result<Value> {
    let url = format!(
        "{}/api/v1/admin/images/{name}/1?firmware=uefi&min_memory_mib=256",
        stack.broker.url
    );
    let resp = reqwest::Client::new().put(url).bearer_auth(token).body(bytes).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or_default();
    ensure!(status == StatusCode::CREATED, "the upload of {name}: {status} {body}");
    Ok(body)
}

/// Waits until the node says it failed `name`, and returns why.
async fn failure(stack: &Stack, admin: &ApiClient, name: &str) -> anyhow::Result<String> {
    wait_for(&format!("the node to refuse {name}"), Duration::from_secs(120), || async {
        let list = admin.get_json("/api/v1/admin/images", StatusCode::OK).await;
        let image = list.as_array()?.iter().find(|i| i["name"] == name)?.clone();
        let node = image["nodes"][0].clone();
        match node["state"].as_str() {
            Some("failed") => Some(Ok(node["error"].as_str().unwrap_or_default().to_owned())),
            Some("ready") => Some(Err(anyhow::anyhow!("the node imported {name}: {image}"))),
            _ => None,
        }
    })
    .await
    .with_context(|| stack.logs())?
}

fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("a pid");
    // SAFETY: kill(2) with the pid of a child this test started.
    unsafe {
        libc::kill(pid, sig);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_damaged_or_changed_library_image_and_says_why() -> anyhow::Result<()> {
    let name = "a_node_refuses_a_damaged_or_changed_library_image_and_says_why";
    if skip(Group::Qemu, name) || skip(Group::Ldap, name) {
        return Ok(());
    }
    let stack = Stack::start(None, None).await?;
    let admin = stack.admin().await;
    let token = admin.admin_token("images").await;
    let node_images = stack.node.dir.path().join("images");
    let nothing_left = |name: &str| -> anyhow::Result<()> {
        ensure!(!node_images.join(name).exists(), "{name} was imported");
        let parts: Vec<_> = std::fs::read_dir(node_images.join(".library"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        ensure!(parts.is_empty(), "downloads left behind: {parts:?}");
        Ok(())
    };

    // A copy that stopped halfway: the broker keeps what it was given; the node's import finds
    // the disk's end missing.
    let mut cut = std::fs::read(uefi_disk()?)?;
    cut.truncate(cut.len() / 2);
    upload(&stack, &token, "cut", cut).await?;
    let why = failure(&stack, &admin, "cut").await?;
    ensure!(why.contains("import refused") && why.contains("GPT"), "{why}");
    nothing_left("cut")?;

    // A file changed in the library after its upload (the node is paused meanwhile, so it
    // cannot have fetched it before): its bytes no longer hash to what was uploaded.
    signal(stack.node.pid(), libc::SIGSTOP);
    let uploaded =
        upload(&stack, &token, "changed", std::fs::read(uefi_disk_without_agent()?)?).await;
    let changed = (|| -> anyhow::Result<()> {
        uploaded?;
        let library = stack.broker.dir().join("images");
        let newest = std::fs::read_dir(&library)?
            .flatten()
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .context("no file in the library")?;
        let f = std::fs::OpenOptions::new().write(true).open(newest.path())?;
        f.write_all_at(b"X", 4096)?;
        Ok(())
    })();
    signal(stack.node.pid(), libc::SIGCONT);
    changed?;
    let why = failure(&stack, &admin, "changed").await?;
    ensure!(why.contains("SHA-256") && why.contains("not imported"), "{why}");
    nothing_left("changed")?;
    // A name and version the node has already for another image (its built console image):
    // the node keeps its own and says so.
    let nodes = admin.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
    let console = nodes[0]["capacity"]["images"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "console"))
        .context("no console image on the node")?;
    let version = console["version"].as_str().context("a version")?.to_owned();
    let url = format!(
        "{}/api/v1/admin/images/console/{version}?firmware=uefi&min_memory_mib=256",
        stack.broker.url
    );
    let resp = reqwest::Client::new()
        .put(url)
        .bearer_auth(&token)
        .body(std::fs::read(uefi_disk_without_agent()?)?)
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::CREATED, "the upload of console: {}", resp.status());
    let why = failure(&stack, &admin, "console").await?;
    ensure!(why.contains("another image as console@"), "{why}");
    // The node itself says so in its heartbeat, and fetched nothing.
    let said = wait_for("the node's word on console", Duration::from_secs(30), || async {
        let nodes = admin.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
        let fetches = nodes[0]["capacity"]["image_fetches"].as_array()?.clone();
        fetches.into_iter().find(|f| f["name"] == "console" && f["state"] == "failed")
    })
    .await?;
    ensure!(said["error"].to_string().contains("Debian packages"), "{said}");
    let log = stack.node.log();
    let fetched = log.lines().any(|l| l.contains("fetching an image") && l.contains("console@"));
    ensure!(!fetched, "the node fetched console:\n{log}");

    // Neither is offered to pools.
    let nodes = admin.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
    let images = nodes[0]["capacity"]["images"].to_string();
    ensure!(!images.contains("\"cut\"") && !images.contains("\"changed\""), "{images}");
    Ok(())
}
