//! The node agent's local API, as the display proxy uses it: where a VM's display is, its
//! clipboard, and its screen's size. It is reached on the node's local socket, whose file
//! permissions are the only credential: the proxy holds no token that could open the node's
//! network API.

use std::time::Duration;

use atrium_protocol::agent::FileEntry;
use atrium_protocol::node::{
    ClipboardPaste, ClipboardState, DisplaySize, ErrorBody, FILE_SIZE_HEADER, FileListing,
    ScreenSize, UploadSaved, UploadStaged, VmInfo, validate_name,
};
use atrium_protocol::session::ActivityReport;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("invalid VM id: {0}")]
    BadId(String),
    #[error("the node has no VM {0}")]
    NotFound(String),
    #[error("the node answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot reach the node agent: {0}")]
    Http(#[from] reqwest::Error),
}

impl NodeError {
    /// What the node said was wrong (its error body's message), when it said.
    pub fn node_message(&self) -> Option<String> {
        match self {
            Self::Status { body, .. } => {
                serde_json::from_str::<ErrorBody>(body).ok().map(|b| b.error)
            }
            _ => None,
        }
    }
}

/// A client of the node agent beside this proxy.
#[derive(Debug, Clone)]
pub struct NodeClient {
    base: String,
    http: reqwest::Client,
}

impl NodeClient {
    /// A client of the node's local socket at `socket`.
    pub fn new(socket: &std::path::Path) -> Self {
        atrium_door::client::install_default_provider();
        let http = reqwest::Client::builder()
            .unix_socket(socket)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client with default settings");
        Self { base: "http://node".into(), http }
    }

    fn url(&self, vm: &str, rest: &str) -> Result<String, NodeError> {
        validate_name("vm", vm, 128).map_err(|e| NodeError::BadId(e.to_string()))?;
        Ok(format!("{}/api/v1/vms/{vm}{rest}", self.base))
    }

