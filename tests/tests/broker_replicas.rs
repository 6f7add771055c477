//! Broker replicas on one PostgreSQL behave as one broker: they start together (migrations take
//! turns), a user signs in on one, connects on another and disconnects on a third, the
//! reconcile work is done by one replica at a time and handed over when it dies, a database
//! outage is a clear 503 that heals by itself, and SIGTERM drains before the broker stops.
//! Real brokers, slapd and PostgreSQL; nodes are the in-process stand-in.

use std::time::{Duration, Instant};

use atrium_tests::broker::{ApiClient, Broker, BrokerOptions};
use atrium_tests::fake_node::FakeNode;
use atrium_tests::postgres::Postgres;
use atrium_tests::slapd::Slapd;
use atrium_tests::{Group, TempDir, bin_path, skip, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn pool(name: &str, spares: u32) -> Value {
    json!({
        "name": name, "description": "test pool", "image": "console", "vcpus": 1, "memory_mib": 512,
        "display": "1280x800", "kind": "floating", "min_ready": spares, "max_size": 4,
        "idle_timeout_secs": 600, "max_session_secs": 3600
    })
}

/// One signing key in a folder of its own, as a mounted secret gives it to every replica.
fn shared_key() -> TempDir {
    let dir = TempDir::new("keys");
    let out = std::process::Command::new(bin_path("atrium-broker"))
        .arg("rotate-key")
        .env("ATRIUM_SESSIONS_KEYS_DIR", dir.path())
        .env("ATRIUM_LDAP_GROUP_BASE", "ou=groups,dc=example,dc=com")
        .output()
        .expect("atrium-broker rotate-key");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

fn replica_options(slapd: &Slapd, pg: &Postgres, keys: &TempDir) -> BrokerOptions {
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.database_url = Some(pg.url("atrium"));
    opts.extra_toml = format!("[sessions]\nkeys_dir = {:?}\n", keys.path().display().to_string());
    opts
}

/// Replicas of one broker on one PostgreSQL and one directory, started at the same moment:
/// they migrate the empty database together.
struct Replicas {
    // Dropped in this order: the brokers stop before their database.
    brokers: Vec<Broker>,
    slapd: Slapd,
    pg: Postgres,
    _keys: TempDir,
}

impl Replicas {
    async fn start(n: usize) -> Self {
        let pg = Postgres::start().unwrap();
        let slapd = Slapd::start().unwrap();
        let keys = shared_key();
        let opts = replica_options(&slapd, &pg, &keys);
        let starting: Vec<_> = (0..n).map(|_| tokio::spawn(Broker::start(opts.clone()))).collect();
        let mut brokers = Vec::with_capacity(n);
        for s in starting {
            brokers.push(s.await.expect("a broker start task").expect("a broker replica"));
        }
        Self { brokers, slapd, pg, _keys: keys }
    }
}

async fn status(url: &str) -> Option<u16> {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// `atrium_broker_reconcile_runs_total` of one replica.
async fn reconcile_runs(b: &Broker) -> u64 {
    let text = reqwest::get(format!("{}/metrics", b.url)).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("atrium_broker_reconcile_runs_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the reconcile counter")
}

#[tokio::test]
async fn three_replicas_start_at_once_and_act_as_one_broker() {
    const T: &str = "three_replicas_start_at_once_and_act_as_one_broker";
    if skip(Group::Ldap, T) || skip(Group::Postgres, T) {
        return;
    }
    // All three migrate an empty database at the same moment.
    let mut replicas = Replicas::start(3).await;
    let brokers = &mut replicas.brokers;
    for b in brokers.iter() {
        assert_eq!(status(&format!("{}/readyz", b.url)).await, Some(200), "{}", b.log());
    }
    let node = FakeNode::enrolled(&brokers[0], "node-a", 16384).await.unwrap();
    let mut admin = brokers[1].client();
    admin.login_ok("carol", "carol-pw").await;
    admin.post_json("/api/v1/admin/pools", pool("shared", 2), StatusCode::CREATED).await;
    wait_for("two spares", Duration::from_secs(30), || async {
        let p = admin.get_json("/api/v1/admin/pools/shared", StatusCode::OK).await;
        (p["counts"]["ready"] == 2).then_some(())
    })
    .await
    .unwrap();

    // Signed in on the first, connected on the second, disconnected on the third.
    let mut alice = brokers[0].client();
    alice.login_ok("alice", "alice-pw").await;
    alice.base = brokers[1].url.clone();
    let c = alice.post_json("/api/v1/pools/shared/connect", json!({}), StatusCode::OK).await;
    assert_eq!(c["status"], "ready", "{c}");
    let desktop = c["desktop_id"].as_str().unwrap().to_owned();
    alice.base = brokers[2].url.clone();
    let again = alice.post_json("/api/v1/pools/shared/connect", json!({}), StatusCode::OK).await;
    assert_eq!(again["desktop_id"], desktop.as_str(), "the same desktop from every replica");
    let r = alice.post(&format!("/api/v1/desktops/{desktop}/disconnect"), json!({})).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Disconnecting again (a retried request) changes nothing and succeeds.
    let r = alice.post(&format!("/api/v1/desktops/{desktop}/disconnect"), json!({})).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // One replica does the reconcile passes; the others wait.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut runs = Vec::new();
    for b in brokers.iter() {
        runs.push(reconcile_runs(b).await);
    }
    let holders: Vec<usize> = (0..3).filter(|&i| runs[i] > 0).collect();
    assert_eq!(holders.len(), 1, "reconcile passes per replica: {runs:?}");
    let holder = holders[0];
    // The work was done once: the pool was filled to two spares, never beyond.
    let created_before = node.with(|s| s.created);
    assert!(created_before <= 3, "{created_before} VMs for a pool of two spares and one user");

    // The holder dies without giving the lease up: another replica takes the work over once
    // the lease expires (10 s).
    let died = Instant::now();
    let dead = brokers.remove(holder);
    drop(dead); // SIGKILL
    let survivors = &brokers;
    let before: Vec<u64> =
        vec![reconcile_runs(&survivors[0]).await, reconcile_runs(&survivors[1]).await];
    wait_for("another replica to take the reconcile lease", Duration::from_secs(20), || async {
        let now = [reconcile_runs(&survivors[0]).await, reconcile_runs(&survivors[1]).await];
        (now[0] > before[0] || now[1] > before[1]).then_some(())
    })
    .await
    .unwrap();
    eprintln!("the reconcile lease moved {:?} after the holder died", died.elapsed());
    // Only one of the two took it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a = [reconcile_runs(&survivors[0]).await, reconcile_runs(&survivors[1]).await];
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = [reconcile_runs(&survivors[0]).await, reconcile_runs(&survivors[1]).await];
    let growing = (0..2).filter(|&i| b[i] > a[i]).count();
    assert_eq!(growing, 1, "passes before {a:?} after {b:?}");
    // Spares are kept by the new holder: the user's ended desktop is replaced, once.
    let mut admin = ApiClient::new(&survivors[0].url);
    admin.login_ok("carol", "carol-pw").await;
    let p = admin.get_json("/api/v1/admin/pools/shared", StatusCode::OK).await;
    assert!(p["counts"]["total"].as_u64().unwrap() <= 3, "{p}");
}

#[tokio::test]
async fn a_pass_longer_than_the_lease_keeps_it() {
    const T: &str = "a_pass_longer_than_the_lease_keeps_it";
    if skip(Group::Ldap, T) || skip(Group::Postgres, T) {
        return;
    }
    let replicas = Replicas::start(2).await;
    let brokers = &replicas.brokers;
    // A slow node: each VM takes 4 s to create, and a pass provisions three spares one after
    // another, so one pass lasts about 12 s, beyond the lease's 10 s.
    let node = FakeNode::enrolled(&brokers[0], "node-a", 16384).await.unwrap();
    node.with(|s| s.create_delay = Duration::from_secs(4));
    let mut admin = brokers[0].client();
    admin.login_ok("carol", "carol-pw").await;
    admin.post_json("/api/v1/admin/pools", pool("slow", 3), StatusCode::CREATED).await;
    // Whoever holds the lease keeps it through the long pass: the other never passes.
    let runs = || async { [reconcile_runs(&brokers[0]).await, reconcile_runs(&brokers[1]).await] };
    let start = Instant::now();
    let mut holder = None;
    while start.elapsed() < Duration::from_secs(20) {
        let r = runs().await;
        let active: Vec<usize> = (0..2).filter(|&i| r[i] > 0).collect();
        assert!(active.len() <= 1, "both replicas passed: {r:?} after {:?}", start.elapsed());
        if let [i] = active[..] {
            holder.get_or_insert(i);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(holder.is_some(), "no replica ran the reconcile loop");
    assert!(node.with(|s| s.created) >= 3, "the long pass did its work");
}

#[tokio::test]
async fn a_database_outage_is_a_clear_503_and_heals_by_itself() {
    const T: &str = "a_database_outage_is_a_clear_503_and_heals_by_itself";
    if skip(Group::Ldap, T) || skip(Group::Postgres, T) {
        return;
    }
    let replicas = Replicas::start(1).await;
    let (broker, pg) = (&replicas.brokers[0], &replicas.pg);
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    alice.get_json("/api/v1/pools", StatusCode::OK).await;

    pg.stop().unwrap();
    let asked = Instant::now();
    let r = alice.get("/api/v1/pools").await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(asked.elapsed() < Duration::from_secs(15), "answered after {:?}", asked.elapsed());
    assert!(r.headers().get("retry-after").is_some());
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("database is unavailable"), "{body}");
    assert_eq!(status(&format!("{}/readyz", broker.url)).await, Some(503));
    assert_eq!(status(&format!("{}/healthz", broker.url)).await, Some(503));
    // A sign-in while the database is away is refused and keeps nothing.
    let mut bob = broker.client();
    let r = bob.login("bob", "bob-pw").await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(bob.csrf.is_none());

    pg.start_again().unwrap();
    wait_for("the broker to be ready again", Duration::from_secs(30), || async {
        (status(&format!("{}/readyz", broker.url)).await == Some(200)).then_some(())
    })
    .await
    .unwrap();
    alice.get_json("/api/v1/pools", StatusCode::OK).await;
    bob.login_ok("bob", "bob-pw").await;
    bob.get_json("/api/v1/pools", StatusCode::OK).await;
}

#[tokio::test]
async fn postgresql_restarted_under_load_loses_and_doubles_no_assignment() {
    const T: &str = "postgresql_restarted_under_load_loses_and_doubles_no_assignment";
    if skip(Group::Ldap, T) || skip(Group::Postgres, T) {
        return;
    }
    let replicas = Replicas::start(2).await;
    let (brokers, pg) = (&replicas.brokers, &replicas.pg);
    let users = replicas.slapd.add_users("pgload", 6).unwrap();
    let _node = FakeNode::enrolled(&brokers[0], "node-a", 65536).await.unwrap();
    let mut admin = brokers[0].client();
    admin.login_ok("carol", "carol-pw").await;
    let mut p = pool("busy", 2);
    p["max_size"] = json!(10);
    admin.post_json("/api/v1/admin/pools", p, StatusCode::CREATED).await;

    // Each user connects again and again, through both replicas in turn, while PostgreSQL is
    // stopped and started; during the outage the answers are 503s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, (user, password)) in users.into_iter().enumerate() {
        let urls = [brokers[0].url.clone(), brokers[1].url.clone()];
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = ApiClient::new(&urls[i % 2]);
            c.login_ok(&user, &password).await;
            let mut seen: Vec<String> = Vec::new();
            let mut turn = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                turn += 1;
                c.base = urls[turn % 2].clone();
                if let Ok(r) = c.post("/api/v1/pools/busy/connect", json!({})).await {
                    match r.status() {
                        StatusCode::OK => {
                            let b: Value = r.json().await.unwrap();
                            if let Some(d) = b["desktop_id"].as_str()
                                && seen.last().map(String::as_str) != Some(d)
                            {
                                seen.push(d.to_owned());
                            }
                        }
                        StatusCode::SERVICE_UNAVAILABLE => {}
                        other => panic!("{user}: connect answered {other}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            (user, seen)
        }));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Longer than the nodes' `lost_after_secs` (3 s): their heartbeats fail meanwhile, which
    // must not make the nodes lost.
    pg.stop().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    pg.start_again().unwrap();
    wait_for("the replicas to be ready again", Duration::from_secs(30), || async {
        let a = status(&format!("{}/readyz", brokers[0].url)).await == Some(200);
        let b = status(&format!("{}/readyz", brokers[1].url)).await == Some(200);
        (a && b).then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut owner: std::collections::HashMap<String, String> = Default::default();
    for t in tasks {
        let (user, seen) = t.await.unwrap();
        // One desktop all along: the restart lost no assignment...
        assert_eq!(seen.len(), 1, "{user} was given {seen:?}");
        // ...and gave none twice.
        if let Some(other) = owner.insert(seen[0].clone(), user.clone()) {
            panic!("desktop {} was given to {other} and {user}", seen[0]);
        }
    }
    // The database agrees: each desktop has at most one user.
    let desktops = admin.get_json("/api/v1/admin/desktops", StatusCode::OK).await;
    let assigned: Vec<&str> =
        desktops.as_array().unwrap().iter().filter_map(|d| d["username"].as_str()).collect();
    let mut unique = assigned.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), assigned.len(), "{desktops}");
}

#[tokio::test]
async fn sigterm_drains_then_stops() {
    const T: &str = "sigterm_drains_then_stops";
    if skip(Group::Ldap, T) {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.env.push(("ATRIUM_BROKER_DRAIN_SECS".into(), "2".into()));
    let mut broker = Broker::start(opts).await.unwrap();
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    broker.signal(libc::SIGTERM);
    let signalled = Instant::now();
    // Not ready at once, but still serving.
    wait_for("readyz to answer 503", Duration::from_secs(2), || async {
        (status(&format!("{}/readyz", broker.url)).await == Some(503)).then_some(())
    })
    .await
    .unwrap();
    alice.get_json("/api/v1/pools", StatusCode::OK).await;
    assert!(signalled.elapsed() < Duration::from_secs(2));
    // Then it stops by itself, cleanly.
    let exit = broker.wait_exit(Duration::from_secs(20)).await.expect("the broker stopped");
    assert!(exit.success(), "{exit}");
    assert!(signalled.elapsed() >= Duration::from_secs(2), "stopped before the drain");
    assert_eq!(status(&format!("{}/healthz", broker.url)).await, None);
}
