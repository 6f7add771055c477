//! `bench-connect` (`scripts/bench-connect.sh`): how long a user waits for their graphical
//! desktop after clicking Connect, measured in headless Chromium on the portal as a person uses
//! it, on a pool with a ready spare: the whole of Atrium on loopback as the quick start runs it
//! (directory, broker, node agent with the desktop image under QEMU, display proxy).
//!
//! Pools measured in the same run, interleaved round by round:
//! - `booted`: spares booted from the image;
//! - `cloned`: spares cloned from the node's template (`clone`), counted only once the spare
//!   really is a clone (the first desktops boot while the node makes the template).
//!
//! For each connect the page times, from the click: the broker's answer carrying the ticket
//! (`answer_ms`), the viewer connected to the display (`connected_ms`), and the first frame
//! showing the user's session with its panel (`desktop_ms`, "connect to first frame of the
//! desktop"). Each pool holds one desktop (`max_size` 1), so no refill runs beside a connect
//! being measured: the user signs out, the floating desktop ends and only then does the pool
//! refill, before the next round. The last line printed is one JSON object: the medians per
//! pool.
//!
//!   bench-connect [--runs N]

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use atrium_tests::broker::ApiClient;
use atrium_tests::browser::{CHROMIUM, Driver};
use atrium_tests::stack::Stack;
use atrium_tests::{TempDir, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The pools: name, and whether its desktops start as clones.
const POOLS: &[(&str, bool)] = &[("booted", false), ("cloned", true)];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

/// Waits for a ready spare in `pool`: whether it is a clone, and its VM.
async fn ready_spare(
    admin: &ApiClient,
    pool: &str,
    pool_id: &str,
) -> anyhow::Result<(bool, String)> {
    wait_for(&format!("a ready spare in pool {pool}"), Duration::from_secs(400), || async {
        let all = admin.get_json("/api/v1/admin/desktops", StatusCode::OK).await;
        let spare = all.as_array()?.iter().find(|d| {
            d["pool_id"] == pool_id && d["state"] == "ready" && d["username"].is_null()
        })?;
        Some((spare["cloned"] == true, spare["vm_id"].as_str()?.to_owned()))
    })
    .await
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut runs = 5_usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().context("--runs needs a value")?.parse()?,
            "-h" | "--help" => {
                println!("bench-connect [--runs N]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    ensure!((1..=50).contains(&runs), "--runs must be 1 to 50");
    let stack = Stack::start(None, None).await?;
    let admin = stack.admin().await;
    let mut ids = std::collections::HashMap::new();
    for (name, clone) in POOLS {
        let made = admin
            .post_json(
                "/api/v1/admin/pools",
                json!({"name": name, "image": "desktop", "vcpus": 1, "memory_mib": 512,
                       "display": "1024x768", "kind": "floating", "min_ready": 1, "max_size": 1,
                       "idle_timeout_secs": 1800, "max_session_secs": 28800, "clone": clone}),
                StatusCode::CREATED,
            )
            .await;
        ids.insert(*name, made["id"].as_str().context("a pool has an id")?.to_owned());
    }
    // One round to warm up (the clone pool's first desktop boots while the template is made),
    // then the measured rounds.
    let order: Vec<&str> = (0..=runs).flat_map(|_| POOLS.iter().map(|(name, _)| *name)).collect();
    let tmp = TempDir::new("bench-connect");
    let cfg = json!({"broker": stack.broker.url, "chromium": CHROMIUM, "tmp": tmp.path(),
                     "user": "alice", "password": "alice-pw", "order": order});
    let mut driver = Driver::start("bench_connect.mjs", &cfg)?;
    let mut results: Vec<(String, Value)> = Vec::new();
    let mut spare_cloned = false;
    let mut spare_vm = String::new();
    let mut round = 0_usize;
    let drive = async {
        while let Some(msg) = driver.next().await? {
            if msg["done"] == true {
                break;
            }
            if let Some(pool) = msg["spare"].as_str() {
                let id = ids.get(pool).context("an unknown pool")?;
                (spare_cloned, spare_vm) = ready_spare(&admin, pool, id).await?;
                driver.answer("ok").await?;
                continue;
            }
            let pool = msg["pool"].as_str().context("a result names its pool")?.to_owned();
            let wants_clone = POOLS.iter().any(|(n, c)| *n == pool && *c);
            let counted = round >= POOLS.len() && spare_cloned == wants_clone;
            // What the guest agent says of the session's start, on the VM's console.
            let console = stack.node.console_log(&spare_vm).await.unwrap_or_default();
            let guest = console.lines().rev().find(|l| l.contains("session started for"));
            let warmed = console.lines().rev().find(|l| l.contains("panel warmed up"));
            eprintln!(
                "bench-connect: {pool}{}: answer {:.0} ms, viewer connected {:.0} ms, desktop {:.0} ms; guest: {}; {}",
                if counted { "" } else { " (not counted)" },
                msg["answer_ms"].as_f64().unwrap_or(f64::NAN),
                msg["connected_ms"].as_f64().unwrap_or(f64::NAN),
                msg["desktop_ms"].as_f64().unwrap_or(f64::NAN),
                guest.unwrap_or("(nothing)"),
                warmed.unwrap_or("(no warm-up)")
            );
            if counted {
                results.push((pool, msg));
            }
            round += 1;
            driver.answer("ok").await?;
        }
        anyhow::Ok(())
    };
    // A round is a refill (a boot under TCG) and a connect: a few minutes at most each.
    let within = Duration::from_secs(300) * u32::try_from(order.len()).unwrap_or(u32::MAX);
    tokio::time::timeout(within, drive)
        .await
        .with_context(|| format!("the benchmark took over {within:?}"))?
        .with_context(|| stack.logs())?;
    driver.finish().await?;
    let mut out = serde_json::Map::new();
    println!(
        "| pool | connects | broker's answer (ms) | viewer connected (ms) | desktop drawn (ms) |"
    );
    println!("|---|---|---|---|---|");
    for (name, _) in POOLS {
        let mine: Vec<&Value> = results.iter().filter(|(p, _)| p == name).map(|(_, v)| v).collect();
        ensure!(!mine.is_empty(), "no connect to pool {name} was measured");
        let m = |key: &str| median(mine.iter().filter_map(|v| v[key].as_f64()).collect());
        let (answer, connected, desktop) = (m("answer_ms"), m("connected_ms"), m("desktop_ms"));
        println!("| {name} | {} | {answer:.0} | {connected:.0} | {desktop:.0} |", mine.len());
        out.insert(
            (*name).to_owned(),
            json!({"connects": mine.len(), "answer_ms": answer.round(), "connected_ms": connected.round(),
                   "desktop_ms": desktop.round()}),
        );
    }
    println!("{}", Value::Object(out));
    Ok(())
}
