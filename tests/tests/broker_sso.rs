//! Single sign-on end to end: Chromium signs in to Atrium through a real, certified OpenID
//! provider (`oidc-provider` under Node.js) using the provider's own pages, against a real
//! slapd. A directory user who signs in through the provider is the same user as with a
//! password (same entry, same desktops); a user the provider alone knows signs in with the
//! claims' name and groups. Everything a man in the middle or a confused browser could do is
//! refused with the message the user needs: another state, a replayed code, a tampered ID
//! token, one for another client, an expired one, one with another nonce, a token endpoint
//! answering nonsense or nothing, a provider that is down, a sign-in cancelled at the provider.

use std::time::Duration;

use anyhow::Context;
use atrium_tests::broker::{ApiClient, Broker, BrokerOptions, pool_json};
use atrium_tests::browser::{CHROMIUM, Driver, artifacts};
use atrium_tests::fake_node::FakeNode;
use atrium_tests::oidc::{OidcProvider, client};
use atrium_tests::slapd::Slapd;
use atrium_tests::{Group, TempDir, free_port, skip};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// One command to the browser driver and its answer.
async fn ask(d: &mut Driver, cmd: Value) -> anyhow::Result<Value> {
    d.answer(&cmd.to_string()).await?;
    let v = tokio::time::timeout(Duration::from_secs(90), d.next())
        .await
        .with_context(|| format!("no answer to {cmd}"))??
        .with_context(|| format!("the driver exited on {cmd}"))?;
    anyhow::ensure!(v.get("failed").is_none(), "{cmd} failed: {v}");
    Ok(v)
}

/// The sign-in page's error after a refused single sign-on.
fn refused(v: &Value) -> String {
    assert!(v["url"].as_str().unwrap_or("").contains("#/signin/error/"), "not refused: {v}");
    assert!(v["user"].is_null(), "signed in after all: {v}");
    v["error"].as_str().unwrap_or("").to_owned()
}

/// The newest `login.failed` audit event's reason.
async fn last_failure_reason(admin: &ApiClient) -> String {
    let events =
        admin.get_json("/api/v1/admin/audit?action=login.failed&limit=1", StatusCode::OK).await;
    let details: Value =
        serde_json::from_str(events[0]["details"].as_str().unwrap_or("{}")).unwrap_or_default();
    details["reason"].as_str().unwrap_or("").to_owned()
}

fn accounts() -> Value {
    json!({
        // In the directory: the provider's name for them is their uid.
        "bob": { "preferred_username": "bob", "name": "Bob at the IdP", "groups": ["ignored"] },
        "alice": { "preferred_username": "alice", "name": "Alice" },
        // Not in the directory.
        "zoe": { "preferred_username": "zoe", "name": "Zoë Cloud", "email": "zoe@example.com",
                  "groups": ["atrium-users", "atrium-admins"] },
        "mallory": { "preferred_username": "-rf", "name": "Bad name" },
        // Another subject claiming zoe's name.
        "impostor": { "preferred_username": "zoe", "name": "Not Zoë" },
    })
}

fn oidc_toml(issuer: &str, client_id: &str, extra: &str) -> String {
    format!(
        "[oidc]\nissuer_url = {issuer:?}\nclient_id = {client_id:?}\nclient_secret = \"secret-{client_id}\"\n\
         display_name = \"Example IdP\"\nscopes = [\"openid\", \"profile\", \"email\", \"groups\"]\ntimeout_secs = 3\n{extra}\n"
    )
}

