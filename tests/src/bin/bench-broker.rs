//! Broker benchmark: sign-ins per second through the broker against raw LDAP binds per second
//! on the same slapd, in the same run, at the same concurrency; and connect latency with a warm
//! pool. Run with `scripts/bench-broker.sh` (release build). Prints one JSON object last.

use std::time::{Duration, Instant};

use atrium_tests::broker::{Broker, BrokerOptions};
use atrium_tests::fake_node::FakeNode;
use atrium_tests::slapd::{BASE, Slapd};
use serde_json::json;

const USERS: usize = 200;
const CONCURRENCY: usize = 16;
const ROUND: Duration = Duration::from_secs(5);

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is 0, utime is 11, stime is 12.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// The `pct`th percentile of sorted values (nearest rank).
fn percentile(sorted: &[f64], pct: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) * pct + 50) / 100]
}

/// Raw simple binds over persistent connections, `CONCURRENCY` at a time: the best a client of
/// this slapd can do.
async fn raw_binds(url: &str, users: &[(String, String)]) -> anyhow::Result<f64> {
    let mut tasks = Vec::new();
    let deadline = Instant::now() + ROUND;
    for w in 0..CONCURRENCY {
        let url = url.to_owned();
        let users = users.to_vec();
        tasks.push(tokio::spawn(async move {
            let (conn, mut ldap) = ldap3::LdapConnAsync::new(&url).await?;
            ldap3::drive!(conn);
            let mut n = 0u64;
            let mut i = w;
            while Instant::now() < deadline {
                let (u, p) = &users[i % users.len()];
                ldap.simple_bind(&format!("uid={u},ou=people,{BASE}"), p).await?.success()?;
                n += 1;
                i += CONCURRENCY;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / ROUND.as_secs_f64())
}

/// Raw binds the way an application without connection pooling checks a password: connect,
/// bind, unbind, `CONCURRENCY` at a time.
async fn raw_binds_fresh_connection(url: &str, users: &[(String, String)]) -> anyhow::Result<f64> {
    let mut tasks = Vec::new();
    let deadline = Instant::now() + ROUND;
    for w in 0..CONCURRENCY {
        let url = url.to_owned();
        let users = users.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut i = w;
            while Instant::now() < deadline {
                let (conn, mut ldap) = ldap3::LdapConnAsync::new(&url).await?;
                ldap3::drive!(conn);
                let (u, p) = &users[i % users.len()];
                ldap.simple_bind(&format!("uid={u},ou=people,{BASE}"), p).await?.success()?;
                ldap.unbind().await?;
                n += 1;
                i += CONCURRENCY;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / ROUND.as_secs_f64())
}

/// Full sign-ins through the broker's HTTP API (search, bind, session, audit), `CONCURRENCY` at
/// a time over keep-alive connections.
async fn broker_signins(url: &str, users: &[(String, String)]) -> anyhow::Result<f64> {
    let mut tasks = Vec::new();
    let deadline = Instant::now() + ROUND;
    for w in 0..CONCURRENCY {
        let url = format!("{url}/api/v1/auth/login");
        let users = users.to_vec();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0u64;
            let mut i = w;
            while Instant::now() < deadline {
                let (u, p) = &users[i % users.len()];
                let r =
                    http.post(&url).json(&json!({ "username": u, "password": p })).send().await?;
                anyhow::ensure!(r.status().is_success(), "sign-in failed: {}", r.status());
                r.bytes().await?;
                n += 1;
                i += CONCURRENCY;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / ROUND.as_secs_f64())
}

/// `GET /healthz` through the broker, `CONCURRENCY` at a time over keep-alive connections: the
/// cheapest request it answers, the floor under any sign-in.
async fn broker_healthz(url: &str) -> anyhow::Result<f64> {
    let mut tasks = Vec::new();
    let deadline = Instant::now() + ROUND;
    for _ in 0..CONCURRENCY {
        let url = format!("{url}/healthz");
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let r = http.get(&url).send().await?;
                anyhow::ensure!(r.status().is_success(), "healthz failed: {}", r.status());
                r.bytes().await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / ROUND.as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    atrium_tests::util::install_crypto();
    let slapd = Slapd::start()?;
    let users = slapd.add_users("bench", USERS)?;
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.extra_toml = "[login]\nmax_failures_per_address = 100000\n".into();
    opts.env.push(("RUST_LOG".into(), "warn".into()));
    let broker = Broker::start(opts).await?;

    // Warm both paths, then alternate rounds so drift in machine load hits both alike.
    raw_binds(&slapd.url(), &users[..10]).await?;
    broker_signins(&broker.url, &users[..10]).await?;
    let mut raw = Vec::new();
    let mut via = Vec::new();
    let me = std::process::id();
    let (mut raw_cpu, mut via_cpu) = ((0.0, 0.0), (0.0, 0.0, 0.0));
    for _ in 0..3 {
        let (s0, c0) = (cpu_secs(slapd.pid()), cpu_secs(me));
        let r = raw_binds(&slapd.url(), &users).await?;
        raw_cpu = (
            (cpu_secs(slapd.pid()) - s0) / (r * ROUND.as_secs_f64()) * 1e6,
            (cpu_secs(me) - c0) / (r * ROUND.as_secs_f64()) * 1e6,
        );
        raw.push(r);
        let (s0, b0, c0) = (cpu_secs(slapd.pid()), cpu_secs(broker.pid()), cpu_secs(me));
        let v = broker_signins(&broker.url, &users).await?;
        let n = v * ROUND.as_secs_f64();
        via_cpu = (
            (cpu_secs(slapd.pid()) - s0) / n * 1e6,
            (cpu_secs(broker.pid()) - b0) / n * 1e6,
            (cpu_secs(me) - c0) / n * 1e6,
        );
        via.push(v);
    }
    println!("CPU µs per raw bind: slapd {:.0}, client {:.0}", raw_cpu.0, raw_cpu.1);
    println!(
        "CPU µs per sign-in: slapd {:.0}, broker {:.0}, client {:.0}",
        via_cpu.0, via_cpu.1, via_cpu.2
    );
    let (b0, c0) = (cpu_secs(broker.pid()), cpu_secs(me));
    let healthz = broker_healthz(&broker.url).await?;
    let n = healthz * ROUND.as_secs_f64();
    let healthz_cpu = ((cpu_secs(broker.pid()) - b0) / n * 1e6, (cpu_secs(me) - c0) / n * 1e6);
    println!(
        "GET /healthz: {healthz:.0}/s, CPU µs per request: broker {:.0}, client {:.0}",
        healthz_cpu.0, healthz_cpu.1
    );
    let fresh = raw_binds_fresh_connection(&slapd.url(), &users).await?;
    println!("raw LDAP connect+bind+unbind/s ({CONCURRENCY} clients): {fresh:.0}");
    let raw_best = raw.iter().copied().fold(0.0, f64::max);
    let via_best = via.iter().copied().fold(0.0, f64::max);
    println!("raw LDAP binds/s (slapd, {CONCURRENCY} connections): {raw:?}");
    println!("broker sign-ins/s ({CONCURRENCY} clients):           {via:?}");

    // Connect latency with a warm pool: each user takes a ready spare.
    let _node = FakeNode::enrolled(&broker, "bench-node", 1 << 20).await?;
    let mut admin = broker.client();
    admin.login_ok("carol", "carol-pw").await;
    let spares = 40;
    admin
        .post_json(
            "/api/v1/admin/pools",
            json!({"name":"warm","image":"console","vcpus":1,"memory_mib":256,"display":"1280x800","kind":"floating",
                   "min_ready":spares,"max_size":spares,"idle_timeout_secs":600,"max_session_secs":3600,"clone":false}),
            reqwest::StatusCode::CREATED,
        )
        .await;
    atrium_tests::wait_for("a warm pool", Duration::from_secs(60), || async {
        let p = admin.get_json("/api/v1/admin/pools/warm", reqwest::StatusCode::OK).await;
        (p["counts"]["ready"].as_u64() == Some(spares)).then_some(())
    })
    .await?;
    let mut lat = Vec::new();
    for (u, p) in users.iter().take(usize::try_from(spares)?) {
        let mut c = broker.client();
        c.login_ok(u, p).await;
        let t = Instant::now();
        let body =
            c.post_json("/api/v1/pools/warm/connect", json!({}), reqwest::StatusCode::OK).await;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(body["status"] == "ready", "not a warm connect: {body}");
    }
    lat.sort_by(f64::total_cmp);
    // The ratio a broker costing nothing would reach on this machine: the same CPU in all
    // per operation as a raw bind, but slapd's and the HTTP client's share of a sign-in
    // remain. (CPU, not time, because slapd, the broker and the client share two cores.)
    let raw_total = raw_cpu.0 + raw_cpu.1;
    let bound = raw_total / (via_cpu.0 + via_cpu.2);
    println!(
        "a broker using no CPU would reach at most {bound:.2} here: slapd {:.0} + client {:.0} µs per sign-in against {raw_total:.0} µs per raw bind",
        via_cpu.0, via_cpu.2
    );
    let result = json!({
        "raw_binds_per_s": raw_best.round(),
        "broker_signins_per_s": via_best.round(),
        "signin_ratio": (via_best / raw_best * 100.0).round() / 100.0,
        "raw_connect_bind_per_s": fresh.round(),
        "signin_ratio_vs_connect_bind": (via_best / fresh * 100.0).round() / 100.0,
        "signin_ratio_bound_with_a_free_broker": (bound * 100.0).round() / 100.0,
        "cpu_us_per_raw_bind": { "slapd": raw_cpu.0.round(), "client": raw_cpu.1.round() },
        "cpu_us_per_signin": { "slapd": via_cpu.0.round(), "broker": via_cpu.1.round(), "client": via_cpu.2.round() },
        "healthz_per_s": healthz.round(),
        "cpu_us_per_healthz": { "broker": healthz_cpu.0.round(), "client": healthz_cpu.1.round() },
        "concurrency": CONCURRENCY,
        "warm_connect_ms_p50": (percentile(&lat, 50) * 10.0).round() / 10.0,
        "warm_connect_ms_p95": (percentile(&lat, 95) * 10.0).round() / 10.0,
        "database": "sqlite",
    });
    println!("{result}");
    Ok(())
}
