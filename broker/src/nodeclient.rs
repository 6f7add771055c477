//! The broker's calls to node agents (and to the display proxies beside them).

use std::time::Duration;

use atrium_protocol::agent::SessionUser;
use atrium_protocol::node::{ErrorBody, SessionRequest, VmInfo, VmSpec};
use thiserror::Error;

use crate::secret::Secret;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("node unreachable: {0}")]
    Unreachable(String),
    #[error("node refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("node answered something unexpected: {0}")]
    BadAnswer(String),
}

#[derive(Debug, Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    token: Secret,
}

impl NodeClient {
    pub fn new(token: Secret, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client without TLS options builds");
        Self { http, token }
    }

    fn url(base: &str, path: &str) -> String {
        format!("{}{path}", base.trim_end_matches('/'))
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, NodeError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let message = match resp.json::<ErrorBody>().await {
            Ok(b) => b.error,
            Err(_) => status.canonical_reason().unwrap_or("error").to_owned(),
        };
        Err(NodeError::Refused { status: status.as_u16(), message })
    }

    pub async fn create_vm(&self, api_url: &str, spec: &VmSpec) -> Result<VmInfo, NodeError> {
        let resp = self
            .http
            .post(Self::url(api_url, "/api/v1/vms"))
            .bearer_auth(self.token.expose())
            .json(spec)
            .send()
            .await
            .map_err(|e| NodeError::Unreachable(e.to_string()))?;
        Self::check(resp).await?.json().await.map_err(|e| NodeError::BadAnswer(e.to_string()))
    }

    /// Deletes a VM; a VM the node does not know is already gone.
    pub async fn delete_vm(&self, api_url: &str, vm_id: &str) -> Result<(), NodeError> {
        let resp = self
            .http
            .delete(Self::url(api_url, &format!("/api/v1/vms/{vm_id}")))
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| NodeError::Unreachable(e.to_string()))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Self::check(resp).await.map(drop)
    }

    pub async fn send_session(
        &self,
        api_url: &str,
        vm_id: &str,
        user: &SessionUser,
    ) -> Result<(), NodeError> {
        let resp = self
            .http
            .post(Self::url(api_url, &format!("/api/v1/vms/{vm_id}/session")))
            .bearer_auth(self.token.expose())
            .json(&SessionRequest { user: user.clone() })
            .send()
            .await
            .map_err(|e| NodeError::Unreachable(e.to_string()))?;
        Self::check(resp).await.map(drop)
    }

    /// Asks the display proxy beside a node to close every viewer of a desktop session.
    pub async fn end_display_session(
        &self,
        display_url: &str,
        session_id: &str,
    ) -> Result<(), NodeError> {
        let base = display_url.replacen("wss://", "https://", 1).replacen("ws://", "http://", 1);
        let resp = self
            .http
            .post(Self::url(&base, &format!("/api/v1/sessions/{session_id}/end")))
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| NodeError::Unreachable(e.to_string()))?;
        Self::check(resp).await.map(drop)
    }
}
