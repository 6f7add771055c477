//! Taking access away from people who are signed in, against a real slapd: the directory is
//! checked again every `ldap.revalidate_secs` (1 s here), so a user removed from a group loses
//! what it granted (administration, desktop sessions of pools policy no longer allows, their
//! viewers disconnected) and a deleted user is signed out; an administrator signs a user out
//! everywhere from the API the portal's Users page uses.

use std::time::{Duration, Instant};

use atrium_tests::broker::{ApiClient, Broker, BrokerOptions};
use atrium_tests::fake_node::FakeNode;
use atrium_tests::slapd::Slapd;
use atrium_tests::{Group, skip, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(15);

async fn status(c: &ApiClient, path: &str) -> StatusCode {
    c.get(path).await.expect("request").status()
}

/// Waits until `path` answers `want` for `c`; how long it took from the call.
async fn until_status(c: &ApiClient, path: &str, want: StatusCode) -> Duration {
    let t = Instant::now();
    wait_for(&format!("{path} to answer {want}"), WITHIN, || async {
        (status(c, path).await == want).then_some(())
    })
    .await
    .unwrap();
    t.elapsed()
}

async fn broker(slapd: &Slapd) -> Broker {
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.extra_toml = "[ldap]\nrevalidate_secs = 1\n".into();
    Broker::start(opts).await.unwrap()
}

#[tokio::test]
async fn directory_changes_take_access_away_from_signed_in_users() {
    if skip(Group::Ldap, "directory_changes_take_access_away_from_signed_in_users") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = broker(&slapd).await;
    let carol = broker.admin().await;
    let node = FakeNode::with_general_pool(&broker, &carol).await.unwrap();
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let connected =
        alice.post_json("/api/v1/pools/general/connect", json!({}), StatusCode::OK).await;
    let sid = connected["session_id"].as_str().unwrap().to_owned();
    let mut bob = broker.client();
    bob.login_ok("bob", "bob-pw").await;

    // alice leaves the users' group; bob's entry is deleted.
    slapd
        .apply(
            "dn: cn=atrium-users,ou=groups,dc=example,dc=com\nchangetype: modify\n\
             delete: member\nmember: uid=alice,ou=people,dc=example,dc=com\n\n\
             dn: uid=bob,ou=people,dc=example,dc=com\nchangetype: delete\n",
        )
        .unwrap();
    let changed = Instant::now();
    // bob is signed out.
    let bob_out = until_status(&bob, "/api/v1/me", StatusCode::UNAUTHORIZED).await;
    // alice stays signed in, but her session on a pool she may no longer use ends, and her
    // viewer is disconnected (the display proxy is told).
    wait_for("alice's desktop session to end", WITHIN, || async {
        node.with(|s| s.ended_display_sessions.contains(&sid)).then_some(())
    })
    .await
    .unwrap();
    let alice_out = changed.elapsed();
    assert_eq!(status(&alice, "/api/v1/me").await, StatusCode::OK);
    let me = alice.get_json("/api/v1/me", StatusCode::OK).await;
    assert!(!me["groups"].as_array().unwrap().iter().any(|g| g == "atrium-users"), "{me}");
    let again = alice.post("/api/v1/pools/general/connect", json!({})).await.unwrap();
    assert_eq!(again.status(), StatusCode::FORBIDDEN);
    let ends =
        carol.get_json("/api/v1/admin/audit?action=session.end&actor=alice", StatusCode::OK).await;
    assert!(ends.to_string().contains("no longer allowed"), "{ends}");
    let signout = carol.get_json("/api/v1/admin/audit?action=user.signout", StatusCode::OK).await;
    assert_eq!(signout[0]["target"], "bob", "{signout}");
    assert!(signout[0]["details"].as_str().unwrap().contains("no longer in the directory"));

    // carol leaves the administrators (dave takes her place): the admin API refuses her, the portal hides its pages.
    slapd
        .apply(
            "dn: cn=atrium-admins,ou=groups,dc=example,dc=com\nchangetype: modify\n\
             add: member\nmember: uid=dave,ou=people,dc=example,dc=com\n-\n\
             delete: member\nmember: uid=carol,ou=people,dc=example,dc=com\n",
        )
        .unwrap();
    let carol_out = until_status(&carol, "/api/v1/admin/pools", StatusCode::FORBIDDEN).await;
    let me = carol.get_json("/api/v1/me", StatusCode::OK).await;
    assert_eq!(me["is_admin"], false, "{me}");
    // Signing in again within the entry cache's lifetime does not bring the old groups back.
    let mut again = broker.client();
    let me = again.login_ok("carol", "carol-pw").await;
    assert_eq!(me["user"]["is_admin"], false, "{me}");
    eprintln!(
        "revalidate_secs = 1: deleted user signed out in {bob_out:?}, viewer of a pool no longer \
         allowed ended in {alice_out:?}, administration lost in {carol_out:?}"
    );
}

#[tokio::test]
async fn an_administrator_signs_a_user_out_everywhere() {
    if skip(Group::Ldap, "an_administrator_signs_a_user_out_everywhere") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = broker(&slapd).await;
    let carol = broker.admin().await;
    let node = FakeNode::with_general_pool(&broker, &carol).await.unwrap();
    // alice in two browsers, one of them on a desktop.
    let mut laptop = broker.client();
    laptop.login_ok("alice", "alice-pw").await;
    let mut phone = broker.client();
    phone.login_ok("alice", "alice-pw").await;
    let connected =
        laptop.post_json("/api/v1/pools/general/connect", json!({}), StatusCode::OK).await;
    let sid = connected["session_id"].as_str().unwrap().to_owned();

    let users = carol.get_json("/api/v1/admin/users?search=AL", StatusCode::OK).await;
    assert_eq!(users.as_array().unwrap().len(), 1, "{users}");
    assert_eq!(users[0]["username"], "alice");
    assert_eq!(users[0]["active_sessions"], 2);
    let detail = carol.get_json("/api/v1/admin/users/alice", StatusCode::OK).await;
    assert_eq!(detail["sessions"].as_array().unwrap().len(), 2, "{detail}");
    assert_eq!(detail["sessions"][0]["method"], "password");
    assert_eq!(detail["desktop_sessions"][0]["id"], sid.as_str(), "{detail}");

    let r = carol.post_json("/api/v1/admin/users/alice/signout", json!({}), StatusCode::OK).await;
    assert_eq!(r["sessions_ended"], 2);
    assert_eq!(status(&laptop, "/api/v1/me").await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&phone, "/api/v1/me").await, StatusCode::UNAUTHORIZED);
    assert!(node.with(|s| s.ended_display_sessions.contains(&sid)), "the viewer is disconnected");
    let detail = carol.get_json("/api/v1/admin/users/alice", StatusCode::OK).await;
    assert_eq!(detail["user"]["active_sessions"], 0, "{detail}");
    assert_eq!(detail["desktop_sessions"], json!([]));
    let audit: Value =
        carol.get_json("/api/v1/admin/audit?action=user.signout", StatusCode::OK).await;
    assert_eq!(audit[0]["actor"], "carol");
    assert_eq!(audit[0]["target"], "alice");
    // She signs in again as before; others were never touched.
    laptop.login_ok("alice", "alice-pw").await;
    assert_eq!(status(&carol, "/api/v1/me").await, StatusCode::OK);

    // Bad input: unknown users, a user who is not signed in, a non-administrator.
    let r = carol.post("/api/v1/admin/users/nobody/signout", json!({})).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = carol.get("/api/v1/admin/users?search=%25").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]), "% is a character, not a wildcard");
    let r = laptop.post("/api/v1/admin/users/carol/signout", json!({})).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(status(&carol, "/api/v1/me").await, StatusCode::OK);
}

