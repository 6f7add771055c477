//! TLS for services on this host: one certificate for 127.0.0.1 and localhost, self-signed, that
//! every service presents and every caller trusts as its CA bundle. Tests that run Atrium with
//! TLS on every internal hop use it.

use std::path::PathBuf;
use std::time::Duration;

use crate::util::TempDir;

/// The certificate, its key and the "CA bundle" (the same certificate), as files.
#[derive(Debug)]
pub struct TestTls {
    _dir: TempDir,
    /// The CA bundle callers trust.
    pub ca: PathBuf,
    /// The certificate chain services present.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestTls {
    pub fn new() -> anyhow::Result<Self> {
        let dir = TempDir::new("tls");
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
        let (ca, cert, key) =
            (dir.path().join("ca.crt"), dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&ca, ck.cert.pem())?;
        std::fs::write(&cert, ck.cert.pem())?;
        std::fs::write(&key, ck.signing_key.serialize_pem())?;
        Ok(Self { _dir: dir, ca, cert, key })
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca).expect("the test CA was written")
    }

    /// An HTTP client trusting the CA, as the services' own clients do.
    pub fn client(&self) -> reqwest::Client {
        atrium_door::client::http_client(Some(&self.ca))
            .expect("the test CA loads")
            .timeout(Duration::from_secs(60))
            .build()
            .expect("a client")
    }
}