#[tokio::test]
async fn a_browser_signs_in_through_an_openid_provider() {
    if skip(Group::Ldap, "a_browser_signs_in_through_an_openid_provider")
        || skip(Group::Browser, "a_browser_signs_in_through_an_openid_provider")
    {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let port = free_port();
    let broker_url = format!("http://127.0.0.1:{port}");
    let mut provider =
        OidcProvider::start(vec![client("atrium", "secret-atrium", &broker_url)], accounts())
            .await
            .unwrap();
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.port = Some(port);
    opts.extra_toml = oidc_toml(&provider.issuer, "atrium", "");
    let broker = Broker::start(opts).await.unwrap();
    let admin = broker.admin().await;
    let _node = FakeNode::enrolled(&broker, "node-a", 8192).await.unwrap();
    admin
        .post_json(
            "/api/v1/admin/pools",
            pool_json("dedicated", "dedicated", 0, 4),
            StatusCode::CREATED,
        )
        .await;

    // The sign-in page offers both ways.
    let methods = broker.client().get_json("/api/v1/auth/methods", StatusCode::OK).await;
    assert_eq!(methods["password"], true);
    assert_eq!(methods["oidc"]["display_name"], "Example IdP");

    // bob gets a dedicated desktop with his password first.
    let mut pw = broker.client();
    pw.login_ok("bob", "bob-pw").await;
    let first = pw.post_json("/api/v1/pools/dedicated/connect", json!({}), StatusCode::OK).await;
    let desktop = first["desktop_id"].as_str().unwrap().to_owned();

    let tmp = TempDir::new("sso-browser");
    let cfg = json!({ "broker": broker.url, "provider": provider.issuer, "chromium": CHROMIUM, "tmp": tmp.path(), "artifacts": artifacts() });
    let mut d = Driver::start("sso.mjs", &cfg).unwrap();
    let run = async {
        // Through the provider's pages: bob is signed in as the directory's bob (his
        // directory display name and groups, not the provider's), with the same desktop.
        let v = ask(&mut d, json!({ "op": "sso", "login": "bob" })).await?;
        anyhow::ensure!(v["url"].as_str().unwrap_or("").ends_with("#/desktops"), "{v}");
        anyhow::ensure!(v["asked_login"] == true, "the provider asked who it is: {v}");
        let me = ask(&mut d, json!({ "op": "me" })).await?;
        anyhow::ensure!(me["status"] == 200 && me["body"]["username"] == "bob", "{me}");
        anyhow::ensure!(me["body"]["display_name"] == "Bob Brown", "the directory's name: {me}");
        anyhow::ensure!(
            me["body"]["groups"].as_array().is_some_and(
                |g| g.iter().any(|g| g == "atrium-users") && !g.iter().any(|g| g == "ignored")
            ),
            "the directory's groups: {me}"
        );
        let desktops = admin.get_json("/api/v1/admin/desktops", StatusCode::OK).await;
        let bobs: Vec<&Value> =
            desktops.as_array().unwrap().iter().filter(|x| x["username"] == "bob").collect();
        anyhow::ensure!(
            bobs.len() == 1 && bobs[0]["id"] == desktop.as_str(),
            "one desktop for bob: {desktops}"
        );
        let login = admin
            .get_json("/api/v1/admin/audit?action=login&actor=bob&limit=1", StatusCode::OK)
            .await;
        anyhow::ensure!(login[0]["details"].as_str().unwrap_or("").contains("\"oidc\""), "{login}");

        // Sign-out ends the session at the provider too.
        let v = ask(&mut d, json!({ "op": "signout" })).await?;
        anyhow::ensure!(v["user"].is_null() && v["heading"] == "Sign in to Atrium", "{v}");
        let me = ask(&mut d, json!({ "op": "me" })).await?;
        anyhow::ensure!(me["status"] == 401, "signed out: {me}");

        // A replayed code (with the pending cookie stolen too): the provider refuses it.
        let v = ask(&mut d, json!({ "op": "replay" })).await?;
        let e = refused(&v);
        anyhow::ensure!(e.contains("already used or has expired"), "{v}");
        anyhow::ensure!(
            last_failure_reason(&admin).await.contains("refused the sign-in code"),
            "replay"
        );

        // Another state than the one this browser started with.
        let v = ask(&mut d, json!({ "op": "wrong_state" })).await?;
        anyhow::ensure!(refused(&v).contains("not started in this browser"), "{v}");
        anyhow::ensure!(last_failure_reason(&admin).await.contains("state"), "wrong state");

        // Signed out at the provider too: it asks for a login again.
        let v = ask(&mut d, json!({ "op": "sso", "login": "alice" })).await?;
        anyhow::ensure!(v["asked_login"] == true && v["user"] == "Alice Andersen", "{v}");
        let _ = ask(&mut d, json!({ "op": "signout" })).await?;

        // A man in the middle of the token endpoint.
        for (mode, says) in [
            ("tamper", "signature"),
            ("wrong_aud", "another client"),
            ("expired", "expired"),
            ("nonce", "nonce"),
        ] {
            provider.mode(mode).await?;
            let v = ask(&mut d, json!({ "op": "sso", "login": "alice" })).await?;
            anyhow::ensure!(refused(&v).contains("security checks"), "{mode}: {v}");
            let reason = last_failure_reason(&admin).await;
            anyhow::ensure!(reason.contains(says), "{mode}: audited {reason:?}");
        }
        provider.mode("garbage").await?;
        let v = ask(&mut d, json!({ "op": "sso", "login": "alice" })).await?;
        anyhow::ensure!(refused(&v).contains("unavailable or gave an answer"), "garbage: {v}");
        provider.mode("normal").await?;

        // Cancelled at the provider.
        let v = ask(&mut d, json!({ "op": "sso", "cancel": true, "fresh": true })).await?;
        anyhow::ensure!(refused(&v).contains("cancelled or refused"), "{v}");

        // A user the provider knows and the directory does not.
        let v = ask(&mut d, json!({ "op": "sso", "login": "zoe", "fresh": true })).await?;
        anyhow::ensure!(refused(&v).contains("not in the company directory"), "{v}");

        // The token endpoint never answers: refused once the call times out (3 s here).
        provider.mode("hang").await?;
        let started = std::time::Instant::now();
        let v = ask(&mut d, json!({ "op": "sso", "login": "alice", "fresh": true })).await?;
        anyhow::ensure!(refused(&v).contains("unavailable or gave an answer"), "hang: {v}");
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "took {:?}",
            started.elapsed()
        );
        anyhow::ensure!(last_failure_reason(&admin).await.contains("timed out"), "hang");
        // The provider is down: the button leads back to the sign-in page with the reason.
        provider.stop().await;
        let v = ask(&mut d, json!({ "op": "sso", "login": "alice" })).await?;
        anyhow::ensure!(refused(&v).contains("unavailable or gave an answer"), "down: {v}");

        // Password sign-in still works beside it.
        let mut c = broker.client();
        c.login_ok("alice", "alice-pw").await;
        d.answer(&json!({ "op": "quit" }).to_string()).await?;
        anyhow::Ok(())
    };
    let result = run.await;
    if result.is_err() {
        eprintln!("broker log:\n{}", broker.log());
    }
    result.unwrap();
    d.finish().await.unwrap();
    // No secret of the flow is in the log.
    let log = broker.log();
    assert!(!log.contains("secret-atrium"), "the client secret is in the log");
}

