//! The state every handler reaches through `State<AppState>`.

use std::sync::Arc;

use crate::config::Config;
use crate::db::{Db, LoginWriter};
use crate::keys::Keys;
use crate::ldap::Directory;
use crate::metrics::Metrics;
use crate::nodeclient::NodeClient;
use crate::policy::Policies;

#[derive(Debug, Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub db: Db,
    /// Group commit of sign-in records.
    pub login_writer: LoginWriter,
    pub directory: Directory,
    pub keys: Arc<Keys>,
    pub policies: Arc<Policies>,
    pub nodes: NodeClient,
    pub metrics: Arc<Metrics>,
}
