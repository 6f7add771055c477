//! Enterprise sign-in end to end, with real desktops: slapd, a real OpenID provider
//! (`oidc-provider` under Node.js), the broker, a real node booting the graphical desktop under
//! QEMU and the display proxy, used through Chromium (`tests/browser/enterprise_signin.mjs`).
//!
//! Policy asks for the second factor in two places: before connecting to the pool `desktop`
//! (everyone), and at sign-in for the group `contractors`. A directory user (alice, password)
//! sets up an authenticator app on her way to the desktop; a user only the provider knows (dave,
//! `users = "claims"`, in `contractors` by the provider's groups claim) signs in through the
//! provider's own pages and sets one up when he comes back. Each then finds the desktop's panel
//! showing their own name: the desktop signed in as them. An administrator signs dave out
//! everywhere from the Users page: his viewer ends and he lands on the sign-in page, told why,
//! while alice's viewer stays connected. Codes are computed here as an authenticator app does.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use atrium_tests::broker::{policies_with, totp_code};
use atrium_tests::browser::{CHROMIUM, Driver, artifacts};
use atrium_tests::oidc::{OidcProvider, client};
use atrium_tests::screen::{Glyphs, PANEL, Screen, panel_rows};
use atrium_tests::stack::Stack;
use atrium_tests::{Group, TempDir, free_port, skip};
use reqwest::StatusCode;
use serde_json::{Value, json};

const POLICY: &str = r#"
// The provider's group "contractors" passes the second factor at sign-in.
@id("contractors-mfa")
permit (
  principal in Atrium::Group::"contractors",
  action == Atrium::Action::"require_mfa",
  resource == Atrium::Broker::"atrium"
);

// The pool "desktop" asks everyone for it before connecting.
@id("desktop-pool-mfa")
permit (principal, action == Atrium::Action::"require_mfa", resource)
when { resource is Atrium::Pool && resource.name == "desktop" };
"#;

const ALICE_PANEL: &str = "Alice Andersen (alice)";
const DAVE_PANEL: &str = "Dave Doe (dave)";

/// Whether the desktop's panel shows `text` (the signed-in user's name). Glyphs learned from
/// one panel hold for the other: the same font draws both.
fn panel_shows(screen: &Screen, text: &str, glyphs: &Glyphs) -> Option<(u32, u32, u32)> {
    let (y0, y1) = panel_rows(screen)?;
    let (x0, cell_w) = screen.find_monospace(y0, y1, text, PANEL, glyphs)?;
    Some((x0, cell_w, y0))
}