    async fn check(vm: &str, resp: reqwest::Response) -> Result<reqwest::Response, NodeError> {
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(NodeError::NotFound(vm.to_owned()));
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let body: String = body.chars().take(200).collect();
            return Err(NodeError::Status { status: status.as_u16(), body });
        }
        Ok(resp)
    }

    /// `GET /api/v1/vms/{id}`.
    pub async fn vm(&self, vm: &str) -> Result<VmInfo, NodeError> {
        let resp = self.http.get(self.url(vm, "")?).timeout(Duration::from_secs(10)).send().await?;
        Ok(Self::check(vm, resp).await?.json().await?)
    }

    /// `POST /api/v1/vms/{id}/clipboard`: text or an image into the guest.
    pub async fn paste(&self, vm: &str, paste: &ClipboardPaste) -> Result<(), NodeError> {
        let resp = self
            .http
            .post(self.url(vm, "/clipboard")?)
            .timeout(Duration::from_secs(10))
            .json(paste)
            .send()
            .await?;
        Self::check(vm, resp).await?;
        Ok(())
    }

    /// `GET /api/v1/vms/{id}/clipboard?after=SEQ&wait=SECS`: waits up to `wait` for the guest
    /// clipboard to change past `after`.
    pub async fn clipboard_after(
        &self,
        vm: &str,
        after: u64,
        wait: u64,
    ) -> Result<ClipboardState, NodeError> {
        let url = format!("{}?after={after}&wait={wait}", self.url(vm, "/clipboard")?);
        let resp = self.http.get(url).timeout(Duration::from_secs(wait + 10)).send().await?;
        Ok(Self::check(vm, resp).await?.json().await?)
    }

    /// `PUT /api/v1/vms/{id}/screen`: gives the guest's screen a new size; returns the size it
    /// took.
    pub async fn set_screen(&self, vm: &str, size: DisplaySize) -> Result<DisplaySize, NodeError> {
        let resp = self
            .http
            .put(self.url(vm, "/screen")?)
            .timeout(Duration::from_secs(15))
            .json(&ScreenSize { size })
            .send()
            .await?;
        Ok(Self::check(vm, resp).await?.json::<ScreenSize>().await?.size)
    }

    /// `PUT /api/v1/activity`: which sessions have viewers here and how long each has been
    /// without input (the node passes it on to the broker in its heartbeats).
    pub async fn report_activity(&self, report: &ActivityReport) -> Result<(), NodeError> {
        let resp = self
            .http
            .put(format!("{}/api/v1/activity", self.base))
            .timeout(Duration::from_secs(10))
            .json(report)
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let body: String = resp.text().await.unwrap_or_default().chars().take(200).collect();
            return Err(NodeError::Status { status: status.as_u16(), body });
        }
        Ok(())
    }

    /// `POST /api/v1/vms/{id}/recordings/{rec}/chunks/{n}`: a recording's chunk, which the
    /// node signs on to the broker.
    pub async fn recording_chunk(
        &self,
        vm: &str,
        rec: &str,
        n: u64,
        last: bool,
        chunk: axum::body::Bytes,
    ) -> Result<(), NodeError> {
        let url =
            format!("{}?last={last}", self.url(vm, &format!("/recordings/{rec}/chunks/{n}"))?);
        let resp = self
            .http
            .post(url)
            .timeout(Duration::from_secs(60))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(chunk)
            .send()
            .await?;
        Self::check(vm, resp).await?;
        Ok(())
    }

    /// `POST /api/v1/vms/{id}/uploads?name=NAME&size=BYTES`: streams `body` (exactly `size`
    /// bytes) into the guest as the user's file `name`; answers once the guest has it whole,
    /// not yet the user's. No timeout on the whole: the body flows as fast as the guest takes
    /// it, and ends when the viewer's data does.
    pub async fn upload(
        &self,
        vm: &str,
        name: &str,
        size: u64,
        body: reqwest::Body,
    ) -> Result<UploadStaged, NodeError> {
        let url = format!(
            "{}?name={}&size={size}",
            self.url(vm, "/uploads")?,
            atrium_protocol::text::query_escape(name)
        );
        let resp = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await?;
        Ok(Self::check(vm, resp).await?.json().await?)
    }

    /// `POST /api/v1/vms/{id}/uploads/{n}/commit`: gives a received file to the user; returns
    /// its path in the guest.
    pub async fn commit_upload(&self, vm: &str, n: u64) -> Result<String, NodeError> {
        let resp = self
            .http
            .post(self.url(vm, &format!("/uploads/{n}/commit"))?)
            .timeout(Duration::from_secs(45))
            .send()
            .await?;
        Ok(Self::check(vm, resp).await?.json::<UploadSaved>().await?.path)
    }

    /// `DELETE /api/v1/vms/{id}/uploads/{n}`: throws a received file away.
    pub async fn abort_upload(&self, vm: &str, n: u64) -> Result<(), NodeError> {
        let resp = self
            .http
            .delete(self.url(vm, &format!("/uploads/{n}"))?)
            .timeout(Duration::from_secs(15))
            .send()
            .await?;
        Self::check(vm, resp).await?;
        Ok(())
    }

    /// `GET /api/v1/vms/{id}/files`: the files of the user's transfer folder the desktop
    /// offers for download.
    pub async fn list_files(&self, vm: &str) -> Result<Vec<FileEntry>, NodeError> {
        let resp =
            self.http.get(self.url(vm, "/files")?).timeout(Duration::from_secs(30)).send().await?;
        Ok(Self::check(vm, resp).await?.json::<FileListing>().await?.files)
    }

    /// `GET /api/v1/vms/{id}/files/content?name=NAME`: file `name` of the transfer folder, as
    /// its size and a response whose body streams its bytes as fast as they are read. No
    /// timeout on the whole: the node ends a download whose guest stops sending.
    pub async fn download(
        &self,
        vm: &str,
        name: &str,
    ) -> Result<(u64, reqwest::Response), NodeError> {
        let url = format!(
            "{}?name={}",
            self.url(vm, "/files/content")?,
            atrium_protocol::text::query_escape(name)
        );
        let resp = Self::check(vm, self.http.get(url).send().await?).await?;
        let size = resp
            .headers()
            .get(FILE_SIZE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| NodeError::Status {
                status: resp.status().as_u16(),
                body: format!("the node's answer has no valid {FILE_SIZE_HEADER}"),
            })?;
        Ok((size, resp))
    }

    /// `POST /api/v1/vms/{id}/recordings/{rec}/end`: a recording ends with no more chunks.
    pub async fn recording_end(&self, vm: &str, rec: &str) -> Result<(), NodeError> {
        let resp = self
            .http
            .post(self.url(vm, &format!("/recordings/{rec}/end"))?)
            .timeout(Duration::from_secs(60))
            .send()
            .await?;
        Self::check(vm, resp).await?;
        Ok(())
    }
}
