//! Session time limits as a user meets them, in Chromium (tests/browser/limits.mjs): a real
//! console desktop (QEMU), the real display proxy, node and broker. The viewer warns before the
//! maximum length and before the idle time; "I'm still here" is input the broker counts; left
//! alone she is disconnected and told why, and reconnects to the same desktop; once she closes
//! the tab her session ends as disconnected and, after the pool's disconnect time, her desktop
//! is recycled. The audit log says each of these.

use std::time::Duration;

use anyhow::Context;
use atrium_tests::broker::ApiClient;
use atrium_tests::browser::{CHROMIUM, artifacts, run_console_driver};
use atrium_tests::stack::Stack;
use atrium_tests::{Group, TempDir, skip, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// alice's audit events of `action` whose details contain `text`.
async fn audited(admin: &ApiClient, action: &str, text: &str) -> Vec<Value> {
    let all = admin.get_json(&format!("/api/v1/admin/audit?action={action}"), StatusCode::OK).await;
    let mine = |e: &&Value| {
        e["details"].as_str().is_some_and(|d| d.contains(text))
            && (e["actor"] == "alice" || e["details"].as_str().is_some_and(|d| d.contains("alice")))
    };
    all.as_array().map(|a| a.iter().filter(mine).cloned().collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_disconnect_and_end_warnings_as_a_user_meets_them() -> anyhow::Result<()> {
    let name = "idle_disconnect_and_end_warnings_as_a_user_meets_them";
    if skip(Group::Browser, name) || skip(Group::Qemu, name) || skip(Group::Ldap, name) {
        return Ok(());
    }
    let stack = Stack::start(None, None).await?;
    let admin = stack.admin().await;
    admin
        .post_json(
            "/api/v1/admin/pools",
            json!({"name": "brief", "image": "console", "vcpus": 1, "memory_mib": 512,
                   "display": "1024x768", "kind": "floating", "min_ready": 1, "max_size": 2,
                   "idle_timeout_secs": 60, "max_session_secs": 150, "disconnect_timeout_secs": 10}),
            StatusCode::CREATED,
        )
        .await;
    wait_for("a ready desktop in pool brief", Duration::from_secs(300), || async {
        let p = admin.get_json("/api/v1/admin/pools/brief", StatusCode::OK).await;
        (p["counts"]["ready"].as_u64().unwrap_or(0) >= 1).then_some(())
    })
    .await?;

    let tmp = TempDir::new("e2e-limits");
    let cfg = json!({
        "broker": stack.broker.url, "chromium": CHROMIUM, "artifacts": artifacts(), "tmp": tmp.path(),
    });
    let times =
        run_console_driver("limits.mjs", &cfg, Duration::from_secs(600), || stack.logs()).await?;
    let at = |k: &str| times[k].as_i64().with_context(|| format!("{k} in {times}"));
    let (still_here, closed) = (at("still_here_at")?, at("closed_at")?);

    // The idle end: audited with its reason, a minute or more after "I'm still here".
    let idle = audited(&admin, "session.end", "idle timeout").await;
    let idle_at = idle.first().and_then(|e| e["at"].as_i64()).context("no idle session.end")?;
    assert!(idle_at - still_here >= 55_000, "idle end {} ms after the click", idle_at - still_here);
    // The closed tab: the session ends as disconnected after the grace...
    let gone = wait_for("her session to end as disconnected", Duration::from_secs(90), || async {
        let ends = audited(&admin, "session.end", "\"disconnected\"").await;
        ends.first().and_then(|e| e["at"].as_i64())
    })
    .await?;
    eprintln!("e2e limits: disconnected {} ms after the tab closed", gone - closed);
    assert!(gone - closed >= 25_000, "ended {} ms after the tab closed", gone - closed);
    // ...and her desktop is recycled after the pool's disconnect time.
    let recycled = wait_for("her desktop to be recycled", Duration::from_secs(120), || async {
        let r = audited(&admin, "desktop.recycle", "disconnect timeout").await;
        r.first().and_then(|e| e["at"].as_i64())
    })
    .await?;
    eprintln!("e2e limits: recycled {} ms after her session ended", recycled - gone);
    assert!(recycled - gone >= 9_000, "recycled {} ms after the session ended", recycled - gone);
    Ok(())
}
