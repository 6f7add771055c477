//! A Debian 12 disk installed as an operator installs one (`scripts/lib/debian-disk.sh`:
//! mmdebstrap runs Debian's own maintainer scripts; systemd is init; Debian's kernel and the
//! initramfs its scripts made; systemd-boot), with Atrium's guest agent installed as
//! docs/images.md tells operators to (the static binary and `atrium-guest-agent.service`,
//! enabled). Imported with `atrium-node image import` and booted by OVMF under QEMU as a node
//! boots any desktop. Group `qemu`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::ensure;
use atrium_protocol::node::{ClipboardState, DisplayEndpoint, VmInfo};
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

/// Waits until the guest's clipboard is `text`; when it does not come, keeps a screenshot of
/// what the user saw (`debian-disk-STEP.png` in the test artifacts).
async fn clipboard_is(
    node: &NodeProcess,
    id: &str,
    after: u64,
    text: &str,
    within: Duration,
    step: &str,
) -> anyhow::Result<ClipboardState> {
    let r = node.wait_clipboard(id, after, text, within).await;
    if r.is_err() {
        let _ = node.screenshot(id, &format!("debian-disk-{step}.png")).await;
    }
    r
}

/// Types `command` (on a German keyboard with `german`) until the guest's clipboard is
/// `expected`: a new shell may not read its terminal yet when the first keys come (what it has
/// not read may be lost), so a command that did not land is typed again, twice at most.
#[allow(clippy::too_many_arguments)]
async fn typed_until(
    rfb: &mut RfbClient,
    node: &NodeProcess,
    id: &str,
    after: u64,
    command: &str,
    german: bool,
    expected: &str,
    step: &str,
) -> anyhow::Result<ClipboardState> {
    let mut last = Err(anyhow::anyhow!("not typed"));
    for _ in 0..3 {
        if german {
            rfb.type_text_de(command).await?;
        } else {
            rfb.type_text(command).await?;
        }
        last = clipboard_is(node, id, after, expected, Duration::from_secs(20), step).await;
        if last.is_ok() {
            break;
        }
    }
    last
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
    // The keys' scancodes, as a browser sends them (the guest's layout makes the characters).
    ensure!(rfb.enable_qemu_ext_keys().await?, "QEMU did not take extended key events");
    let whoami = concat!(
        r#"printf '%s %s %s\n' "$(id -un)" "$(cat /proc/1/comm)" "#,
        r#""$(loginctl show-session "$XDG_SESSION_ID" -p Name --value)" > clipboard.txt"#,
        "\n"
    );
    let expected = "alice systemd alice\n";
    let clip = typed_until(&mut rfb, &node, &id, 0, whoami, false, expected, "alice").await?;

    // A paste lands in her clipboard file, hers.
    let paste = format!("debian-{}\n", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (status, body) = node
        .call("POST", &format!("/api/v1/vms/{id}/clipboard"), Some(&json!({ "text": paste })))
        .await?;
    ensure!(status == 204, "paste: {status} {}", String::from_utf8_lossy(&body));
    rfb.type_text(concat!(
        "stat -c %U clipboard.txt >> clipboard.txt; ",
        "tr a-z A-Z < clipboard.txt > up.txt && mv up.txt clipboard.txt\n"
    ))
    .await?;
    let expected = format!("{}ALICE\n", paste.to_uppercase());
    let clip = clipboard_is(&node, &id, clip.seq, &expected, SIGN_IN, "paste").await?;

    // Bob signs in to the same desktop, with a German keyboard: alice's session ends (her shell
    // with it), his starts, and the console takes his layout (what he types at the German
    // keys for z and Y arrives as z and Y).
    let (status, body) = node
        .call(
            "POST",
            &format!("/api/v1/vms/{id}/session"),
            Some(&json!({ "user": { "username": "bob", "keyboard_layout": "de" } })),
        )
        .await?;
    ensure!(status == 200, "bob's sign-in: {status} {}", String::from_utf8_lossy(&body));
    signed_in(&node, &id, "bob").await?;
    logged(&node, &id, "session ended for alice").await?;
    logged(&node, &id, "keyboard layout de on /dev/tty7").await?;
    let command =
        "echo $(id -un) $(find /proc -maxdepth 1 -user alice | wc -l) zY > clipboard.txt\n";
    let clip =
        typed_until(&mut rfb, &node, &id, clip.seq, command, true, "bob 0 zY\n", "bob").await?;

    // His shell ends (exit): login starts again for him, as a getty would.
    rfb.type_text_de("exit\n").await?;
    logged(&node, &id, "the login of bob ended").await?;
    let command = "echo again $(id -un) > clipboard.txt\n";
    let clip =
        typed_until(&mut rfb, &node, &id, clip.seq, command, true, "again bob\n", "again").await?;

    // Signed out: the screen says so.
    let (status, _) = node.call("DELETE", &format!("/api/v1/vms/{id}/session"), None).await?;
    assert_eq!(status, 200);
    logged(&node, &id, "session ended for bob").await?;

    // A name the image has an account of its own for is refused (Debian's nobody): nobody is
    // signed in to an account the agent did not make. (The node waits for an answer that does
    // not come; the test does not.)
    let session = format!("/api/v1/vms/{id}/session");
    let nobody = json!({ "user": { "username": "nobody" } });
    let _ =
        tokio::time::timeout(Duration::from_secs(3), node.call("POST", &session, Some(&nobody)))
            .await;
    logged(&node, &id, r#"the image has an account "nobody" of its own"#).await?;

    // Dave, with no layout of his own: nothing of bob's runs any more, and the image's own
    // layout is back (the US keys for z and Y give z and Y).
    let dave = json!({ "user": { "username": "dave" } });
    let (status, body) = node.call("POST", &session, Some(&dave)).await?;
    ensure!(status == 200, "dave's sign-in: {status} {}", String::from_utf8_lossy(&body));
    signed_in(&node, &id, "dave").await?;
    let command = "echo $(find /proc -maxdepth 1 -user bob | wc -l) zY > clipboard.txt\n";
    typed_until(&mut rfb, &node, &id, clip.seq, command, false, "0 zY\n", "dave").await?;
    let log = node.console_log(&id).await?;
    ensure!(!log.contains("not set"), "a keyboard layout was not set:\n{log}");
    Ok(())
}
