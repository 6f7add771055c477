//! Uploads and downloads as a user makes them, in Chromium (tests/browser/file_transfer.mjs): a
//! real console desktop (QEMU), the real display proxy with a real clamd, node and broker, and
//! a policy that lets atrium-users upload and download. A file through the button and one
//! dropped on the desktop land in ~/Transfer; the EICAR test file is refused; a cancelled
//! upload leaves nothing. Downloads of ~/Transfer reach the browser whole, the EICAR file not
//! at all. The audit log then shows each of them, with the hash of what crossed.

use std::time::Duration;

use anyhow::Context;
use atrium_tests::broker::{ApiClient, policies_with};
use atrium_tests::browser::{CHROMIUM, artifacts, run_console_driver};
use atrium_tests::clamd::{Clamd, EICAR_SIGNATURE, eicar};
use atrium_tests::stack::Stack;
use atrium_tests::{Group, TempDir, skip, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

const POLICY: &str = r#"@id("users-upload")
@max_file_mb("100")
permit (
  principal in Atrium::Group::"atrium-users",
  action == Atrium::Action::"file_upload",
  resource
);
@id("users-download")
permit (
  principal in Atrium::Group::"atrium-users",
  action == Atrium::Action::"file_download",
  resource
);
"#;

/// alice's events of `action` (`file.upload`, `file.download`), with their details parsed.
async fn transfers(admin: &ApiClient, action: &str) -> Vec<(Value, Value)> {
    let all = admin.get_json(&format!("/api/v1/admin/audit?action={action}"), StatusCode::OK).await;
    all.as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["actor"] == "alice")
                .map(|e| {
                    let d = serde_json::from_str(e["details"].as_str().unwrap_or("{}"));
                    (e.clone(), d.unwrap_or(Value::Null))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_moves_files_both_ways_and_the_audit_log_shows_what_crossed() -> anyhow::Result<()> {
    let name = "a_user_moves_files_both_ways_and_the_audit_log_shows_what_crossed";
    if skip(Group::Browser, name) || skip(Group::Qemu, name) || skip(Group::Ldap, name) {
        return Ok(());
    }
    let clamd = Clamd::start()?;
    let policies = policies_with("uploads", POLICY);
    let extra = format!("clamd_socket = {:?}\n", clamd.socket.display().to_string());
    let stack =
        Stack::start_full(|o| o.policies_dir = Some(policies.path().to_owned()), None, &extra)
            .await?;
    let admin = stack.admin().await;
    admin
        .post_json(
            "/api/v1/admin/pools",
            json!({"name": "files", "image": "console", "vcpus": 1, "memory_mib": 512,
                   "display": "1024x768", "kind": "floating", "min_ready": 1, "max_size": 2,
                   "idle_timeout_secs": 3600, "max_session_secs": 28800, "clone": false}),
            StatusCode::CREATED,
        )
        .await;
    wait_for("a ready desktop in pool files", Duration::from_secs(300), || async {
        let p = admin.get_json("/api/v1/admin/pools/files", StatusCode::OK).await;
        (p["counts"]["ready"].as_u64().unwrap_or(0) >= 1).then_some(())
    })
    .await?;

    let tmp = TempDir::new("e2e-file-transfer");
    let cfg = json!({
        "broker": stack.broker.url, "chromium": CHROMIUM, "artifacts": artifacts(), "tmp": tmp.path(),
        "eicar": String::from_utf8(eicar())?,
    });
    let logs = || format!("{}\nclamd log:\n{}", stack.logs(), clamd.log());
    let done =
        run_console_driver("file_transfer.mjs", &cfg, Duration::from_secs(600), logs).await?;
    let sha = done["report_sha256"].as_str().context("report_sha256")?.to_owned();

    // Everything that crossed, or tried to, is in the audit log as alice's: within a few
    // heartbeats.
    let events = wait_for("four file.upload events", Duration::from_secs(60), || async {
        let e = transfers(&admin, "file.upload").await;
        (e.len() >= 4).then_some(e)
    })
    .await
    .with_context(|| stack.logs())?;
    let of = |file: &str| {
        events.iter().find(|(_, d)| d["name"] == file).cloned().unwrap_or_else(|| {
            panic!("no file.upload of {file}: {events:?}");
        })
    };
    let (report, rd) = of("report.bin");
    assert_eq!(report["outcome"], "success");
    assert_eq!(rd["sha256"], sha.as_str(), "the audited hash is the one the browser sent");
    assert_eq!(rd["size"], (3 << 20) + 4321);
    assert_eq!(of("dropped.txt").0["outcome"], "success");
    let (flagged, fd) = of("eicar.com");
    assert_eq!(flagged["outcome"], "infected");
    // (clamd names a signature from outside its official databases `<name>.UNOFFICIAL`.)
    assert!(fd["detail"].as_str().is_some_and(|d| d.starts_with(EICAR_SIGNATURE)), "{fd}");
    assert_eq!(of("big.iso").0["outcome"], "cancelled");

    let downloads = wait_for("three file.download events", Duration::from_secs(60), || async {
        let e = transfers(&admin, "file.download").await;
        (e.len() >= 3).then_some(e)
    })
    .await
    .with_context(|| stack.logs())?;
    let of = |file: &str| {
        downloads.iter().find(|(_, d)| d["name"] == file).cloned().unwrap_or_else(|| {
            panic!("no file.download of {file}: {downloads:?}");
        })
    };
    let (back, bd) = of("report.bin");
    assert_eq!(back["outcome"], "success");
    assert_eq!(bd["sha256"], sha.as_str(), "the file went out as it came in");
    assert_eq!(of("made.txt").0["outcome"], "success");
    let (flagged, fd) = of("eicar.txt");
    assert_eq!(flagged["outcome"], "infected");
    assert!(fd["detail"].as_str().is_some_and(|d| d.starts_with(EICAR_SIGNATURE)), "{fd}");
    Ok(())
}
