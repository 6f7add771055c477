//! Pools, placement, assignment and display tickets through the real broker, with a real slapd
//! and real SQLite/PostgreSQL. Nodes are the in-process stand-in of the node API
//! (`atrium_tests::fake_node`): these tests are about the broker's decisions; the end-to-end
//! tests boot real desktops on the real node.

use std::collections::HashSet;
use std::time::Duration;

use atrium_tests::broker::{Broker, BrokerOptions, pool_json, verify_ticket, wait_ready_spares};
use atrium_tests::fake_node::FakeNode;
use atrium_tests::postgres::Postgres;
use atrium_tests::slapd::Slapd;
use atrium_tests::{Group, skip, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn spares_reuse_tickets_and_floating_sign_out() {
    if skip(Group::Ldap, "spares_reuse_tickets_and_floating_sign_out") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let node = FakeNode::enrolled(&broker, "node-a", 8192).await.unwrap();
    let a = broker.admin().await;
    a.post_json("/api/v1/admin/pools", pool_json("general", "floating", 2, 4), StatusCode::CREATED)
        .await;
    wait_ready_spares(&a, "general", 2).await;

    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let pools = alice.get_json("/api/v1/pools", StatusCode::OK).await;
    assert_eq!(pools[0]["name"], "general");
    assert_eq!(pools[0]["state"], "ready");
    let bad = alice
        .post("/api/v1/pools/general/connect", json!({"keyboard_layout": "de; rm -rf /"}))
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let c1 = alice
        .post_json(
            "/api/v1/pools/general/connect",
            json!({"keyboard_layout": "de"}),
            StatusCode::OK,
        )
        .await;
    assert_eq!(c1["status"], "ready");
    assert_eq!(c1["source"], "spare");
    let ticket = c1["ticket"].as_str().unwrap();
    let claims = verify_ticket(&broker, ticket).await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "atrium-display");
    assert!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap() <= 60);
    assert_eq!(claims["desktop"], c1["desktop_id"]);
    assert_eq!(claims["node"], "node-a");
    assert_eq!(claims["caps"]["clipboard_copy_out"], true);
    assert_eq!(claims["caps"]["file_upload"], false);
    assert_eq!(claims["caps"]["view_only"], false);
    assert_eq!(claims["caps"]["audio"], true, "the default policies let users hear desktops");
    let vm = claims["vm"].as_str().unwrap().to_owned();
    assert_eq!(c1["ws_url"], format!("ws://{}/ws/{vm}", node.addr));
    // The guest agent was told who signed in.
    assert!(node.with(|s| {
        s.sessions.iter().any(|(v, u)| {
            *v == vm
                && u.username == "alice"
                && u.uid == Some(10001)
                && u.keyboard_layout.as_deref() == Some("de")
        })
    }));

    // Connecting again reuses the same desktop with a fresh, distinct ticket.
    let c2 = alice.post_json("/api/v1/pools/general/connect", json!({}), StatusCode::OK).await;
    assert_eq!(c2["source"], "existing");
    assert_eq!(c2["desktop_id"], c1["desktop_id"]);
    let claims2 = verify_ticket(&broker, c2["ticket"].as_str().unwrap()).await;
    assert_ne!(claims2["jti"], claims["jti"]);
    assert_eq!(claims2["sid"], claims["sid"], "one desktop session");

    // The pool refills to min_ready spares.
    wait_ready_spares(&a, "general", 2).await;
    let sessions = a.get_json("/api/v1/admin/sessions", StatusCode::OK).await;
    assert_eq!(sessions.as_array().unwrap().len(), 1);
    assert_eq!(sessions[0]["username"], "alice");
    assert_eq!(sessions[0]["pool_name"], "general");
    assert_eq!(sessions[0]["client_addr"], "127.0.0.1");

    // An administrator may join the session view-only (policy `shadow`); a user may not.
    let sid = claims["sid"].as_str().unwrap().to_owned();
    let shadow = a
        .post_json(&format!("/api/v1/admin/sessions/{sid}/shadow"), json!({}), StatusCode::OK)
        .await;
    let sc = verify_ticket(&broker, shadow["ticket"].as_str().unwrap()).await;
    assert_eq!(sc["sub"], "carol");
    assert_eq!(sc["vm"], claims["vm"]);
    assert_eq!(sc["sid"], claims["sid"]);
    assert_eq!(sc["caps"]["view_only"], true);
    assert_eq!(sc["caps"]["shadow"], true);
    assert_eq!(sc["caps"]["clipboard_copy_out"], false);
    assert_eq!(sc["caps"]["audio"], false, "a shadow does not hear the session");
    assert_eq!(
        alice
            .post(&format!("/api/v1/admin/sessions/{sid}/shadow"), json!({}))
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );

    // Sign-out ends the session: the display proxy is told, the floating desktop is destroyed.
    alice.post_json("/api/v1/auth/logout", json!({}), StatusCode::NO_CONTENT).await;
    wait_for("the VM to be deleted", Duration::from_secs(20), || async {
        node.with(|s| s.deleted.contains(&vm)).then_some(())
    })
    .await
    .unwrap();
    assert!(node.with(|s| s.ended_display_sessions.contains(&sid)));
    let audit = a.get_json("/api/v1/admin/audit?actor=alice", StatusCode::OK).await;
    let actions: HashSet<&str> =
        audit.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for want in ["login", "desktop.assign", "logout", "session.end"] {
        assert!(actions.contains(want), "{want} missing from {actions:?}");
    }
}

