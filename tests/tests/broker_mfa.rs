//! Two-step verification, against a real slapd, with policies that ask it of administrators at
//! sign-in and of everyone for the pool `secure`: an administrator sets up an authenticator app
//! in Chromium (QR code and key, a first code, recovery codes shown once), then signs in with
//! codes the test computes like an app: a code used once is refused when typed again, the next
//! one works, a recovery code works once. Through the API: a pool that requires it asks for it
//! (and connects once passed), wrong codes lock the account out, a sign-in that owes its code
//! reaches nothing else, an administrator resets a user's second factor (audited).

use atrium_tests::broker::{ApiClient, Broker, BrokerOptions, policies_with, pool_json, totp_code};
use atrium_tests::browser::{CHROMIUM, Driver, artifacts};
use atrium_tests::fake_node::FakeNode;
use atrium_tests::slapd::Slapd;
use atrium_tests::{Group, TempDir, skip};
use reqwest::StatusCode;
use serde_json::{Value, json};

const POLICY: &str = r#"
// Administrators pass a second factor at sign-in.
@id("admins-mfa")
permit (
  principal in Atrium::Group::"atrium-admins",
  action == Atrium::Action::"require_mfa",
  resource == Atrium::Broker::"atrium"
);

// The pool "secure" asks everyone for it.
@id("secure-pool-mfa")
permit (principal, action == Atrium::Action::"require_mfa", resource)
when { resource is Atrium::Pool && resource.name == "secure" };
"#;

async fn verify(c: &ApiClient, code: &str) -> StatusCode {
    c.post("/api/v1/auth/mfa/verify", json!({ "code": code })).await.unwrap().status()
}

