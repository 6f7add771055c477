//! The service tier as containers (`podman kube play` of `deploy/kubernetes/overlays/podman`,
//! images built from this workspace): PostgreSQL, three brokers, two display gateways and the
//! edge (HAProxy) on one https address, with the demo directory and a node on the host.
//! Faults are real: `kill -9` of a container's process, a pod stopped, a rolling update.
//! Group `containers` (podman, kubectl and kubernetes-validate from PyPI); the tier's ports are
//! fixed, so these tests run one at a time (`.config/nextest.toml`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use atrium_tests::broker::ApiClient;
use atrium_tests::browser::{CHROMIUM, Driver, artifacts};
use atrium_tests::fake_node::FakeNode;
use atrium_tests::node::console_image;
use atrium_tests::screen::{Glyphs, Screen, rows_showing};
use atrium_tests::slapd::{SERVICE_PW, Slapd};
use atrium_tests::stack::{TierStack, create_pool};
use atrium_tests::tier::{
    self, BROKERS, GATEWAYS, KubeTools, POSTGRES, Tier, TierOptions, broker_ready_url,
};
use atrium_tests::{Group, TempDir, bin_path, skip, wait_for, workspace_root};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The cargo profile folder of the running test: the images carry these binaries.
fn binaries() -> std::path::PathBuf {
    bin_path("atrium-broker").parent().expect("a folder").to_owned()
}

fn tier_options() -> TierOptions {
    TierOptions {
        state: None,
        binaries: binaries(),
        ldap_bind_password: SERVICE_PW.into(),
        policies: Vec::new(),
    }
}