#[tokio::test]
async fn new_desktops_start_full_pools_refuse_and_lost_nodes_reassign() {
    if skip(Group::Ldap, "new_desktops_start_full_pools_refuse_and_lost_nodes_reassign") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let node = FakeNode::enrolled(&broker, "node-a", 8192).await.unwrap();
    node.with(|s| s.ready_after = Duration::from_secs(2));
    let a = broker.admin().await;
    a.post_json("/api/v1/admin/pools", pool_json("small", "floating", 0, 1), StatusCode::CREATED)
        .await;
    wait_for("the node to register", Duration::from_secs(10), || async {
        let n = a.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
        (n.as_array().unwrap().len() == 1).then_some(())
    })
    .await
    .unwrap();

    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let c = alice.post_json("/api/v1/pools/small/connect", json!({}), StatusCode::OK).await;
    assert_eq!(c["status"], "starting");
    assert_eq!(c["source"], "new");
    assert!(c.get("ticket").is_none());
    let desktop = c["desktop_id"].clone();
    // Once the VM is ready, the same call hands out a ticket.
    let ready = wait_for("the new desktop to be ready", Duration::from_secs(20), || async {
        let c = alice.post_json("/api/v1/pools/small/connect", json!({}), StatusCode::OK).await;
        (c["status"] == "ready").then_some(c)
    })
    .await
    .unwrap();
    assert_eq!(ready["desktop_id"], desktop);

    // max_size 1: bob gets a clear 503.
    let mut bob = broker.client();
    bob.login_ok("bob", "bob-pw").await;
    let r = bob.post("/api/v1/pools/small/connect", json!({})).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().get("retry-after").is_some());
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("in use"), "{body}");
    let pools = bob.get_json("/api/v1/pools", StatusCode::OK).await;
    assert_eq!(pools[0]["state"], "full");

    // Drain: no new desktops there.
    a.post_json("/api/v1/admin/nodes/node-a/drain", json!({}), StatusCode::OK).await;
    a.post_json("/api/v1/admin/pools", pool_json("other", "floating", 0, 5), StatusCode::CREATED)
        .await;
    let r = bob.post("/api/v1/pools/other/connect", json!({})).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "a draining node takes no new desktop");
    a.post_json("/api/v1/admin/nodes/node-a/undrain", json!({}), StatusCode::OK).await;
    let c = bob.post_json("/api/v1/pools/other/connect", json!({}), StatusCode::OK).await;
    assert_eq!(c["source"], "new");

    // The node goes silent: it is marked lost and its desktops fail; alice's next connect
    // gives her a new desktop on a node that is up.
    let node_b = FakeNode::enrolled(&broker, "node-b", 8192).await.unwrap();
    node.with(|s| s.heartbeating = false);
    wait_for("node-a to be lost", Duration::from_secs(20), || async {
        let n = a.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
        n.as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "node-a" && n["state"] == "lost")
            .then_some(())
    })
    .await
    .unwrap();
    let c = alice.post_json("/api/v1/pools/small/connect", json!({}), StatusCode::OK).await;
    assert_ne!(c["desktop_id"], desktop, "a new desktop replaces the failed one");
    assert_eq!(c["source"], "new");
    assert!(node_b.with(|s| s.created) >= 1);
    let lost = a.get_json("/api/v1/admin/audit?action=node.lost", StatusCode::OK).await;
    assert_eq!(lost[0]["target"], "node-a");
    // Alice's session on it ended with the node, and the audit log says so.
    let ended =
        a.get_json("/api/v1/admin/audit?action=session.end&actor=alice", StatusCode::OK).await;
    assert!(
        ended.as_array().unwrap().iter().any(|e| e["target"] == desktop
            && e["details"].as_str().is_some_and(|d| d.contains("node lost"))),
        "{ended}"
    );
}