#[tokio::test]
async fn users_the_provider_alone_knows_sign_in_by_their_claims() {
    if skip(Group::Browser, "users_the_provider_alone_knows_sign_in_by_their_claims") {
        return;
    }
    let port = free_port();
    let broker_url = format!("http://127.0.0.1:{port}");
    let provider =
        OidcProvider::start(vec![client("claims", "secret-claims", &broker_url)], accounts())
            .await
            .unwrap();
    // No directory at all: single sign-on alone, users from the claims.
    let mut opts = BrokerOptions::new("ldap://127.0.0.1:9");
    opts.port = Some(port);
    opts.extra_toml = format!(
        "{}[login]\npassword = false\n",
        oidc_toml(&provider.issuer, "claims", "users = \"claims\"\nprovider_logout = false")
    );
    let broker = Broker::start(opts).await.unwrap();
    let methods = broker.client().get_json("/api/v1/auth/methods", StatusCode::OK).await;
    assert_eq!(methods["password"], false);
    let r = broker.client().login("carol", "carol-pw").await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "password sign-in is off");

    let tmp = TempDir::new("sso-claims");
    let cfg = json!({ "broker": broker.url, "provider": provider.issuer, "chromium": CHROMIUM, "tmp": tmp.path(), "artifacts": artifacts() });
    let mut d = Driver::start("sso.mjs", &cfg).unwrap();
    let run = async {
        let v = ask(&mut d, json!({ "op": "sso", "login": "zoe" })).await?;
        anyhow::ensure!(v["user"] == "Zoë Cloud", "{v}");
        let me = ask(&mut d, json!({ "op": "me" })).await?;
        anyhow::ensure!(me["body"]["username"] == "zoe", "{me}");
        // Her groups come from the claim, and policy makes atrium-admins administrators.
        anyhow::ensure!(me["body"]["is_admin"] == true, "{me}");
        // Sign-out stays here (provider_logout = false): the sign-in page, no provider page.
        let v = ask(&mut d, json!({ "op": "signout" })).await?;
        anyhow::ensure!(v["url"].as_str().unwrap_or("").starts_with(&broker_url), "{v}");
        // Another subject with zoe's name is not zoe.
        let v = ask(&mut d, json!({ "op": "sso", "login": "impostor", "fresh": true })).await?;
        anyhow::ensure!(refused(&v).contains("cannot be used with Atrium"), "{v}");
        // A name that cannot be a login name in a desktop is refused.
        let v = ask(&mut d, json!({ "op": "sso", "login": "mallory", "fresh": true })).await?;
        anyhow::ensure!(refused(&v).contains("cannot be used with Atrium"), "{v}");
        d.answer(&json!({ "op": "quit" }).to_string()).await?;
        anyhow::Ok(())
    };
    let result = run.await;
    if result.is_err() {
        eprintln!("broker log:\n{}", broker.log());
    }
    result.unwrap();
    d.finish().await.unwrap();
}