#[tokio::test]
async fn a_second_factor_at_sign_in_and_for_a_pool() {
    if skip(Group::Ldap, "a_second_factor_at_sign_in_and_for_a_pool")
        || skip(Group::Browser, "a_second_factor_at_sign_in_and_for_a_pool")
    {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let policies = policies_with("mfa", POLICY);
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.policies_dir = Some(policies.path().to_owned());
    opts.extra_toml = "[login]\nmax_failures_per_user = 3\n".into();
    let broker = Broker::start(opts).await.unwrap();

    // carol (an administrator) in Chromium: set up, then three later sign-ins.
    let tmp = TempDir::new("mfa-browser");
    let cfg = json!({ "broker": broker.url, "chromium": CHROMIUM, "tmp": tmp.path(),
                      "artifacts": artifacts(), "user": ["carol", "carol-pw"], "rounds": 3 });
    let mut d = Driver::start("mfa.mjs", &cfg).unwrap();
    let mut secret = String::new();
    let mut first = String::new();
    let mut codes: Vec<String> = Vec::new();
    let mut round = 0;
    let mut step_in_round = 0;
    let mut done = false;
    while let Some(msg) = d.next().await.unwrap() {
        if msg["done"] == true {
            done = true;
        } else if let Some(s) = msg["secret"].as_str() {
            secret = s.to_owned();
            first = totp_code(&secret, 0);
            d.answer(&first).await.unwrap();
        } else if let Some(c) = msg["codes"].as_array() {
            codes = c.iter().map(|c| c.as_str().unwrap().to_owned()).collect();
            assert_eq!(codes.len(), 10);
            d.answer("ok").await.unwrap();
        } else if msg["ask"] == "code" {
            step_in_round = 0;
            // Round 0: the set-up's code again (used: refused), then the next one.
            // Round 1: a recovery code. Round 2: the same recovery code (refused), then another.
            let answer = if round == 0 { first.clone() } else { codes[0].clone() };
            d.answer(&answer).await.unwrap();
        } else if let Some(r) = msg.get("result") {
            step_in_round += 1;
            let refused = r["heading"] == "Two-step verification";
            let answer = match (round, step_in_round) {
                (0, 1) => {
                    assert!(refused, "a code used once is refused: {r}");
                    assert!(r["error"].as_str().unwrap().contains("wrong or was used"), "{r}");
                    totp_code(&secret, 1)
                }
                (1, 1) | (2, 2) | (0, 2) => {
                    assert_eq!(r["heading"], "My desktops", "round {round}: {r}");
                    round += 1;
                    "next".to_owned()
                }
                (2, 1) => {
                    assert!(refused, "a recovery code works once: {r}");
                    codes[1].clone()
                }
                other => panic!("unexpected {other:?}: {r}"),
            };
            d.answer(&answer).await.unwrap();
        } else {
            panic!("unexpected message {msg}");
        }
    }
    d.finish().await.unwrap();
    assert!(done && round == 3, "round {round}");

    // carol through the API: her sign-in owes a code and reaches nothing else until then.
    let mut carol = broker.client();
    let me = carol.login_ok("carol", "carol-pw").await;
    assert_eq!(me["user"]["mfa"], "pending");
    let r = carol.get("/api/v1/admin/pools").await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "mfa");
    assert_eq!(verify(&carol, &codes[2]).await, StatusCode::NO_CONTENT);
    carol.get_json("/api/v1/admin/pools", StatusCode::OK).await;
    let _node = FakeNode::enrolled(&broker, "node-a", 8192).await.unwrap();
    for name in ["general", "secure"] {
        carol
            .post_json(
                "/api/v1/admin/pools",
                pool_json(name, "floating", 0, 4),
                StatusCode::CREATED,
            )
            .await;
    }

    // alice: no second factor at sign-in; the pool "secure" asks for one.
    let mut alice = broker.client();
    let me = alice.login_ok("alice", "alice-pw").await;
    assert_eq!(me["user"]["mfa"], "none");
    alice.post_json("/api/v1/pools/general/connect", json!({}), StatusCode::OK).await;
    let r = alice.post("/api/v1/pools/secure/connect", json!({})).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "mfa");
    let e = alice.post_json("/api/v1/auth/mfa/enrol", json!({}), StatusCode::OK).await;
    let alice_secret = e["secret"].as_str().unwrap().to_owned();
    assert!(e["qr_svg"].as_str().unwrap().contains("<svg"));
    assert!(e["otpauth_uri"].as_str().unwrap().starts_with("otpauth://totp/Atrium:alice?"));
    let r =
        alice.post("/api/v1/auth/mfa/enrol/confirm", json!({ "code": "000000" })).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "a wrong first code");
    let r = alice
        .post_json(
            "/api/v1/auth/mfa/enrol/confirm",
            json!({ "code": totp_code(&alice_secret, 0) }),
            StatusCode::OK,
        )
        .await;
    assert_eq!(r["recovery_codes"].as_array().unwrap().len(), 10);
    alice.post_json("/api/v1/pools/secure/connect", json!({}), StatusCode::OK).await;

    // Set up, alice is asked at every sign-in; wrong codes lock her out like wrong passwords.
    let mut again = broker.client();
    let me = again.login_ok("alice", "alice-pw").await;
    assert_eq!(me["user"]["mfa"], "pending");
    // Three wrong codes (the set-up's code passed and cleared the earlier one): locked out, even
    // with the right code; signing in again with the password gives no guesses back.
    for _ in 0..3 {
        assert_eq!(verify(&again, "123456").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(verify(&again, &totp_code(&alice_secret, 1)).await, StatusCode::TOO_MANY_REQUESTS);
    let mut third = broker.client();
    third.login_ok("alice", "alice-pw").await;
    assert_eq!(verify(&third, &totp_code(&alice_secret, 1)).await, StatusCode::TOO_MANY_REQUESTS);

    // Someone with only carol's password cannot put their own app in place of hers; carol,
    // having passed it, starts setting up another, and hers stays in force until it is confirmed.
    let mut thief = broker.client();
    thief.login_ok("carol", "carol-pw").await;
    let r = thief.post("/api/v1/auth/mfa/enrol", json!({})).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    carol.post_json("/api/v1/auth/mfa/enrol", json!({}), StatusCode::OK).await;
    let status = carol.get_json("/api/v1/auth/mfa", StatusCode::OK).await;
    assert_eq!(status["enrolled"], true, "{status}");
    assert_eq!(verify(&thief, &codes[3]).await, StatusCode::NO_CONTENT);

    // An administrator resets her second factor: audited, and her sign-ins end (whoever holds
    // one must not set up an app in her place).
    let r =
        carol.call(reqwest::Method::DELETE, "/api/v1/admin/users/alice/mfa", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(alice.get("/api/v1/me").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let detail = carol.get_json("/api/v1/admin/users/alice", StatusCode::OK).await;
    assert_eq!(detail["mfa_enrolled"], false);
    let audit = carol.get_json("/api/v1/admin/audit?action=mfa.", StatusCode::OK).await;
    let actions: Vec<&str> =
        audit.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for a in ["mfa.reset", "mfa.enrol", "mfa.verify", "mfa.failed"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    // Nothing secret in the log.
    let log = broker.log();
    assert!(!log.contains(&secret) && !log.contains(&codes[4]), "a secret in the log");
}

#[tokio::test]
async fn a_sign_in_that_owes_its_second_factor_ends_after_mfa_pending_secs() {
    if skip(Group::Ldap, "a_sign_in_that_owes_its_second_factor_ends_after_mfa_pending_secs") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let policies = policies_with("mfa", POLICY);
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.policies_dir = Some(policies.path().to_owned());
    opts.extra_toml = "[mfa]\npending_secs = 10\n".into();
    let broker = Broker::start(opts).await.unwrap();

    // An administrator owes a code at sign-in; a wrong one says so (field "code"); the right
    // one passes, and her sign-in then lasts its whole lifetime (new cookies say so).
    let mut carol = broker.client();
    let me = carol.login_ok("carol", "carol-pw").await;
    assert_eq!(me["user"]["mfa"], "pending");
    let e = carol.post_json("/api/v1/auth/mfa/enrol", json!({}), StatusCode::OK).await;
    let secret = e["secret"].as_str().unwrap().to_owned();
    let r =
        carol.post("/api/v1/auth/mfa/enrol/confirm", json!({ "code": "000000" })).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "code");
    let r = carol
        .post("/api/v1/auth/mfa/enrol/confirm", json!({ "code": totp_code(&secret, 0) }))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cookies: Vec<String> = r
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    assert!(cookies.iter().any(|c| c.starts_with("atrium_session=")), "{cookies:?}");
    assert!(cookies.iter().any(|c| c.starts_with("atrium_csrf=")), "{cookies:?}");
    // Another sign-in of hers that does not pass it.
    let mut owing = broker.client();
    assert_eq!(owing.login_ok("carol", "carol-pw").await["user"]["mfa"], "pending");

    // Ten seconds later: the one that passed goes on; the one that owed it has ended, and
    // not even a right code answers it (a 401 that is not a wrong code's). It is not counted
    // as signed in.
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    carol.get_json("/api/v1/me", StatusCode::OK).await;
    carol.get_json("/api/v1/admin/pools", StatusCode::OK).await;
    assert_eq!(owing.get("/api/v1/me").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let r = owing.post("/api/v1/auth/mfa/verify", json!({ "code": totp_code(&secret, 1) })).await;
    let r = r.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_ne!(r.json::<Value>().await.unwrap()["field"], "code");
    let detail = carol.get_json("/api/v1/admin/users/carol", StatusCode::OK).await;
    assert_eq!(detail["sessions"].as_array().map(Vec::len), Some(1), "{detail}");

    // Signing in again starts a new window.
    let mut again = broker.client();
    assert_eq!(again.login_ok("carol", "carol-pw").await["user"]["mfa"], "pending");
    again.get_json("/api/v1/me", StatusCode::OK).await;
}
