//! A ticket issuer that does what the broker does for display tickets: an Ed25519 key, its
//! JWKS, and signed tickets. The benchmark uses it (it runs without a broker) and so do tests;
//! the service itself only verifies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use atrium_protocol::ticket::{
    Capabilities, DISPLAY_AUDIENCE, DISPLAY_AUDIENCE_WATERMARKED, DisplayClaims, ISSUER, Watermark,
};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::sync::RwLock;

/// One signing key with its key id.
#[derive(Clone)]
pub struct TicketIssuer {
    kid: String,
    key: SigningKey,
}

impl std::fmt::Debug for TicketIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketIssuer({})", self.kid)
    }
}

impl TicketIssuer {
    /// A new random key.
    pub fn generate(kid: &str) -> Self {
        Self { kid: kid.to_owned(), key: SigningKey::generate(&mut rand::rngs::OsRng) }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// This key as a JWK (OKP, Ed25519).
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
        })
    }

    /// A JWKS document holding these keys.
    pub fn jwks(issuers: &[&TicketIssuer]) -> String {
        serde_json::json!({ "keys": issuers.iter().map(|i| i.jwk()).collect::<Vec<_>>() })
            .to_string()
    }

    /// Claims for `vm` valid from now for `ttl` seconds, with a fresh `jti`.
    pub fn claims(vm: &str, caps: Capabilities, ttl: u64) -> DisplayClaims {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        DisplayClaims {
            iss: ISSUER.into(),
            aud: DISPLAY_AUDIENCE.into(),
            sub: "bench".into(),
            iat: now,
            nbf: now,
            exp: now + ttl,
            jti: format!("{:032x}", rand::random::<u128>()),
            desktop: format!("desktop-{vm}"),
            vm: vm.into(),
            node: "node-1".into(),
            sid: "session-1".into(),
            caps,
            proxy: None,
            watermark: None,
            record: None,
        }
    }

    /// Claims for `vm` like [`TicketIssuer::claims`], asking for watermark `w` (with the
    /// audience a watermarked ticket has).
    pub fn watermarked_claims(
        vm: &str,
        caps: Capabilities,
        ttl: u64,
        w: Watermark,
    ) -> DisplayClaims {
        DisplayClaims {
            aud: DISPLAY_AUDIENCE_WATERMARKED.into(),
            watermark: Some(w),
            ..Self::claims(vm, caps, ttl)
        }
    }

    /// Signs any claims (tests sign broken ones too).
    pub fn sign<T: serde::Serialize>(&self, claims: &T) -> String {
        let der = self.key.to_pkcs8_der().expect("PKCS#8 of an Ed25519 key");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
            .expect("signing with a valid Ed25519 key")
    }

    /// This key as a node trusts it (`broker.trusted_keys_file` holds a list of these).
    pub fn broker_key(&self) -> atrium_protocol::node::BrokerKey {
        atrium_protocol::node::BrokerKey {
            kid: self.kid.clone(),
            x: URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
        }
    }

    /// A call to node `node` (its agent's API or its display proxy) signed as the broker signs
    /// them: for `method`, `path_and_query` and `body`.
    pub fn sign_request(
        &self,
        node: &str,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> String {
        use atrium_protocol::signed;
        let der = self.key.to_pkcs8_der().expect("PKCS#8 of an Ed25519 key");
        let req = signed::Request { method, path_and_query, body };
        signed::sign(
            &EncodingKey::from_ed_der(der.as_bytes()),
            Some(&self.kid),
            ISSUER,
            ISSUER,
            &signed::node_audience(node),
            &req,
            signed::now_secs(),
        )
        .expect("signing with a valid Ed25519 key")
    }

    /// A valid ticket for `vm`.
    pub fn ticket(&self, vm: &str, caps: Capabilities) -> String {
        self.sign(&Self::claims(vm, caps, 30))
    }
}

/// A tiny HTTP server publishing a JWKS at `/.well-known/jwks.json`, standing in for the
/// broker; the document can be replaced (key rotation) and fetches are counted.
#[derive(Debug, Clone)]
pub struct JwksServer {
    pub addr: SocketAddr,
    doc: Arc<RwLock<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start(doc: String) -> std::io::Result<Self> {
        // Its callers' HTTP clients need a process TLS provider.
        atrium_door::client::install_default_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let doc = Arc::new(RwLock::new(doc));
        let hits = Arc::new(AtomicUsize::new(0));
        let state = (Arc::clone(&doc), Arc::clone(&hits));
        let app = Router::new()
            .route(
                "/.well-known/jwks.json",
                get(|State((doc, hits)): State<(Arc<RwLock<String>>, Arc<AtomicUsize>)>| async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    ([("content-type", "application/json")], doc.read().await.clone())
                }),
            )
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, doc, hits })
    }

    /// The broker URL to configure.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn set(&self, doc: String) {
        *self.doc.write().await = doc;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