#[test]
fn the_manifests_render_and_validate_against_the_kubernetes_schemas() {
    let name = "the_manifests_render_and_validate_against_the_kubernetes_schemas";
    if skip(Group::Containers, name) {
        return;
    }
    let tools = KubeTools::find().unwrap();
    let root = workspace_root();
    // A copy with secrets, as an operator's would be after make-secrets.sh.
    let tmp = TempDir::new("manifests");
    let copy = tmp.path().join("kubernetes");
    let st = std::process::Command::new("cp")
        .arg("-r")
        .arg(root.join("deploy/kubernetes"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    let _ = std::fs::remove_dir_all(copy.join("base/secrets"));
    let out = std::process::Command::new(copy.join("make-secrets.sh"))
        .env("ATRIUM_LDAP_BIND_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let cluster = tools.render(&copy).unwrap();
    tools.validate(&cluster).unwrap();
    let kinds = |yaml: &str| {
        let mut k: HashMap<String, usize> = HashMap::new();
        for d in tier::documents(yaml) {
            *k.entry(d.kind).or_default() += 1;
        }
        k
    };
    let k = kinds(&cluster);
    for (kind, n) in [
        ("Deployment", 2),
        ("StatefulSet", 1),
        ("Service", 3),
        ("Ingress", 3),
        ("PersistentVolumeClaim", 2),
        ("NetworkPolicy", 4),
        ("PodDisruptionBudget", 2),
        ("Secret", 7),
    ] {
        assert_eq!(k.get(kind).copied(), Some(n), "{kind} in {k:?}");
    }
    let docs = tier::documents(&cluster);
    let deployment = |name: &str| {
        docs.iter().find(|d| d.kind == "Deployment" && d.name == name).expect(name).text.clone()
    };
    assert!(deployment("atrium-broker").contains("replicas: 3"));
    // Image uploads (many GiB) pass the door unbuffered and with no body limit.
    let uploads = docs.iter().find(|d| d.kind == "Ingress" && d.name == "atrium-images").unwrap();
    for must in [
        "path: /api/v1/admin/images/",
        "proxy-body-size: \"0\"",
        "proxy-request-buffering: \"off\"",
    ] {
        assert!(uploads.text.contains(must), "{must} not in {}", uploads.text);
    }
    assert!(deployment("atrium-gateway").contains("replicas: 2"));
    for d in docs.iter().filter(|d| ["Deployment", "StatefulSet"].contains(&d.kind.as_str())) {
        for must in [
            "runAsNonRoot: true",
            "readOnlyRootFilesystem: true",
            "allowPrivilegeEscalation: false",
            "readinessProbe:",
            "livenessProbe:",
            "limits:",
        ] {
            assert!(d.text.contains(must), "{} lacks {must}", d.name);
        }
    }
    // Every hop inside the cluster is TLS: no configuration names a plain http:// URL, the
    // brokers serve a certificate, and the Ingress checks both backends against the internal CA.
    for d in docs.iter().filter(|d| d.kind == "ConfigMap") {
        assert!(!d.text.contains("http://"), "{} names a plain http:// URL", d.name);
    }
    let config = |name: &str| {
        docs.iter()
            .find(|d| d.kind == "ConfigMap" && d.name.starts_with(name))
            .expect(name)
            .text
            .clone()
    };
    assert!(config("atrium-broker-config").contains("tls_cert"));
    assert!(config("atrium-gateway-config").contains("ca_file"));
    for ingress in docs.iter().filter(|d| d.kind == "Ingress") {
        for must in ["backend-protocol: HTTPS", "proxy-ssl-verify", "atrium/atrium-internal-ca"] {
            assert!(ingress.text.contains(must), "Ingress {} lacks {must}", ingress.name);
        }
    }
    // Only brokers and gateways may reach the nodes' network.
    let policies: Vec<_> = docs.iter().filter(|d| d.kind == "NetworkPolicy").collect();
    for p in &policies {
        let reaches_nodes = p.text.contains("cidr: 10.20.0.0/16");
        assert_eq!(
            reaches_nodes,
            p.name == "atrium-broker" || p.name == "atrium-gateway",
            "{}",
            p.name
        );
    }

    let external = tools.render(&copy.join("overlays/external-postgres")).unwrap();
    tools.validate(&external).unwrap();
    assert_eq!(kinds(&external).get("StatefulSet"), None);

    let podman = tools.render(&copy.join("overlays/podman")).unwrap();
    tools.validate(&podman).unwrap();
    let k = kinds(&podman);
    assert_eq!(k.get("Deployment"), Some(&7), "{k:?}");
    assert_eq!(k.get("Secret"), None, "podman plays no Secrets");

    // The ConfigMap's policies are the repository's; the images are this version's.
    for f in ["default.cedar", "schema.cedarschema"] {
        assert_eq!(
            std::fs::read(root.join("policies").join(f)).unwrap(),
            std::fs::read(root.join("deploy/kubernetes/base/broker/policies").join(f)).unwrap(),
            "deploy/kubernetes/base/broker/policies/{f} differs from policies/{f}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    for yaml in [&cluster, &podman] {
        for line in yaml.lines().filter(|l| l.trim_start().starts_with("image: ")) {
            assert!(line.ends_with(&format!(":{version}")), "{line} is not version {version}");
        }
    }
}

/// What a client sees when a server dies under it: a transport error or a 502/503/504.
fn retryable(r: &anyhow::Result<reqwest::Response>) -> bool {
    match r {
        Err(_) => true,
        Ok(r) => matches!(r.status().as_u16(), 502..=504),
    }
}

/// Sends a request at most twice: again only when the first answer was [`retryable`]. Returns
/// the answer and whether it was retried.
async fn at_most_one_retry<F, Fut>(f: F) -> (anyhow::Result<reqwest::Response>, bool)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<reqwest::Response>>,
{
    let first = f().await;
    if !retryable(&first) {
        return (first, false);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    (f().await, true)
}

/// What one simulated user did and saw.
#[derive(Debug, Default)]
struct UserLog {
    user: String,
    ops: u64,
    /// Requests that needed their one retry, by phase.
    retried: HashMap<&'static str, u64>,
    /// Requests that failed even after a retry, with why.
    failures: Vec<String>,
    /// The desktop of each cycle.
    desktops: Vec<String>,
}

type Phase = Arc<std::sync::Mutex<&'static str>>;

/// One request with at most one retry, noted in `log`; the JSON body when it got `want`.
async fn call(
    client: &ApiClient,
    log: &mut UserLog,
    phase: &Phase,
    method: reqwest::Method,
    path: &str,
    want: StatusCode,
) -> Option<Value> {
    let body = (method != reqwest::Method::GET).then(|| json!({}));
    let (r, retried) = at_most_one_retry(|| client.call(method.clone(), path, body.clone())).await;
    let p = *phase.lock().expect("phase");
    log.ops += 1;
    if retried {
        *log.retried.entry(p).or_default() += 1;
    }
    match r {
        Ok(resp) if resp.status() == want => Some(resp.json().await.unwrap_or(Value::Null)),
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            log.failures.push(format!("{p}: {} {method} {path}: {status} {text:.200}", log.user));
            None
        }
        Err(e) => {
            log.failures.push(format!("{p}: {} {method} {path}: {e:#}", log.user));
            None
        }
    }
}

/// A user working in a loop through the edge: connect (until the desktop is ready), connect
/// again (the same desktop), keep-alive, disconnect. With `fresh`, the user signs in again
/// before every cycle (new sessions all along); otherwise once for the whole run (one session
/// that must outlive every fault).
async fn user_loop(
    mut client: ApiClient,
    user: String,
    password: String,
    fresh: bool,
    phase: Phase,
    stop: Arc<AtomicBool>,
) -> UserLog {
    use reqwest::Method;
    client.login_ok(&user, &password).await;
    let mut log = UserLog { user, ..UserLog::default() };
    let connect = "/api/v1/pools/load/connect";
    while !stop.load(Ordering::Relaxed) {
        if fresh {
            let p = *phase.lock().expect("phase");
            log.ops += 1;
            let mut outcome = client.login(&log.user, &password).await;
            if retryable(&outcome) {
                *log.retried.entry(p).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                outcome = client.login(&log.user, &password).await;
            }
            match outcome {
                Ok(r) if r.status() == StatusCode::OK => {}
                Ok(r) => {
                    log.failures.push(format!("{p}: {} sign-in: {}", log.user, r.status()));
                    continue;
                }
                Err(e) => {
                    log.failures.push(format!("{p}: {} sign-in: {e:#}", log.user));
                    continue;
                }
            }
        }
        let mut desktop = None;
        for _ in 0..50 {
            let Some(b) =
                call(&client, &mut log, &phase, Method::POST, connect, StatusCode::OK).await
            else {
                break;
            };
            if b["status"] == "ready" {
                desktop = b["desktop_id"].as_str().map(str::to_owned);
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let Some(d) = desktop else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        if let Some(b) =
            call(&client, &mut log, &phase, Method::POST, connect, StatusCode::OK).await
            && b["desktop_id"] != d.as_str()
        {
            log.failures.push(format!("{}: connect gave {} then {}", log.user, d, b["desktop_id"]));
        }
        call(&client, &mut log, &phase, Method::GET, "/api/v1/desktops", StatusCode::OK).await;
        let disconnect = format!("/api/v1/desktops/{d}/disconnect");
        call(&client, &mut log, &phase, Method::POST, &disconnect, StatusCode::NO_CONTENT).await;
        log.desktops.push(d);
    }
    // The session outlived everything.
    call(&client, &mut log, &phase, Method::GET, "/api/v1/me", StatusCode::OK).await;
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_survive_kills_rolling_updates_and_a_database_outage() {
    let name = "brokers_survive_kills_rolling_updates_and_a_database_outage";
    if skip(Group::Containers, name) || skip(Group::Ldap, name) {
        return;
    }
    Tier::check_ports().unwrap();
    let slapd = Slapd::start_on(tier::DIRECTORY_PORT).unwrap();
    let users = slapd.add_users("load", 6).unwrap();
    let tier = Tier::start(tier_options()).await.unwrap();
    // The node is the in-process stand-in: these faults are about the brokers, not desktops.
    let mut admin = tier.client();
    admin.login_ok("carol", "carol-pw").await;
    let token = admin.enrolment_token("node-a").await;
    let node = FakeNode::start(tier::INTERNAL_URL, &token, "node-a", 65536).await.unwrap();
    // Over https the cookies carry the __Host- prefix (no sibling subdomain can set them).
    let r = tier
        .http()
        .request(
            reqwest::Method::POST,
            &format!("{}/api/v1/auth/login", tier::PUBLIC_URL),
            &[],
            Some(&json!({"username": "carol", "password": "carol-pw"})),
        )
        .await
        .unwrap();
    let set: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    for name in ["__Host-atrium_session=", "__Host-atrium_csrf="] {
        assert!(set.iter().any(|c| c.starts_with(name) && c.contains("Secure")), "{set:?}");
    }
    // Metrics are for the internal listener only, not for the public address.
    let public = tier.http().get(&format!("{}/metrics", tier::PUBLIC_URL)).await.unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    let internal = reqwest::get("http://127.0.0.1:28181/metrics").await.unwrap();
    assert_eq!(internal.status(), StatusCode::OK);
    wait_for("the node to register", Duration::from_secs(30), || async {
        let n = admin.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
        (n.as_array().is_some_and(|a| !a.is_empty())).then_some(())
    })
    .await
    .unwrap();
    // Room for every user's desktop and two spares.
    admin
        .post_json(
            "/api/v1/admin/pools",
            json!({"name": "load", "description": "load", "image": "console", "vcpus": 1,
                   "memory_mib": 512, "display": "1280x800", "kind": "floating", "min_ready": 2,
                   "max_size": 10, "idle_timeout_secs": 1800, "max_session_secs": 28800}),
            StatusCode::CREATED,
        )
        .await;

    let phase = Arc::new(std::sync::Mutex::new("warm-up"));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // Half the users sign in again before every cycle, half keep one session all along.
    for (i, (user, password)) in users.into_iter().enumerate() {
        tasks.push(tokio::spawn(user_loop(
            tier.client(),
            user,
            password,
            i % 2 == 0,
            phase.clone(),
            stop.clone(),
        )));
    }
    let set = |p: &'static str| *phase.lock().unwrap() = p;
    tokio::time::sleep(Duration::from_secs(4)).await;

    // kill -9 of a broker while users work: podman restarts it by itself.
    set("broker killed");
    let (victim, port) = BROKERS[1];
    let restarts = tier.restarts(victim).unwrap();
    tier.kill(victim).unwrap();
    let killed = Instant::now();
    let internal = tier.gateway_http();
    wait_for("the killed broker to be restarted and ready", Duration::from_secs(30), || async {
        let again = tier.restarts(victim).ok()? > restarts;
        let ready = internal.get(&broker_ready_url(port)).await.ok()?.status() == 200;
        (again && ready).then_some(())
    })
    .await
    .unwrap();
    eprintln!("broker restarted and ready {:?} after kill -9", killed.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A rolling update, one broker at a time: each drains, stops, and its successor takes
    // traffic once ready.
    set("rolling update");
    for (b, port) in BROKERS {
        tier.replace(b, &broker_ready_url(port)).await.unwrap();
    }
    set("after the update");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for t in tasks {
        logs.push(t.await.unwrap());
    }

    let ops: u64 = logs.iter().map(|l| l.ops).sum();
    let failures: Vec<&String> = logs.iter().flat_map(|l| &l.failures).collect();
    let retried: Vec<_> = logs.iter().map(|l| (&l.user, &l.retried)).collect();
    eprintln!("{ops} requests by {} users; retried: {retried:?}", logs.len());
    assert!(failures.is_empty(), "requests failed even after a retry: {failures:#?}");
    let mut owner: HashMap<&str, &str> = HashMap::new();
    for l in &logs {
        let killed_retries = l.retried.get("broker killed").copied().unwrap_or(0);
        assert!(killed_retries <= 1, "{} needed {killed_retries} retries around the kill", l.user);
        assert_eq!(
            l.retried.get("rolling update"),
            None,
            "{}: a request failed during the rolling update",
            l.user
        );
        assert!(l.desktops.len() >= 3, "{} got through only {} cycles", l.user, l.desktops.len());
        // Her desktop stayed hers through every fault (disconnect keeps the assignment)...
        assert!(
            l.desktops.windows(2).all(|w| w[0] == w[1]),
            "{}: desktops {:?}",
            l.user,
            l.desktops
        );
        // ...and no desktop was ever given to two users.
        for d in &l.desktops {
            let o = owner.entry(d.as_str()).or_insert(l.user.as_str());
            assert_eq!(*o, l.user.as_str(), "desktop {d} was given to {o} and {}", l.user);
        }
    }

    // PostgreSQL stops: clear 503s from the brokers; nothing half-written; back when it is.
    let mut alice = tier.client();
    alice.login_ok("alice", "alice-pw").await;
    let before = admin.get_json("/api/v1/admin/desktops", StatusCode::OK).await;
    tier.stop(POSTGRES, Duration::from_secs(20)).unwrap();
    let asked = Instant::now();
    let r = alice.post("/api/v1/pools/load/connect", json!({})).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap_or("").contains("database is unavailable"), "{body}");
    assert!(asked.elapsed() < Duration::from_secs(15), "answered after {:?}", asked.elapsed());
    let r = tier.client().login("bob", "bob-pw").await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    tier.start_again(POSTGRES).unwrap();
    wait_for("the brokers to be ready again", Duration::from_secs(60), || async {
        let r = tier.http().get(&format!("{}/readyz", tier::PUBLIC_URL)).await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await
    .unwrap();
    // The refused connect left nothing: alice has no desktop, and her session still works.
    let after = admin.get_json("/api/v1/admin/desktops", StatusCode::OK).await;
    let owned_by =
        |v: &Value, u: &str| v.as_array().unwrap().iter().filter(|d| d["username"] == u).count();
    assert_eq!(owned_by(&before, "alice"), 0);
    assert_eq!(owned_by(&after, "alice"), 0, "{after}");
    let c = wait_for("alice's desktop", Duration::from_secs(30), || async {
        let c = alice.post_json("/api/v1/pools/load/connect", json!({}), StatusCode::OK).await;
        (c["status"] == "ready").then_some(c)
    })
    .await
    .unwrap();
    assert!(c["desktop_id"].is_string());
    drop(node);
}

/// The viewer's gateway: the one whose metrics show an open relay.
async fn gateway_with_relay(tier: &Tier) -> Option<&'static str> {
    let http = tier.gateway_http();
    for (name, port) in GATEWAYS {
        let text =
            http.get(&format!("https://127.0.0.1:{port}/metrics")).await.ok()?.text().await.ok()?;
        if text.lines().any(|l| l == "atrium_gateway_relays 1") {
            return Some(name);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_works_through_one_https_address_and_survives_its_gateway_dying()
-> anyhow::Result<()> {
    let name = "a_browser_works_through_one_https_address_and_survives_its_gateway_dying";
    if skip(Group::Containers, name)
        || skip(Group::Qemu, name)
        || skip(Group::Ldap, name)
        || skip(Group::Browser, name)
    {
        return Ok(());
    }
    let console = console_image()?;
    // Her sessions are recorded: through the gateway and the edge, onto the brokers' volume.
    // She may move files in and out of the console (unscanned: the tier's node has no scanner).
    let mut opts = tier_options();
    opts.policies = vec![
        ("record-console".into(), RECORD_CONSOLE.into()),
        ("files-console".into(), FILES_CONSOLE.into()),
    ];
    let stack = TierStack::start(opts, &[&console], None).await?;
    let admin = stack.admin().await;
    create_pool(&admin, "console", "console", 1, "1280x800", Some(false)).await?;

    // Forged, expired and malformed tickets stop at the gateway: the node's display proxy, which
    // they name, sees nothing.
    let refused_before = refused(&stack).await?;
    for (what, ticket) in bad_tickets(&stack).await? {
        let status = upgrade_through_edge(&stack.tier, "vm-x", &ticket).await?;
        assert_eq!(status, 401, "a {what} ticket");
    }
    assert_eq!(refused(&stack).await?, refused_before, "a refused viewer reached the node's proxy");

    let tmp = TempDir::new("tier-browser");
    let word = format!("tier-{}", rand::random::<u32>() % 1_000_000);
    let cfg = json!({
        "url": tier::PUBLIC_URL, "chromium": CHROMIUM, "artifacts": artifacts(), "tmp": tmp.path(),
        "word": word,
    });
    let mut driver = Driver::start("tier.mjs", &cfg)?;
    let mut reconnect_ms = None;
    let mut killed = None;
    let mut desktop_before = None;
    let run = async {
        while let Some(msg) = driver.next().await? {
            let answer = match msg["phase"].as_str() {
                Some("connected" | "reconnected") => {
                    let screen =
                        Screen::from_png(&std::fs::read(msg["shot"].as_str().context("shot")?)?)?;
                    let lit = screen.cells().iter().flatten().filter(|c| c.is_some()).count();
                    if lit > 20 { "ok" } else { "more" }
                }
                // The command's output is a line of its own: exactly the word, from column 0.
                Some("typed") => {
                    let screen =
                        Screen::from_png(&std::fs::read(msg["shot"].as_str().context("shot")?)?)?;
                    if rows_showing(&screen.cells(), &word, &Glyphs::default()).is_empty() {
                        "more"
                    } else {
                        "ok"
                    }
                }
                Some("kill") => {
                    desktop_before = Some(alice_desktop(&admin).await?);
                    let gw = gateway_with_relay(&stack.tier)
                        .await
                        .context("no gateway carries the viewer")?;
                    stack.tier.kill(gw)?;
                    killed = Some(gw);
                    "killed"
                }
                Some("done") => {
                    reconnect_ms = msg["reconnect_ms"].as_f64();
                    break;
                }
                other => bail!("unknown phase {other:?}"),
            };
            driver.answer(answer).await?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .context("the browser test took over 5 minutes")??;
    if let Err(e) = driver.finish().await {
        bail!("{e}\n{}", stack.tier.all_logs());
    }
    let ms = reconnect_ms.context("the driver reported no reconnect time")?;
    eprintln!("the viewer was back {ms:.0} ms after its gateway was killed");
    assert!(ms <= 3000.0, "reconnected after {ms} ms");
    // The same desktop, and the killed gateway came back by itself.
    assert_eq!(Some(alice_desktop(&admin).await?), desktop_before);
    let gw = killed.context("no gateway was killed")?;
    wait_for("podman to restart the gateway", Duration::from_secs(30), || async {
        (stack.tier.restarts(gw).ok()? >= 1).then_some(())
    })
    .await?;

    // What she saw was recorded: the node sent the chunks through the edge's internal door, a
    // broker replica chained them onto the volume the brokers share, and they are intact.
    let recorded = wait_for("her recording's chunks", Duration::from_secs(30), || async {
        let list = admin.get_json("/api/v1/admin/recordings?user=alice", StatusCode::OK).await;
        let recs = list.as_array()?.clone();
        (!recs.is_empty() && recs.iter().all(|r| r["bytes"].as_u64() > Some(0))).then_some(recs)
    })
    .await?;
    for r in &recorded {
        let id = r["id"].as_str().context("a recording id")?;
        assert_eq!(r["pool"], "console", "{r}");
        let v =
            admin.get_json(&format!("/api/v1/admin/recordings/{id}/verify"), StatusCode::OK).await;
        assert_eq!(v["intact"], true, "{v}");
        let chunks = std::fs::read_dir(stack.tier.dir.join("volumes/recordings").join(id))?
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "chunk"))
            .count();
        assert!(chunks > 0, "no chunk of {id} on the shared volume");
        eprintln!("recording {id}: {} bytes in {chunks} chunks, intact", r["bytes"]);
    }
    Ok(())
}

/// Records every session of the `console` pool.
const RECORD_CONSOLE: &str = r#"@id("record-console")
permit (principal, action == Atrium::Action::"record", resource)
when { resource is Atrium::Pool && resource.name == "console" };
"#;

/// Uploads into and downloads from the `console` pool, unscanned.
const FILES_CONSOLE: &str = r#"@id("download-console")
@scan("off")
permit (principal, action == Atrium::Action::"file_download", resource)
when { resource is Atrium::Pool && resource.name == "console" };
@id("upload-console")
@scan("off")
permit (principal, action == Atrium::Action::"file_upload", resource)
when { resource is Atrium::Pool && resource.name == "console" };
"#;

/// alice's desktop id, as the administrators see it.
async fn alice_desktop(admin: &ApiClient) -> anyhow::Result<String> {
    let ds = admin.get_json("/api/v1/admin/desktops", StatusCode::OK).await;
    ds.as_array()
        .and_then(|a| a.iter().find(|d| d["username"] == "alice"))
        .and_then(|d| d["id"].as_str())
        .map(str::to_owned)
        .context("alice has no desktop")
}

/// The node's display proxy's count of refused viewers.
async fn refused(stack: &TierStack) -> anyhow::Result<u64> {
    let text = stack.display.metrics().await?;
    text.lines()
        .find_map(|l| l.strip_prefix("atrium_display_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .context("the display proxy's refused counter")
}

/// Tickets a viewer might bring, each aimed at the node's display proxy: one with the broker's
/// key id signed by another key (forged), one signed by the broker's own key but expired, and
/// one that is no JWT.
async fn bad_tickets(stack: &TierStack) -> anyhow::Result<Vec<(&'static str, String)>> {
    let jwks: Value =
        reqwest::get(format!("{}/.well-known/jwks.json", tier::INTERNAL_URL)).await?.json().await?;
    let kid = jwks["keys"][0]["kid"].as_str().context("the broker's key id")?.to_owned();
    let pem = std::fs::read(stack.tier.dir.join("kubernetes/base/secrets/signing-1.pem"))?;
    let broker_key = jsonwebtoken::EncodingKey::from_ed_pem(&pem)?;
    // PKCS#8 v1 of the all-sevens seed: a key the broker never had.
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend([7u8; 32]);
    let other_key = jsonwebtoken::EncodingKey::from_ed_der(&der);
    let now = jsonwebtoken::get_current_timestamp();
    let proxy = format!("ws://127.0.0.1:{}", stack.display.port);
    let claims = |issued: u64, jti: &str| {
        json!({
            "iss": "atrium-broker", "aud": "atrium-display", "sub": "mallory", "iat": issued,
            "nbf": issued, "exp": issued + 30, "jti": jti, "desktop": "d", "vm": "vm-x",
            "node": "node-1", "sid": "s", "caps": {"view_only": false, "clipboard_copy_out": true,
            "clipboard_paste_in": true, "file_upload": false, "file_download": false,
            "shadow": false}, "proxy": proxy
        })
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid);
    Ok(vec![
        ("forged", jsonwebtoken::encode(&header, &claims(now, "forged-1"), &other_key)?),
        ("expired", jsonwebtoken::encode(&header, &claims(now - 600, "expired-1"), &broker_key)?),
        ("malformed", "a.b.c".to_owned()),
    ])
}

/// A WebSocket upgrade through the edge with `ticket`; the HTTP status it got.
async fn upgrade_through_edge(tier: &Tier, vm: &str, ticket: &str) -> anyhow::Result<u16> {
    let headers = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let url = format!("{}/ws/{vm}?ticket={ticket}", tier::PUBLIC_URL);
    let r = tier.http().request(reqwest::Method::GET, &url, &headers, None).await?;
    Ok(r.status().as_u16())
}
