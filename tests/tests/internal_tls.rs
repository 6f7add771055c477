//! Atrium with TLS on every internal hop, as a deployment across hosts runs it: the broker
//! serves `https://`, the node agent's API `https://`, the display proxy `wss://`, and each
//! caller trusts one configured CA bundle; no plain URL is allowed anywhere. A node enrols and
//! heartbeats over TLS, the broker creates a desktop and tells its agent who signed in over TLS,
//! a viewer watches it over `wss://`, and signing out ends the viewer: the broker's signed call
//! reaches the display proxy behind `https://`. Groups `ldap` and `qemu`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use atrium_protocol::display::ServerMessage;
use atrium_tests::broker::{Broker, BrokerOptions};
use atrium_tests::display::DisplayProxy;
use atrium_tests::node::{NodeProcess, console_image};
use atrium_tests::pki::TestTls;
use atrium_tests::slapd::Slapd;
use atrium_tests::stack::create_pool;
use atrium_tests::{Group, free_port, skip, wait_for};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Opens a viewer on `url` (`wss://`), trusting `tls`; returns the socket after the Hello.
async fn wss_viewer(
    url: &str,
    tls: &TestTls,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
> {
    let config = atrium_door::client::client_config(Some(&tls.ca))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let authority = url.strip_prefix("wss://").context("a wss:// URL")?;
    let host_port = authority.split('/').next().unwrap_or_default();
    let tcp = tokio::net::TcpStream::connect(host_port).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let stream = connector.connect(name, tcp).await.context("TLS to the display proxy")?;
    let (mut ws, _) = tokio_tungstenite::client_async(url.into_client_request()?, stream).await?;
    let first = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .context("no Hello")?
        .context("closed before Hello")??;
    let Message::Binary(b) = first else { anyhow::bail!("expected a Hello, got {first:?}") };
    ensure!(matches!(ServerMessage::decode(&b)?, ServerMessage::Hello { .. }), "not a Hello");
    Ok(ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_on_every_hop_a_desktop_is_served_and_signing_out_ends_its_viewer()
-> anyhow::Result<()> {
    let name = "with_tls_on_every_hop_a_desktop_is_served_and_signing_out_ends_its_viewer";
    if skip(Group::Ldap, name) || skip(Group::Qemu, name) {
        return Ok(());
    }
    let tls = Arc::new(TestTls::new()?);
    let slapd = Slapd::start()?;
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.tls = Some(Arc::clone(&tls));
    let broker = Broker::start(opts).await?;
    ensure!(broker.url.starts_with("https://"));
    let mut admin = broker.client();
    admin.login_ok("carol", "carol-pw").await;
    let enrolment = admin.enrolment_token("node-1").await;

    let display_port = free_port();
    let node = NodeProcess::start_tls(
        &[&console_image()?],
        &format!(
            "id = \"node-1\"\ndisplay_url = \"wss://127.0.0.1:{display_port}\"\n\n[broker]\n\
             url = \"{}\"\nheartbeat_secs = 1\nenrolment_token = {enrolment:?}\n",
            broker.url
        ),
        &tls,
    )
    .await?;
    ensure!(node.url.starts_with("https://"));
    let proxy =
        DisplayProxy::start_tls(&broker.url, &node.local_socket(), display_port, &tls).await?;

    // The node enrolled and registers over TLS, with its https:// API.
    wait_for("the node to register over TLS", Duration::from_secs(30), || async {
        let n = admin.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
        (n[0]["state"] == "up").then_some(n)
    })
    .await
    .map(|n| assert!(n[0]["api_url"].as_str().unwrap_or_default().starts_with("https://"), "{n}"))
    .with_context(|| format!("node log:\n{}", node.log()))?;

    // A spare booted through the node's https:// API.
    create_pool(&admin, "console", "console", 1, "1024x768", Some(false)).await?;

    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let c = alice.post_json("/api/v1/pools/console/connect", json!({}), StatusCode::OK).await;
    let ws_url = c["ws_url"].as_str().context("a ws_url")?;
    ensure!(ws_url.starts_with(&format!("wss://127.0.0.1:{display_port}/ws/")), "{c}");
    let ticket = c["ticket"].as_str().context("a ticket")?;
    let mut viewer = wss_viewer(&format!("{ws_url}?ticket={ticket}"), &tls).await?;

    // Signing out: the broker's call to end the session goes to https://, and the viewer goes.
    alice.post_json("/api/v1/auth/logout", json!({}), StatusCode::NO_CONTENT).await;
    let close = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(m) = viewer.next().await {
            if let Ok(Message::Close(c)) = m {
                return c;
            }
        }
        None
    })
    .await
    .with_context(|| format!("the viewer stayed connected; broker log:\n{}", broker.log()))?
    .context("the viewer's connection ended without a close frame")?;
    assert_eq!(close.code, CloseCode::Normal);
    assert_eq!(close.reason.as_str(), "the session ended: signed_out", "told why, over TLS");
    drop(proxy);
    Ok(())
}
