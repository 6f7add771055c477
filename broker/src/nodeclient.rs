//! The broker's calls to node agents (and to the display proxies beside them). Every call is a
//! request signed with the broker's key for that one node ([`atrium_protocol::signed`]): a
//! captured call opens nothing else, on no other node.

use std::sync::Arc;
use std::time::Duration;

use atrium_protocol::agent::SessionUser;
use atrium_protocol::node::{ErrorBody, SessionRequest, VmInfo, VmSpec};
use atrium_protocol::session::EndReason;
use atrium_protocol::signed::{self, node_audience};
use reqwest::Method;
use thiserror::Error;

use crate::keys::Keys;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("node unreachable: {0}")]
    Unreachable(String),
    #[error("node refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("node answered something unexpected: {0}")]
    BadAnswer(String),
}

/// Where one node is: its id (whose audience calls are signed for) and its API's base URL.
#[derive(Debug, Clone, Copy)]
pub struct NodeAt<'a> {
    pub id: &'a str,
    pub url: &'a str,
}

#[derive(Debug, Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    keys: Arc<Keys>,
}

impl NodeClient {
    /// A client whose TLS trusts `ca_file` (the system's roots when `None`).
    pub fn new(
        keys: Arc<Keys>,
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, atrium_door::tls::TlsError> {
        let http = atrium_door::client::http_client(ca_file)?
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client with a checked TLS configuration builds");
        Ok(Self { http, keys })
    }

    /// Sends `method path` with `body` (JSON) to `node`, signed for it.
    async fn send(
        &self,
        node: NodeAt<'_>,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response, NodeError> {
        let url = format!("{}{path}", node.url.trim_end_matches('/'));
        let bytes = body.unwrap_or_default();
        let req = signed::Request {
            method: method.as_str(),
            path_and_query: signed::path_and_query(&url),
            body: &bytes,
        };
        let token = self
            .keys
            .sign_request(&node_audience(node.id), &req)
            .map_err(|e| NodeError::Unreachable(e.to_string()))?;
        let mut rb = self.http.request(method, &url).bearer_auth(token);
        if !bytes.is_empty() {
            rb = rb.header(reqwest::header::CONTENT_TYPE, "application/json").body(bytes);
        }
        rb.send().await.map_err(|e| NodeError::Unreachable(e.to_string()))
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

    fn json<T: serde::Serialize>(v: &T) -> Option<Vec<u8>> {
        Some(serde_json::to_vec(v).expect("request bodies serialize"))
    }

    pub async fn create_vm(&self, node: NodeAt<'_>, spec: &VmSpec) -> Result<VmInfo, NodeError> {
        let resp = self.send(node, Method::POST, "/api/v1/vms", Self::json(spec)).await?;
        Self::check(resp).await?.json().await.map_err(|e| NodeError::BadAnswer(e.to_string()))
    }

    /// Deletes a VM; a VM the node does not know is already gone.
    pub async fn delete_vm(&self, node: NodeAt<'_>, vm_id: &str) -> Result<(), NodeError> {
        let resp = self.send(node, Method::DELETE, &format!("/api/v1/vms/{vm_id}"), None).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Self::check(resp).await.map(drop)
    }

    pub async fn send_session(
        &self,
        node: NodeAt<'_>,
        vm_id: &str,
        user: &SessionUser,
    ) -> Result<(), NodeError> {
        let body = Self::json(&SessionRequest { user: user.clone() });
        let resp =
            self.send(node, Method::POST, &format!("/api/v1/vms/{vm_id}/session"), body).await?;
        Self::check(resp).await.map(drop)
    }

    /// Asks the display proxy beside a node to close every viewer of a desktop session, telling
    /// them `reason`; `display_url` is the proxy's (`ws(s)://`), the call is signed for the node.
    pub async fn end_display_session(
        &self,
        node_id: &str,
        display_url: &str,
        session_id: &str,
        reason: EndReason,
    ) -> Result<(), NodeError> {
        let base = display_url.replacen("wss://", "https://", 1).replacen("ws://", "http://", 1);
        let at = NodeAt { id: node_id, url: &base };
        let path = format!("/api/v1/sessions/{session_id}/end?reason={}", reason.code());
        let resp = self.send(at, Method::POST, &path, None).await?;
        Self::check(resp).await.map(drop)
    }
}
