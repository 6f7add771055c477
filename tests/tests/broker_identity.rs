//! One account, one identity, against a real slapd: lockout counts against the directory entry
//! however its name is written (any attribute the user filter matches), and desktops and
//! sign-in sessions belong to the entry's stable id (`entryUUID`), so a username deleted and
//! re-created in the directory starts with nothing of the old entry's.

use atrium_tests::broker::{Broker, BrokerOptions, pool_json};
use atrium_tests::fake_node::FakeNode;
use atrium_tests::slapd::Slapd;
use atrium_tests::{Group, skip};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn login_status(broker: &Broker, user: &str, pw: &str) -> StatusCode {
    broker.client().login(user, pw).await.expect("request").status()
}

#[tokio::test]
async fn every_name_of_an_account_shares_one_lockout() {
    if skip(Group::Ldap, "every_name_of_an_account_shares_one_lockout") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let mut opts = BrokerOptions::new(&slapd.url());
    // Users sign in with their uid or their mail address: two names for one entry.
    opts.env.push((
        "ATRIUM_LDAP_USER_FILTER".into(),
        "(&(objectClass=inetOrgPerson)(|(uid={username})(mail={username})))".into(),
    ));
    opts.extra_toml = "[login]\nmax_failures_per_user = 3\nmax_failures_per_address = 100\nwindow_secs = 60\nlockout_secs = 60\n".into();
    let broker = Broker::start(opts).await.unwrap();
    assert_eq!(login_status(&broker, "10002@example.com", "bob-pw").await, StatusCode::OK);

    // Three wrong passwords, each under another of bob's names: bob is locked out under all.
    for name in ["bob", "10002@example.com", "BOB"] {
        assert_eq!(login_status(&broker, name, "wrong").await, StatusCode::UNAUTHORIZED, "{name}");
    }
    for name in ["bob", "10002@example.com", " Bob "] {
        assert_eq!(
            login_status(&broker, name, "bob-pw").await,
            StatusCode::TOO_MANY_REQUESTS,
            "{name} names the locked entry"
        );
    }
    // Another entry is not affected; names that lead nowhere still count (by the name), so
    // probing for accounts is limited too.
    assert_eq!(login_status(&broker, "alice", "alice-pw").await, StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(login_status(&broker, "nobody", "x").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(login_status(&broker, "NOBODY", "x").await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_re_created_username_gets_nothing_of_the_old_entrys() {
    if skip(Group::Ldap, "a_re_created_username_gets_nothing_of_the_old_entrys") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let _node = FakeNode::enrolled(&broker, "node-a", 8192).await.unwrap();
    let admin = broker.admin().await;
    admin
        .post_json("/api/v1/admin/pools", pool_json("mine", "dedicated", 0, 4), StatusCode::CREATED)
        .await;

    // Alice gets a dedicated desktop (a home disk of her own).
    let mut old = broker.client();
    old.login_ok("alice", "alice-pw").await;
    let first = old.post_json("/api/v1/pools/mine/connect", json!({}), StatusCode::OK).await;
    let first_id = first["desktop_id"].as_str().unwrap().to_owned();
    let mine = old.get_json("/api/v1/desktops", StatusCode::OK).await;
    assert_eq!(mine.as_array().map(Vec::len), Some(1), "{mine}");

    // She leaves; her entry is deleted, and a new person is given the name "alice" (and put
    // in the users' group).
    slapd
        .apply(
            "dn: uid=alice,ou=people,dc=example,dc=com\nchangetype: delete\n\n\
             dn: uid=alice,ou=people,dc=example,dc=com\nchangetype: add\nobjectClass: inetOrgPerson\n\
             uid: alice\ncn: Alice Other\nsn: Other\nuserPassword: new-alice-pw\n\n\
             dn: cn=atrium-users,ou=groups,dc=example,dc=com\nchangetype: modify\n\
             add: member\nmember: uid=alice,ou=people,dc=example,dc=com\n",
        )
        .unwrap();
    let mut new = broker.client();
    new.login_ok("alice", "new-alice-pw").await;

    // The former entry's session is over, and the new alice sees none of its desktops...
    assert_eq!(old.get("/api/v1/me").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let theirs = new.get_json("/api/v1/desktops", StatusCode::OK).await;
    assert_eq!(theirs, json!([]), "the new alice must not see the old one's desktops");
    let r = new.post(&format!("/api/v1/desktops/{first_id}/disconnect"), json!({})).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "nor act on them");
    // ...and connecting gives her a desktop (and disk) of her own.
    let second = new.post_json("/api/v1/pools/mine/connect", json!({}), StatusCode::OK).await;
    assert_ne!(second["desktop_id"], first["desktop_id"]);
    assert_eq!(second["source"], "new");

    // The administrator sees both, each with its owner's entry id.
    let all = admin.get_json("/api/v1/admin/desktops", StatusCode::OK).await;
    let owner = |id: &Value| {
        all.as_array().unwrap().iter().find(|d| d["id"] == *id).map(|d| d["owner_id"].clone())
    };
    let (a, b) = (owner(&first["desktop_id"]), owner(&second["desktop_id"]));
    assert!(a.as_ref().is_some_and(Value::is_string) && b.as_ref().is_some_and(Value::is_string));
    assert_ne!(a, b, "{all}");
}