/// Learns the glyphs of `text` where [`panel_shows`] found it.
fn learn_panel(screen: &Screen, text: &str, at: (u32, u32, u32), glyphs: &mut Glyphs) {
    let (x0, cell_w, y0) = at;
    let (_, y1) = panel_rows(screen).expect("found before");
    let n = u32::try_from(text.chars().count()).expect("short");
    let cells: Vec<_> =
        (0..n).map(|i| screen.cell(x0 + i * cell_w, y0, cell_w, y1 - y0, PANEL)).collect();
    glyphs.learn(&cells, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_and_sso_users_pass_mfa_use_their_desktops_and_one_is_signed_out_everywhere()
-> anyhow::Result<()> {
    let name =
        "directory_and_sso_users_pass_mfa_use_their_desktops_and_one_is_signed_out_everywhere";
    if skip(Group::Browser, name) || skip(Group::Qemu, name) || skip(Group::Ldap, name) {
        return Ok(());
    }
    let port = free_port();
    let broker_url = format!("http://127.0.0.1:{port}");
    let accounts = json!({
        "dave": { "preferred_username": "dave", "name": "Dave Doe",
                  "groups": ["atrium-users", "contractors"] },
    });
    let provider =
        OidcProvider::start(vec![client("atrium", "secret-atrium", &broker_url)], accounts).await?;
    let policies = policies_with("mfa", POLICY);
    let oidc = format!(
        "[oidc]\nissuer_url = {:?}\nclient_id = \"atrium\"\nclient_secret = \"secret-atrium\"\n\
         display_name = \"Example IdP\"\nscopes = [\"openid\", \"profile\", \"groups\"]\n\
         users = \"claims\"\n",
        provider.issuer
    );
    let stack = Stack::start_with(
        |o| {
            o.port = Some(port);
            o.policies_dir = Some(policies.path().to_owned());
            o.extra_toml = oidc;
        },
        None,
    )
    .await?;
    // One booted desktop for each of them.
    stack.pool("desktop", "desktop", 2, "1280x800").await?;
    let admin = stack.admin().await;

    let tmp = TempDir::new("e2e-enterprise");
    let cfg = json!({
        "broker": stack.broker.url, "chromium": CHROMIUM, "artifacts": artifacts(),
        "tmp": tmp.path(), "sso_login": "dave",
    });
    let mut driver = Driver::start("enterprise_signin.mjs", &cfg)?;
    let mut glyphs = Glyphs::default();
    let mut seen = Vec::new();
    let mut revoked_ms = None;
    let run = async {
        while let Some(msg) = driver.next().await? {
            if msg["done"] == true {
                break;
            }
            let answer = match msg["phase"].as_str() {
                Some("code") => totp_code(msg["secret"].as_str().context("no key")?, 0),
                Some("codes") => {
                    let codes: Vec<&str> = msg["codes"]
                        .as_array()
                        .context("no codes")?
                        .iter()
                        .filter_map(Value::as_str)
                        .collect();
                    let mut distinct = codes.clone();
                    distinct.sort_unstable();
                    distinct.dedup();
                    ensure!(codes.len() == 10 && distinct.len() == 10, "recovery codes {codes:?}");
                    "ok".into()
                }
                // Alice's desktop first: her panel teaches the glyphs that then check Dave's
                // (the letters they share must be the same, and his panel must not be hers).
                Some("desktop_alice") => {
                    let screen = Screen::from_png(&std::fs::read(shot(&msg)?)?)?;
                    match panel_shows(&screen, ALICE_PANEL, &glyphs) {
                        Some(at) => {
                            learn_panel(&screen, ALICE_PANEL, at, &mut glyphs);
                            seen.push("alice");
                            "ok".into()
                        }
                        None => "more".into(),
                    }
                }
                Some("desktop_dave") => {
                    ensure!(!glyphs.is_empty(), "dave's desktop before alice's");
                    let screen = Screen::from_png(&std::fs::read(shot(&msg)?)?)?;
                    if panel_shows(&screen, DAVE_PANEL, &glyphs).is_some()
                        && panel_shows(&screen, ALICE_PANEL, &glyphs).is_none()
                    {
                        seen.push("dave");
                        "ok".into()
                    } else {
                        "more".into()
                    }
                }
                Some("revoked") => {
                    // The broker agrees: no sign-in and no desktop session left, audited.
                    let dave = admin.get_json("/api/v1/admin/users/dave", StatusCode::OK).await;
                    ensure!(dave["sessions"].as_array().is_some_and(Vec::is_empty), "{dave}");
                    ensure!(
                        dave["desktop_sessions"].as_array().is_some_and(Vec::is_empty),
                        "{dave}"
                    );
                    ensure!(dave["mfa_enrolled"] == true, "{dave}");
                    let e = admin
                        .get_json("/api/v1/admin/audit?action=user.signout&limit=1", StatusCode::OK)
                        .await;
                    ensure!(e[0]["target"] == "dave" && e[0]["actor"] == "carol", "{e}");
                    let alice = admin.get_json("/api/v1/admin/users/alice", StatusCode::OK).await;
                    if alice["desktop_sessions"].as_array().is_none_or(|s| s.len() != 1) {
                        // Why it ended: the broker audits every end with its reason.
                        let ends = admin
                            .get_json("/api/v1/admin/audit?action=session.end", StatusCode::OK)
                            .await;
                        let nodes = admin
                            .get_json("/api/v1/admin/audit?action=node.", StatusCode::OK)
                            .await;
                        bail!(
                            "alice's desktop session ended too: {alice}; ends: {ends}; nodes: {nodes}"
                        );
                    }
                    revoked_ms = msg["ms"].as_u64();
                    "ok".into()
                }
                other => bail!("unknown phase {other:?}"),
            };
            driver.answer(&answer).await?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(900), run)
        .await
        .context("the browser test took over 15 minutes")??;
    if let Err(e) = driver.finish().await {
        bail!("{e}\n{}", stack.logs());
    }
    ensure!(seen == ["alice", "dave"], "desktops seen: {seen:?}");
    let ms = revoked_ms.context("the driver stopped before the revocation")?;
    println!("signed out everywhere: viewer ended and sign-in page shown after {ms} ms");

    // Both set up their second factor through the pages, audited.
    let enrolled = admin.get_json("/api/v1/admin/audit?action=mfa.enrol", StatusCode::OK).await;
    // (The filter is a prefix: `mfa.enrol.start` is each set-up page shown.)
    let mut who: Vec<&str> = enrolled
        .as_array()
        .context("audit")?
        .iter()
        .filter(|e| e["action"] == "mfa.enrol")
        .filter_map(|e| e["actor"].as_str())
        .collect();
    who.sort_unstable();
    ensure!(who == ["alice", "dave"], "mfa.enrol by {who:?}");
    Ok(())
}

fn shot(msg: &Value) -> anyhow::Result<&str> {
    msg["shot"].as_str().context("a phase without a shot")
}
