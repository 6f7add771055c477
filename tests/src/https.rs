//! A small HTTPS client for the harness (hyper over rustls with ring, trusting one CA), which
//! answers with `reqwest::Response`s so the same assertions serve HTTP and HTTPS, with a cookie
//! jar of its own that does not care about the `__Host-` prefix's rules on `127.0.0.1`.
//!
//! One connection per request; cookies kept like a browser's (name and value; every cookie goes
//! back to the same host), when asked for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use reqwest::Method;
use rustls::pki_types::ServerName;

/// Cookies by name, as a browser keeps them for one host.
type CookieJar = Arc<Mutex<Vec<(String, String)>>>;

/// An HTTPS client trusting one CA.
#[derive(Clone)]
pub struct HttpsClient {
    connector: tokio_rustls::TlsConnector,
    cookies: Option<CookieJar>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient").field("cookies", &self.cookies.is_some()).finish()
    }
}

impl HttpsClient {
    /// A client that trusts the CA certificates in `ca_pem`; with `cookies`, it keeps and sends
    /// back what servers set.
    pub fn new(ca_pem: &[u8], cookies: bool, timeout: Duration) -> anyhow::Result<Self> {
        crate::util::install_crypto();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile_certs(ca_pem)? {
            roots.add(cert).context("a CA certificate")?;
        }
        let mut cfg =
            rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            cookies: cookies.then(Arc::default),
            timeout,
        })
    }

    pub async fn get(&self, url: &str) -> anyhow::Result<reqwest::Response> {
        self.request(Method::GET, url, &[], None).await
    }

    /// Sends one request; `body` is sent as JSON.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<reqwest::Response> {
        tokio::time::timeout(self.timeout, self.request_inner(method, url, headers, body))
            .await
            .with_context(|| format!("{url}: no answer within {:?}", self.timeout))?
    }

    async fn request_inner(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let u = reqwest::Url::parse(url)?;
        if u.scheme() != "https" {
            bail!("{url}: this client speaks https only");
        }
        let host = u.host_str().context("a host")?.trim_matches(['[', ']']).to_owned();
        let port = u.port_or_known_default().context("a port")?;
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let name = ServerName::try_from(host.clone())?;
        let tls = self.connector.connect(name, tcp).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut path = u.path().to_owned();
        if let Some(q) = u.query() {
            path.push('?');
            path.push_str(q);
        }
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{host}:{port}"))
            .header("accept", "application/json");
        if let Some(jar) = &self.cookies {
            let cookie = jar
                .lock()
                .expect("cookie jar")
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            if !cookie.is_empty() {
                req = req.header("cookie", cookie);
            }
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let bytes = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(b)?)
            }
            None => Bytes::new(),
        };
        let resp = sender.send_request(req.body(Full::new(bytes))?).await?;
        let (parts, body) = resp.into_parts();
        if let Some(jar) = &self.cookies {
            let mut jar = jar.lock().expect("cookie jar");
            for v in parts.headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()) {
                let Some((k, rest)) = v.split_once('=') else { continue };
                let value = rest.split(';').next().unwrap_or("").to_owned();
                let expired = v.to_ascii_lowercase().contains("max-age=0");
                jar.retain(|(name, _)| name != k);
                if !expired {
                    jar.push((k.to_owned(), value));
                }
            }
        }
        // An upgrade answered 101 has no body to read.
        let data = if parts.status == hyper::StatusCode::SWITCHING_PROTOCOLS {
            Bytes::new()
        } else {
            body.collect().await?.to_bytes()
        };
        Ok(reqwest::Response::from(hyper::Response::from_parts(parts, data)))
    }
}

fn rustls_pemfile_certs(
    pem: &[u8],
) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .context("PEM certificates")?;
    anyhow::ensure!(!certs.is_empty(), "no PEM certificate");
    Ok(certs)
}