#[tokio::test]
async fn dedicated_desktops_stay_with_their_user() {
    if skip(Group::Ldap, "dedicated_desktops_stay_with_their_user") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let node = FakeNode::enrolled(&broker, "node-a", 8192).await.unwrap();
    let a = broker.admin().await;
    a.post_json("/api/v1/admin/pools", pool_json("mine", "dedicated", 1, 3), StatusCode::CREATED)
        .await;
    wait_ready_spares(&a, "mine", 1).await;
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let c1 = alice.post_json("/api/v1/pools/mine/connect", json!({}), StatusCode::OK).await;
    let vm = verify_ticket(&broker, c1["ticket"].as_str().unwrap()).await["vm"]
        .as_str()
        .unwrap()
        .to_owned();
    let disk = node
        .with(|s| s.vms[&vm].spec.persistent_disk.clone())
        .expect("dedicated desktops have a persistent disk");
    alice.post_json("/api/v1/auth/logout", json!({}), StatusCode::NO_CONTENT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!node.with(|s| s.deleted.contains(&vm)), "a dedicated desktop survives sign-out");
    let mut again = broker.client();
    again.login_ok("alice", "alice-pw").await;
    let c2 = again.post_json("/api/v1/pools/mine/connect", json!({}), StatusCode::OK).await;
    assert_eq!(c2["desktop_id"], c1["desktop_id"]);
    assert_eq!(c2["source"], "existing");
    assert_eq!(node.with(|s| s.vms[&vm].spec.persistent_disk.clone()), Some(disk));

    // An administrator ends her session: the viewers are told to go, the dedicated desktop stays.
    let sid = verify_ticket(&broker, c2["ticket"].as_str().unwrap()).await["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let a2 = broker.admin().await;
    let open = a2.get_json("/api/v1/admin/sessions", StatusCode::OK).await;
    assert!(open.as_array().unwrap().iter().any(|s| s["id"] == sid.as_str()), "{open}");
    a2.post_json(&format!("/api/v1/admin/sessions/{sid}/end"), json!({}), StatusCode::NO_CONTENT)
        .await;
    assert!(node.with(|s| s.ended_display_sessions.contains(&sid)));
    assert_eq!(a2.get_json("/api/v1/admin/sessions", StatusCode::OK).await, json!([]));
    assert_eq!(
        a2.post(&format!("/api/v1/admin/sessions/{sid}/end"), json!({})).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!node.with(|s| s.deleted.contains(&vm)), "a dedicated desktop survives its session");
    let audit =
        a2.get_json("/api/v1/admin/audit?action=session.end_by_admin", StatusCode::OK).await;
    assert_eq!(audit[0]["actor"], "carol");
}

#[tokio::test]
async fn administration_is_for_administrators_and_validated() {
    if skip(Group::Ldap, "administration_is_for_administrators_and_validated") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let a = broker.admin().await;
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let anon = broker.client();
    for path in [
        "/api/v1/admin/pools",
        "/api/v1/admin/nodes",
        "/api/v1/admin/sessions",
        "/api/v1/admin/audit",
        "/api/v1/admin/desktops",
    ] {
        assert_eq!(alice.get(path).await.unwrap().status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(anon.get(path).await.unwrap().status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(a.get(path).await.unwrap().status(), StatusCode::OK, "{path}");
    }
    assert_eq!(
        alice.post("/api/v1/admin/pools", pool_json("x", "floating", 0, 1)).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        alice.post("/api/v1/admin/nodes/n/drain", json!({})).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        alice.post("/api/v1/admin/sessions/s/end", json!({})).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        a.get_json("/api/v1/admin/pools", StatusCode::OK).await,
        json!([]),
        "refused calls change nothing"
    );

    // Validation names the field.
    let cases = [
        ("name", json!("bad name!")),
        ("image", json!("../x")),
        ("vcpus", json!(0)),
        ("memory_mib", json!(1)),
        ("display", json!("100x100")),
        ("min_ready", json!(99)),
        ("idle_timeout_secs", json!(1)),
    ];
    for (field, value) in cases {
        let mut p = pool_json("ok", "floating", 1, 2);
        p[field] = value;
        let r = a.post("/api/v1/admin/pools", p).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{field}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["field"], field, "{body}");
    }
    let mut p = pool_json("ok", "floating", 1, 2);
    p["kind"] = json!("sometimes");
    assert_eq!(a.post("/api/v1/admin/pools", p).await.unwrap().status(), StatusCode::BAD_REQUEST);
    let mut p = pool_json("ok", "floating", 1, 2);
    p["surprise"] = json!(1);
    assert_eq!(a.post("/api/v1/admin/pools", p).await.unwrap().status(), StatusCode::BAD_REQUEST);

    // Create, read, update, delete, with a clear 409 on a duplicate name.
    let created = a
        .post_json("/api/v1/admin/pools", pool_json("eng", "floating", 0, 2), StatusCode::CREATED)
        .await;
    assert_eq!(created["counts"]["total"], 0);
    let r = a.post("/api/v1/admin/pools", pool_json("eng", "floating", 0, 2)).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let mut upd = pool_json("eng", "dedicated", 0, 5);
    upd["description"] = json!("Engineering");
    let r = a.call(reqwest::Method::PUT, "/api/v1/admin/pools/eng", Some(upd)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let got = a.get_json("/api/v1/admin/pools/eng", StatusCode::OK).await;
    assert_eq!(got["kind"], "dedicated");
    assert_eq!(got["max_size"], 5);
    assert_eq!(got["description"], "Engineering");
    let r = a.call(reqwest::Method::DELETE, "/api/v1/admin/pools/eng", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(a.get("/api/v1/admin/pools/eng").await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(
        a.post("/api/v1/admin/nodes/nope/drain", json!({})).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    // Every admin action is in the audit log with who, what, when, where; filters work.
    let audit = a.get_json("/api/v1/admin/audit?action=pool.", StatusCode::OK).await;
    let actions: Vec<&str> =
        audit.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["pool.delete", "pool.update", "pool.create"]);
    assert!(audit.as_array().unwrap().iter().all(|e| e["actor"] == "carol"
        && e["client_addr"] == "127.0.0.1"
        && e["at"].as_i64().unwrap() > 0));
    let none = a.get_json("/api/v1/admin/audit?action=pool.&until=1", StatusCode::OK).await;
    assert_eq!(none, json!([]));
    assert_eq!(
        a.get("/api/v1/admin/audit?limit=abc").await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );

    // Policy: dave is in no group, so he sees no pool and may not connect.
    a.post_json("/api/v1/admin/pools", pool_json("general", "floating", 0, 2), StatusCode::CREATED)
        .await;
    let mut dave = broker.client();
    dave.login_ok("dave", "dave-pw").await;
    assert_eq!(dave.get_json("/api/v1/pools", StatusCode::OK).await, json!([]));
    assert_eq!(
        dave.post("/api/v1/pools/general/connect", json!({})).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        alice.post("/api/v1/pools/nosuch/connect", json!({})).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    // The OpenAPI document describes the API and metrics are exported.
    let doc: Value = reqwest::get(format!("{}/api/openapi.json", broker.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/api/v1/pools/{pool}/connect"]["post"].is_object());
    let metrics =
        reqwest::get(format!("{}/metrics", broker.url)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("atrium_broker_logins_total{outcome=\"success\"} 3"), "{metrics}");
}

/// 500 users connect at once to a pool with N ready spares and max_size N: exactly N get a
/// desktop, no desktop goes to two users, everyone else is told the pool is full.
async fn concurrent_connects(database_url: Option<String>) {
    const USERS: usize = 500;
    const SPARES: u64 = 8;
    let slapd = Slapd::start().unwrap();
    let users = slapd.add_users("load", USERS).unwrap();
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.database_url = database_url;
    opts.extra_toml = "[login]\nmax_failures_per_address = 10000\n".into();
    let broker = Broker::start(opts).await.unwrap();
    let _node = FakeNode::enrolled(&broker, "node-a", 1 << 20).await.unwrap();
    let a = broker.admin().await;
    a.post_json(
        "/api/v1/admin/pools",
        pool_json(
            "rush",
            "floating",
            u32::try_from(SPARES).unwrap(),
            u32::try_from(SPARES).unwrap(),
        ),
        StatusCode::CREATED,
    )
    .await;
    wait_ready_spares(&a, "rush", SPARES).await;

    // Sign everyone in first (bounded parallelism), then connect all at once.
    let mut clients = Vec::new();
    for chunk in users.chunks(50) {
        let logins = chunk.iter().map(|(u, p)| {
            let mut c = broker.client();
            let (u, p) = (u.clone(), p.clone());
            async move {
                c.login_ok(&u, &p).await;
                c
            }
        });
        clients.extend(futures_util::future::join_all(logins).await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(USERS));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let b = barrier.clone();
            tokio::spawn(async move {
                b.wait().await;
                let r = c.post("/api/v1/pools/rush/connect", json!({})).await.unwrap();
                let status = r.status();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            })
        })
        .collect();
    let mut desktops = HashSet::new();
    let mut refused = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::OK => {
                assert_eq!(body["status"], "ready", "{body}");
                assert!(
                    desktops.insert(body["desktop_id"].as_str().unwrap().to_owned()),
                    "desktop {} given twice",
                    body["desktop_id"]
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => refused += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(desktops.len() as u64, SPARES, "exactly N desktops");
    assert_eq!(refused, USERS - desktops.len());
    let p = a.get_json("/api/v1/admin/pools/rush", StatusCode::OK).await;
    assert_eq!(p["counts"]["in_use"].as_u64(), Some(SPARES));
    assert_eq!(p["counts"]["total"].as_u64(), Some(SPARES));
}

#[tokio::test]
async fn concurrent_connects_on_sqlite_never_give_a_desktop_twice() {
    if skip(Group::Ldap, "concurrent_connects_on_sqlite_never_give_a_desktop_twice") {
        return;
    }
    concurrent_connects(None).await;
}

#[tokio::test]
async fn concurrent_connects_on_postgresql_never_give_a_desktop_twice() {
    if skip(Group::Ldap, "concurrent_connects_on_postgresql_never_give_a_desktop_twice")
        || skip(Group::Postgres, "concurrent_connects_on_postgresql_never_give_a_desktop_twice")
    {
        return;
    }
    let pg = Postgres::start().unwrap();
    concurrent_connects(Some(pg.url("atrium"))).await;
}

#[tokio::test]
async fn placement_honours_vcpus_and_a_refusing_node_is_left_alone_for_a_while() {
    const T: &str = "placement_honours_vcpus_and_a_refusing_node_is_left_alone_for_a_while";
    if skip(Group::Ldap, T) {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let users = slapd.add_users("cpu", 3).unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let node = FakeNode::enrolled(&broker, "node-a", 65536).await.unwrap();
    node.with(|s| s.vcpus_total = 2);
    let a = broker.admin().await;
    a.post_json("/api/v1/admin/pools", pool_json("cpu", "floating", 0, 8), StatusCode::CREATED)
        .await;
    wait_for("the node to register", Duration::from_secs(10), || async {
        let n = a.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
        (n[0]["capacity"]["vcpus_total"] == 2).then_some(())
    })
    .await
    .unwrap();
    let mut clients = Vec::new();
    for (u, p) in &users {
        let mut c = broker.client();
        c.login_ok(u, p).await;
        clients.push(c);
    }
    // Two desktops of one vCPU fill the node's two vCPUs; the third user is told at once, and
    // the node is never asked for what it cannot hold.
    for c in &clients[..2] {
        c.post_json("/api/v1/pools/cpu/connect", json!({}), StatusCode::OK).await;
    }
    let r = clients[2].post("/api/v1/pools/cpu/connect", json!({})).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(node.with(|s| (s.created, s.refused)), (2, 0));

    // A node that refuses anyway (it knows better than its report) is left alone for a while:
    // a user pressing connect again and again costs it one refusal and the log one row.
    node.with(|s| {
        s.vcpus_total = 64;
        s.refuse = Some("full".into());
    });
    tokio::time::sleep(Duration::from_millis(600)).await; // a heartbeat with the new report
    for _ in 0..10 {
        let r = clients[2].post("/api/v1/pools/cpu/connect", json!({})).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(node.with(|s| s.refused), 1, "the node was asked again while backing off");
    let rows = a.get_json("/api/v1/admin/audit?action=desktop.provision", StatusCode::OK).await;
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    // Once it accepts again, the back-off ends.
    node.with(|s| s.refuse = None);
    let c = wait_for("the node to be tried again", Duration::from_secs(20), || async {
        let r = clients[2].post("/api/v1/pools/cpu/connect", json!({})).await.unwrap();
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    c.unwrap();
    assert_eq!(node.with(|s| s.created), 3);
}

#[tokio::test]
async fn a_failed_dedicated_desktop_restarts_with_its_disk() {
    if skip(Group::Ldap, "a_failed_dedicated_desktop_restarts_with_its_disk") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let node = FakeNode::enrolled(&broker, "node-a", 8192).await.unwrap();
    let a = broker.admin().await;
    a.post_json("/api/v1/admin/pools", pool_json("mine", "dedicated", 0, 3), StatusCode::CREATED)
        .await;
    wait_for("the node", Duration::from_secs(10), || async {
        (a.get_json("/api/v1/admin/nodes", StatusCode::OK).await.as_array().unwrap().len() == 1)
            .then_some(())
    })
    .await
    .unwrap();
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let c1 = wait_for("alice's desktop", Duration::from_secs(20), || async {
        let c = alice.post_json("/api/v1/pools/mine/connect", json!({}), StatusCode::OK).await;
        (c["status"] == "ready").then_some(c)
    })
    .await
    .unwrap();
    let vm = verify_ticket(&broker, c1["ticket"].as_str().unwrap()).await["vm"]
        .as_str()
        .unwrap()
        .to_owned();
    let disk = node.with(|s| s.vms[&vm].spec.persistent_disk.clone()).unwrap();
    // The guest dies.
    node.with(|s| s.vms.get_mut(&vm).unwrap().state = atrium_protocol::node::VmState::Failed);
    wait_for("the desktop to be failed", Duration::from_secs(10), || async {
        let ds = a.get_json("/api/v1/admin/desktops", StatusCode::OK).await;
        (ds[0]["state"] == "failed").then_some(())
    })
    .await
    .unwrap();
    // Her next connect starts the same desktop again, with the same disk, and the dead VM goes.
    let c2 = alice.post_json("/api/v1/pools/mine/connect", json!({}), StatusCode::OK).await;
    assert_eq!(c2["source"], "restarted", "{c2}");
    assert_eq!(c2["desktop_id"], c1["desktop_id"]);
    assert!(node.with(|s| s.deleted.contains(&vm)), "the failed VM was removed first");
    let disks: Vec<Option<String>> =
        node.with(|s| s.vms.values().map(|v| v.spec.persistent_disk.clone()).collect());
    assert_eq!(disks, vec![Some(disk)], "one VM, on her disk");
}

#[tokio::test]
async fn a_broker_restart_does_not_lose_nodes_and_a_returning_node_restores_its_desktops() {
    if skip(
        Group::Ldap,
        "a_broker_restart_does_not_lose_nodes_and_a_returning_node_restores_its_desktops",
    ) {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let data = atrium_tests::TempDir::new("broker-restart");
    let port = atrium_tests::free_port();
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.port = Some(port);
    opts.database_url = Some(format!("sqlite://{}/broker.db", data.path().display()));
    opts.extra_toml =
        format!("[sessions]\nkeys_dir = {:?}\n", data.path().join("keys").display().to_string());
    let b1 = Broker::start(opts.clone()).await.unwrap();
    let node = FakeNode::enrolled(&b1, "node-a", 8192).await.unwrap();
    let a = b1.admin().await;
    a.post_json("/api/v1/admin/pools", pool_json("p", "floating", 2, 2), StatusCode::CREATED).await;
    wait_ready_spares(&a, "p", 2).await;

    // The broker is down for longer than lost_after_secs (3 s in the harness)...
    drop(b1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // ...and comes back: it must not judge the nodes before they could heartbeat.
    let b2 = Broker::start(opts).await.unwrap();
    let a = b2.admin().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let nodes = a.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
    assert_eq!(nodes[0]["state"], "up", "{nodes}");
    assert_eq!(a.get_json("/api/v1/admin/pools/p", StatusCode::OK).await["counts"]["ready"], 2);

    // The node goes silent long enough to be lost: its desktops fail...
    node.with(|s| s.heartbeating = false);
    wait_for("the node to be lost", Duration::from_secs(20), || async {
        let ds = a.get_json("/api/v1/admin/desktops", StatusCode::OK).await;
        ds.as_array().unwrap().iter().all(|d| d["state"] == "failed").then_some(())
    })
    .await
    .unwrap();
    // ...and when it returns with its VMs still running, they are ready again, not rebuilt.
    let created = node.with(|s| s.created);
    node.with(|s| s.heartbeating = true);
    wait_ready_spares(&a, "p", 2).await;
    assert_eq!(node.with(|s| s.created), created, "the desktops came back; no new VM was made");
    assert!(node.with(|s| s.deleted.is_empty()));
}

/// Node identities through the portal's API: an administrator makes a one-time token, a node
/// enrols with it and serves desktops; the token cannot enrol a second node; revoking the node
/// makes the broker treat it as lost at once (its desktops fail over, its heartbeats are
/// refused), and every step is audited.
#[tokio::test]
async fn an_administrator_enrols_and_revokes_a_node() {
    if skip(Group::Ldap, "an_administrator_enrols_and_revokes_a_node") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let admin = broker.admin().await;
    let token = admin.enrolment_token("node-a").await;
    let listed = admin.get_json("/api/v1/admin/enrolments", StatusCode::OK).await;
    assert_eq!(listed[0]["node_id"], "node-a");
    assert!(!listed.to_string().contains(&token), "the token is shown once, never listed");
    let node = FakeNode::start(&broker.url, &token, "node-a", 8192).await.unwrap();
    // Spent: a second node cannot enrol with it, nor another key as node-a.
    let again = reqwest::Client::new()
        .post(format!("{}/api/v1/nodes/enrol", broker.url))
        .json(&json!({ "token": token, "node_id": "node-a", "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "vcpus_total": 1, "memory_mib_total": 1024 }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::FORBIDDEN);

    admin
        .post_json(
            "/api/v1/admin/pools",
            pool_json("general", "floating", 1, 2),
            StatusCode::CREATED,
        )
        .await;
    wait_ready_spares(&admin, "general", 1).await;

    admin.post_json("/api/v1/admin/nodes/node-a/revoke", json!({}), StatusCode::NO_CONTENT).await;
    wait_for("the revoked node to be lost", Duration::from_secs(10), || async {
        let n = admin.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
        (n[0]["state"] == "lost").then_some(())
    })
    .await
    .unwrap();
    // It keeps heartbeating with its key; it stays lost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = admin.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
    assert_eq!(n[0]["state"], "lost", "{n}");
    let desktops = admin.get_json("/api/v1/admin/desktops", StatusCode::OK).await;
    assert!(
        desktops.as_array().unwrap().iter().all(|d| d["state"] != "ready"),
        "no desktop stays ready on a revoked node: {desktops}"
    );
    let audit = admin.get_json("/api/v1/admin/audit?limit=200", StatusCode::OK).await.to_string();
    for action in ["node.enrolment_create", "node.enrol", "node.revoke"] {
        assert!(audit.contains(action), "{action} audited");
    }
    drop(node);
}

/// Policy (action `watermark`) decides whose desktops are watermarked: the broker puts the
/// `[watermark]` text, filled in with who and from where, in the display ticket of a user of a
/// watermarked pool and none in another pool's; an administrator who shadows that user gets the
/// user's watermark with a line naming themselves.
#[tokio::test]
async fn policy_puts_a_watermark_naming_the_user_in_their_tickets_and_the_shadows() {
    let name = "policy_puts_a_watermark_naming_the_user_in_their_tickets_and_the_shadows";
    if skip(Group::Ldap, name) {
        return;
    }
    let policies = atrium_tests::broker::policies_with(
        "watermark",
        r#"@id("finance-watermark")
permit (principal, action == Atrium::Action::"watermark", resource)
when { resource is Atrium::Pool && resource.name == "finance" };
"#,
    );
    let slapd = Slapd::start().unwrap();
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.policies_dir = Some(policies.path().to_owned());
    opts.extra_toml =
        "[watermark]\ntemplate = \"{name} ({user})\\n{client} · {pool}\\n{time}\"\nopacity = 25\n"
            .into();
    let broker = Broker::start(opts).await.unwrap();
    let _node = FakeNode::enrolled(&broker, "node-a", 8192).await.unwrap();
    let a = broker.admin().await;
    for pool in ["general", "finance"] {
        a.post_json("/api/v1/admin/pools", pool_json(pool, "floating", 1, 2), StatusCode::CREATED)
            .await;
        wait_ready_spares(&a, pool, 1).await;
    }
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let general = alice.post_json("/api/v1/pools/general/connect", json!({}), StatusCode::OK).await;
    let claims = verify_ticket(&broker, general["ticket"].as_str().unwrap()).await;
    assert!(claims.get("watermark").is_none(), "no watermark outside finance: {claims}");
    assert_eq!(claims["aud"], "atrium-display");

    let finance = alice.post_json("/api/v1/pools/finance/connect", json!({}), StatusCode::OK).await;
    let claims = verify_ticket(&broker, finance["ticket"].as_str().unwrap()).await;
    let w = &claims["watermark"];
    assert_eq!(
        claims["aud"], "atrium-display-watermarked",
        "a proxy that cannot draw it refuses it"
    );
    assert_eq!(w["text"], "Alice Andersen (alice)\n127.0.0.1 · finance\n{time}", "{claims}");
    assert_eq!(
        (w["opacity"].as_u64(), w["size"].as_u64(), w["angle"].as_i64()),
        (Some(25), Some(20), Some(30))
    );

    let sid = claims["sid"].as_str().unwrap();
    let shadow = a
        .post_json(&format!("/api/v1/admin/sessions/{sid}/shadow"), json!({}), StatusCode::OK)
        .await;
    let sc = verify_ticket(&broker, shadow["ticket"].as_str().unwrap()).await;
    assert_eq!(
        sc["watermark"]["text"],
        "Alice Andersen (alice)\n127.0.0.1 · finance\n{time}\nwatched by carol",
        "{sc}"
    );
}

#[tokio::test]
async fn a_clone_pool_asks_for_clones_and_each_desktop_shows_its_image_and_start() {
    if skip(Group::Ldap, "a_clone_pool_asks_for_clones_and_each_desktop_shows_its_image_and_start")
    {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let node = FakeNode::enrolled(&broker, "node-a", 8192).await.unwrap();
    let a = broker.admin().await;
    // Only floating desktops are clones: a dedicated one keeps its own disk.
    let mut dedicated = pool_json("mine", "dedicated", 0, 2);
    dedicated["clone"] = json!(true);
    let refused = a.post("/api/v1/admin/pools", dedicated).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.json::<Value>().await.unwrap()["field"], "clone");
    // Absent, a floating pool clones; a dedicated one, or one on the builtin runtime, boots.
    let pool = a
        .post_json(
            "/api/v1/admin/pools",
            pool_json("clones", "floating", 1, 2),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(pool["clone"], true, "absent is clones for a floating pool");
    let mut booted = pool_json("boots", "floating", 1, 2);
    booted["clone"] = json!(false);
    let booted = a.post_json("/api/v1/admin/pools", booted, StatusCode::CREATED).await;
    assert_eq!(booted["clone"], false);
    let mine = a
        .post_json("/api/v1/admin/pools", pool_json("mine", "dedicated", 0, 1), StatusCode::CREATED)
        .await;
    assert_eq!(mine["clone"], false, "absent is no clones for a dedicated pool");
    let mut builtin = pool_json("builtin", "floating", 0, 1);
    builtin["runtime"] = json!("builtin");
    let builtin = a.post_json("/api/v1/admin/pools", builtin, StatusCode::CREATED).await;
    assert_eq!(builtin["clone"], false, "absent is no clones on the builtin runtime");
    wait_ready_spares(&a, "clones", 1).await;
    wait_ready_spares(&a, "boots", 1).await;

    // The node was asked for a clone for the clone pool only, and each desktop records what
    // the node started: the image version and whether it is a clone.
    let asked: Vec<bool> = node.with(|s| s.vms.values().map(|v| v.spec.clone).collect());
    assert_eq!(asked.iter().filter(|c| **c).count(), 1, "{asked:?}");
    let desktops = a.get_json("/api/v1/admin/desktops", StatusCode::OK).await;
    let of = |p: &Value| {
        desktops
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["pool_id"] == p["id"])
            .cloned()
            .unwrap_or_else(|| panic!("no desktop of {p} in {desktops}"))
    };
    assert_eq!(of(&pool)["cloned"], true);
    assert_eq!(of(&pool)["image"], "console");
    assert_eq!(of(&booted)["cloned"], false);
    assert_eq!(of(&booted)["image"], "console");

    // Turning clones off changes what the next desktops are asked as.
    let mut off = pool_json("clones", "floating", 2, 2);
    off["clone"] = json!(false);
    let path = format!("/api/v1/admin/pools/{}", pool["id"].as_str().unwrap());
    let changed = a.call(reqwest::Method::PUT, &path, Some(off)).await.unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert_eq!(changed.json::<Value>().await.unwrap()["clone"], false);
    // A replacement without the field keeps the pool's own setting: a client that does not
    // know it never turns clones on.
    let kept = a
        .call(reqwest::Method::PUT, &path, Some(pool_json("clones", "floating", 2, 2)))
        .await
        .unwrap();
    assert_eq!(kept.status(), StatusCode::OK);
    assert_eq!(kept.json::<Value>().await.unwrap()["clone"], false, "a PUT turned clones on");
    wait_ready_spares(&a, "clones", 2).await;
    let clones_asked = node.with(|s| s.vms.values().filter(|v| v.spec.clone).count());
    assert_eq!(clones_asked, 1, "a desktop was asked as a clone after clones were turned off");
}

#[tokio::test]
async fn with_memory_overcommit_placement_goes_by_what_vms_really_use() {
    const T: &str = "with_memory_overcommit_placement_goes_by_what_vms_really_use";
    if skip(Group::Ldap, T) {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    // 1024 MiB for VMs handed out 8 times over; its VMs really use 1000 MiB of it: a 512 MiB
    // desktop's share (64 MiB) does not fit beside them, though 8192 MiB are free to hand out.
    let node = FakeNode::enrolled(&broker, "node-a", 8192).await.unwrap();
    node.with(|s| {
        s.memory_mib_physical = 1024;
        s.memory_mib_used = 1000;
    });
    let a = broker.admin().await;
    a.post_json("/api/v1/admin/pools", pool_json("dense", "floating", 0, 8), StatusCode::CREATED)
        .await;
    wait_for("the node's report", Duration::from_secs(10), || async {
        let n = a.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
        (n[0]["capacity"]["memory_mib_used"] == 1000).then_some(())
    })
    .await
    .unwrap();
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let r = alice.post("/api/v1/pools/dense/connect", json!({})).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(node.with(|s| s.created), 0, "the node was asked for what it cannot hold");
    // Its VMs use less now (idle, or clones sharing their template's pages): it takes one.
    node.with(|s| s.memory_mib_used = 900);
    let placed = wait_for("the desktop to be placed", Duration::from_secs(20), || async {
        let r = alice.post("/api/v1/pools/dense/connect", json!({})).await.unwrap();
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    placed.unwrap();
    assert_eq!(node.with(|s| s.created), 1);
}
