//! A door's TLS: a certificate chain and key from PEM files, reloaded on SIGHUP and when the
//! files change (a Kubernetes Secret updated in place). A reload that fails keeps the
//! certificate in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it")]
    NoKey { path: PathBuf },
    #[error("{path}: {message}")]
    BadPem { path: PathBuf, message: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificate files and the configuration made from them.
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<TlsAcceptor>,
    /// The files' modification times when last read.
    seen: std::sync::Mutex<Stamps>,
}

type Stamps = (Option<SystemTime>, Option<SystemTime>);

fn stamps(cert: &Path, key: &Path) -> Stamps {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(cert), m(key))
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles").field("cert", &self.cert).field("key", &self.key).finish()
    }
}

impl TlsFiles {
    /// Reads both files; an error names the file and what is wrong with it.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let seen = stamps(cert, key);
        let acceptor = TlsAcceptor::from(Arc::new(server_config(cert, key)?));
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(acceptor),
            seen: std::sync::Mutex::new(seen),
        })
    }

    /// Reads the files again; on error the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let seen = stamps(&self.cert, &self.key);
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&self.cert, &self.key)?));
        *self.current.write().expect("TLS configuration lock") = acceptor;
        *self.seen.lock().expect("TLS stamps lock") = seen;
        Ok(())
    }

    /// Reloads when either file's modification time changed since it was last read; true when
    /// it reloaded. A failed reload is tried again at the next call.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        if stamps(&self.cert, &self.key) == *self.seen.lock().expect("TLS stamps lock") {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// What new connections are accepted with.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().expect("TLS configuration lock").clone()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// A server configuration (TLS 1.2 and 1.3, HTTP/1.1) from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadPem { path: cert.to_owned(), message: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.to_owned() });
    }
    let pem = read(key)?;
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::BadPem { path: key.to_owned(), message: e.to_string() })?
        .ok_or_else(|| TlsError::NoKey { path: key.to_owned() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    #[test]
    fn loads_reloads_and_keeps_the_old_on_error() {
        let dir = std::env::temp_dir().join(format!("atrium-door-tls-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
        let (cert, key) = pair("gw.example");
        std::fs::write(&c, &cert).unwrap();
        std::fs::write(&k, &key).unwrap();
        let files = TlsFiles::load(&c, &k).unwrap();

        // A broken key file: the reload fails and names the file.
        std::fs::write(&k, "not a key").unwrap();
        let e = files.reload().unwrap_err().to_string();
        assert!(e.contains("tls.key"), "{e}");
        // The key of another certificate: refused as a mismatch, not accepted.
        let (_, other_key) = pair("other.example");
        std::fs::write(&k, other_key).unwrap();
        assert!(files.reload().is_err());
        // Fixed: the reload takes, and so does one noticed by the files' change.
        let (cert2, key2) = pair("gw2.example");
        std::fs::write(&c, cert2).unwrap();
        std::fs::write(&k, key2).unwrap();
        files.reload().unwrap();
        assert!(!files.reload_if_changed().unwrap(), "nothing changed since");
        let (cert3, key3) = pair("gw3.example");
        std::fs::write(&k, key3).unwrap();
        std::fs::write(&c, cert3).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options().write(true).open(&c).unwrap().set_modified(later).unwrap();
        assert!(files.reload_if_changed().unwrap());
        assert!(!files.reload_if_changed().unwrap());

        std::fs::write(&c, "").unwrap();
        assert!(matches!(TlsFiles::load(&c, &k), Err(TlsError::NoCertificate { .. })));
        assert!(matches!(TlsFiles::load(&dir.join("missing.crt"), &k), Err(TlsError::Read { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