#[tokio::test]
async fn only_a_definite_answer_signs_anyone_out() {
    if skip(Group::Ldap, "only_a_definite_answer_signs_anyone_out") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let mut opts = BrokerOptions::new(&slapd.url());
    // Disabled accounts carry description=disabled; the filter leaves them out.
    opts.extra_toml = "[ldap]\nrevalidate_secs = 1\n\
        user_filter = \"(&(objectClass=inetOrgPerson)(uid={username})(!(description=disabled)))\"\n"
        .into();
    let broker = Broker::start(opts).await.unwrap();
    let mut frank = broker.client();
    frank.login_ok("frank", "p\"a's ü ß").await;
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;

    // The directory stops answering for several revalidation periods: nobody is signed out.
    slapd.pause();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(status(&frank, "/api/v1/me").await, StatusCode::OK);
    assert_eq!(status(&alice, "/api/v1/me").await, StatusCode::OK);
    slapd.resume();

    // frank is disabled: the filter no longer matches his entry, and he is signed out; alice
    // is not touched.
    slapd
        .apply(
            "dn: uid=frank,ou=people,dc=example,dc=com\nchangetype: modify\n\
             add: description\ndescription: disabled\n",
        )
        .unwrap();
    let took = until_status(&frank, "/api/v1/me", StatusCode::UNAUTHORIZED).await;
    assert_eq!(status(&alice, "/api/v1/me").await, StatusCode::OK);
    eprintln!("a disabled account signed out in {took:?}");
    let carol = broker.admin().await;
    let audit = carol.get_json("/api/v1/admin/audit?action=user.signout", StatusCode::OK).await;
    assert_eq!(audit[0]["target"], "frank", "{audit}");
    assert!(audit[0]["details"].as_str().unwrap().contains("disabled"), "{audit}");
}
