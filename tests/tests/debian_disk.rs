//! A Debian 12 disk installed as an operator installs one (`scripts/lib/debian-disk.sh`:
//! mmdebstrap runs Debian's own maintainer scripts; systemd is init; Debian's kernel and the
//! initramfs its scripts made; systemd-boot), with Atrium's guest agent installed as
//! docs/images.md tells operators to (the static binary and `atrium-guest-agent.service`,
//! enabled). Imported with `atrium-node image import` and booted by OVMF under QEMU as a node
//! boots any desktop. Group `qemu`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::ensure;
use atrium_protocol::node::{DisplayEndpoint, VmInfo};
use atrium_tests::node::{NodeProcess, debian_disk, import_image};
use atrium_tests::rfb::RfbClient;
use atrium_tests::{Group, TempDir, skip, wait_for};
use serde_json::json;

/// Firmware, systemd's boot and the agent's start, under QEMU's emulator.
const BOOT: Duration = Duration::from_secs(360);
const SIGN_IN: Duration = Duration::from_secs(60);

fn vnc_path(info: &VmInfo) -> anyhow::Result<PathBuf> {
    match &info.display_endpoint {
        DisplayEndpoint::VncUnix { path } => Ok(PathBuf::from(path)),
        other => anyhow::bail!("expected a VNC unix socket, got {other:?}"),
    }
}

/// Waits until the node records `user` as the VM's (the agent confirmed the sign-in).
async fn signed_in(node: &NodeProcess, id: &str, user: &str) -> anyhow::Result<()> {
    wait_for(&format!("{user}'s session"), SIGN_IN, || async {
        node.vm(id).await.ok().filter(|v| v.user.as_deref() == Some(user))
    })
    .await?;
    Ok(())
}

/// Waits until the VM's console log has `text` (the agent logs there, through its unit file).
async fn logged(node: &NodeProcess, id: &str, text: &str) -> anyhow::Result<String> {
    let found = wait_for(&format!("{text:?} in the console log"), SIGN_IN, || async {
        node.console_log(id).await.ok().filter(|log| log.contains(text))
    })
    .await;
    match found {
        Ok(log) => Ok(log),
        Err(e) => {
            let log = node.console_log(id).await.unwrap_or_default();
            anyhow::bail!("{e}; the console log:\n{log}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debian_install_with_the_agent_as_a_service_signs_users_in_through_its_own_login()
-> anyhow::Result<()> {
    if skip(
        Group::Qemu,
        "a_debian_install_with_the_agent_as_a_service_signs_users_in_through_its_own_login",
    ) {
        return Ok(());
    }
    let disk = debian_disk()?;
    let tmp = TempDir::new("debian-disk");
    let images = tmp.path().join("images");
    let args = ["--name", "debian", "--version", "12", "--firmware", "uefi", "--agent"];
    let (ok, said) = import_image(&images, &disk, &[&args[..], &["--min-memory", "512"]].concat())?;
    ensure!(ok, "the import failed: {said}");
    let node = NodeProcess::start(&images.join("debian"), "").await?;

    // Firmware, boot loader, Debian's kernel and initramfs, systemd; then the agent (a service
    // of it) says ready and signs alice in.
    let spec = json!({
        "image": "debian", "vcpus": 1, "memory_mib": 768, "display": "1024x768",
        "user": { "username": "alice", "display_name": "Alice Example" },
    });
    let id = node.ready_vm(&spec, BOOT).await?;
    signed_in(&node, &id, "alice").await?;
    let log = logged(&node, &id, "session started for alice").await?;
    ensure!(log.contains("atrium-guest-agent: ready"), "console log:\n{log}");

    // At a shell of her own: as alice, on systemd, in a session logind knows as hers. What
    // she writes to ~/clipboard.txt reaches the host's clipboard.
    let info = node.vm(&id).await?;
    let mut rfb = RfbClient::connect(&vnc_path(&info)?).await?;
    rfb.type_text(
        r#"printf '%s %s %s\n' "$(id -un)" "$(cat /proc/1/comm)" "$(loginctl show-session "$XDG_SESSION_ID" -p Name --value)" > clipboard.txt"#,
    )
    .await?;
    rfb.type_text("\n").await?;
    let clip = node.wait_clipboard(&id, 0, "alice systemd alice\n", SIGN_IN).await?;

    // A paste lands in her clipboard file, hers.
    let paste = format!("debian-{}\n", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (status, body) = node
        .call("POST", &format!("/api/v1/vms/{id}/clipboard"), Some(&json!({ "text": paste })))
        .await?;
    ensure!(status == 204, "paste: {status} {}", String::from_utf8_lossy(&body));
    rfb.type_text("stat -c %U clipboard.txt >> clipboard.txt; tr a-z A-Z < clipboard.txt > up.txt && mv up.txt clipboard.txt\n").await?;
    let expected = format!("{}ALICE\n", paste.to_uppercase());
    let clip = node.wait_clipboard(&id, clip.seq, &expected, SIGN_IN).await?;

    // Bob signs in to the same desktop: alice's session ends (her shell with it), his starts.
    let (status, body) = node
        .call(
            "POST",
            &format!("/api/v1/vms/{id}/session"),
            Some(&json!({ "user": { "username": "bob" } })),
        )
        .await?;
    ensure!(status == 200, "bob's sign-in: {status} {}", String::from_utf8_lossy(&body));
    signed_in(&node, &id, "bob").await?;
    logged(&node, &id, "session ended for alice").await?;
    rfb.type_text(
        "echo \"$(id -un) $(find /proc -maxdepth 1 -user alice | wc -l)\" > clipboard.txt\n",
    )
    .await?;
    let clip = node.wait_clipboard(&id, clip.seq, "bob 0\n", SIGN_IN).await?;

    // His shell ends (exit): login starts again for him, as a getty would. (What is typed
    // before the new shell reads its terminal may be lost: typed again until it lands.)
    rfb.type_text("exit\n").await?;
    logged(&node, &id, "the login of bob ended").await?;
    let mut again = Err(anyhow::anyhow!("not typed"));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        rfb.type_text("echo again $(id -un) > clipboard.txt\n").await?;
        again = node.wait_clipboard(&id, clip.seq, "again bob\n", Duration::from_secs(20)).await;
        if again.is_ok() {
            break;
        }
    }
    again?;

    // Signed out: his processes end and the screen says so.
    let (status, _) = node.call("DELETE", &format!("/api/v1/vms/{id}/session"), None).await?;
    assert_eq!(status, 200);
    logged(&node, &id, "session ended for bob").await?;
    Ok(())
}
