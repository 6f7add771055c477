//! An OpenID provider on loopback: the certified `oidc-provider` package under Node.js
//! (`tests/browser/oidc_provider.mjs`), with the clients and accounts a test gives it. Its
//! token endpoint can be made to misbehave as a man in the middle would ([`OidcProvider::mode`]).

use std::process::Stdio;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

use crate::util::workspace_root;

/// A running provider; killed on drop.
#[derive(Debug)]
pub struct OidcProvider {
    child: Child,
    pub issuer: String,
}

/// A client (relying party) registered at the provider.
pub fn client(id: &str, secret: &str, broker_url: &str) -> Value {
    json!({
        "client_id": id, "client_secret": secret,
        "redirect_uris": [format!("{broker_url}/api/v1/auth/oidc/callback")],
        "post_logout_redirect_uris": [format!("{broker_url}/")],
    })
}

impl OidcProvider {
    /// Starts the provider with `clients` (see [`client`]) and `accounts` (login name ->
    /// claims); any password signs an account in.
    pub async fn start(clients: Vec<Value>, accounts: Value) -> anyhow::Result<Self> {
        let dir = workspace_root().join("tests/browser");
        if !dir.join("node_modules/oidc-provider").is_dir() {
            bail!(
                "oidc-provider is not installed in tests/browser (scripts/test.sh runs `npm ci` there)"
            );
        }
        let cfg = json!({ "clients": clients, "accounts": accounts });
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("oidc_provider.mjs"))
            .arg(cfg.to_string())
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("running node (Debian package `nodejs`)")?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let first = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .context("the OpenID provider did not start within 30 s")??
            .context("the OpenID provider exited at start")?;
        let v: Value = serde_json::from_str(&first)?;
        let issuer = v["issuer"].as_str().context("no issuer")?.to_owned();
        Ok(Self { child, issuer })
    }

    /// Makes the token endpoint answer as `mode` says (`normal`, `tamper`, `wrong_aud`,
    /// `expired`, `nonce`, `garbage`: see the script).
    pub async fn mode(&self, mode: &str) -> anyhow::Result<()> {
        let r = reqwest::Client::new()
            .post(format!("{}/__test/mode", self.issuer))
            .body(json!({ "mode": mode }).to_string())
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "setting mode {mode}: {}", r.status());
        Ok(())
    }

    /// Stops the provider (it is down from now on).
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}
