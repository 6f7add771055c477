//! The state every handler reaches through `State<AppState>`.

use std::sync::Arc;

use crate::config::Config;
use crate::db::{Db, LoginWriter};
use crate::keys::Keys;
use crate::ldap::Directory;
use crate::metrics::Metrics;
use crate::nodeclient::NodeClient;
use crate::oidc::Oidc;
use crate::policy::Policies;

#[derive(Debug, Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub db: Db,
    /// Group commit of sign-in records.
    pub login_writer: LoginWriter,
    pub directory: Directory,
    /// The OpenID provider client, when single sign-on is configured.
    pub oidc: Option<Oidc>,
    /// Seals MFA secrets at rest.
    pub mfa: Arc<crate::mfa::Vault>,
    pub keys: Arc<Keys>,
    pub policies: Arc<Policies>,
    pub nodes: NodeClient,
    pub metrics: Arc<Metrics>,
    /// Nodes whose orphan VMs are being swept.
    pub sweeping: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Serialises sign-in attempts per username.
    pub login_gate: Arc<KeyedGate>,
    /// This replica's name among the brokers sharing the database (host name and a random
    /// suffix): the holder of leases it takes.
    pub instance: Arc<str>,
    /// Set on SIGTERM: `/readyz` answers 503 while requests are still served.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// The public listener's door (its counters are in `/metrics`).
    pub door: Arc<atrium_door::Door>,
}

/// One async lock per key, created on demand and forgotten when unused.
#[derive(Debug, Default)]
pub struct KeyedGate {
    locks: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedGate {
    /// Waits for the turn of `key`; the turn ends when the guard drops.
    pub async fn enter(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().expect("gate lock");
            if locks.len() > 10_000 {
                // Forget keys nobody waits on.
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks.entry(key.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}
