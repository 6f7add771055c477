//! Connections to the directory: two pools (the service account's, for searches, and one for
//! user binds), each connection opened lazily, checked out under a permit, put back when
//! healthy; searches and binds with their timeouts; LDAP errors classified.

use std::sync::{Arc, Mutex};

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Directory, LdapError, RC_INVALID_CREDENTIALS, RC_NO_SUCH_OBJECT};
use crate::secret::Secret;

/// Which identity a pooled connection is bound as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PoolKind {
    /// Bound as the service account; used for searches.
    Service,
    /// Used only for user binds (its identity changes with each bind).
    UserBind,
}

#[derive(Debug)]
pub(super) struct ConnPool {
    pub(super) kind: PoolKind,
    pub(super) idle: Mutex<Vec<Ldap>>,
    pub(super) permits: Arc<Semaphore>,
}

/// A connection checked out of a pool; returned by [`Directory::put_back`] when it is healthy.
pub(super) struct Checkout {
    ldap: Ldap,
    _permit: OwnedSemaphorePermit,
}

impl Directory {
    pub(super) async fn search(
        &self,
        base: &str,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<SearchEntry>, LdapError> {
        self.search_in(base, Scope::Subtree, filter, attrs, false).await
    }

    /// The entry at `dn` itself (`None`: there is none).
    pub(super) async fn search_base(
        &self,
        dn: &str,
        attrs: &[&str],
    ) -> Result<Option<SearchEntry>, LdapError> {
        let found = self.search_in(dn, Scope::Base, "(objectClass=*)", attrs, true).await?;
        Ok(found.into_iter().next())
    }

    /// A search; with `missing_ok`, a base that does not exist is no entries (for a lookup of
    /// one entry by its DN), otherwise the directory error it is (a wrong `user_base`).
    pub(super) async fn search_in(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        missing_ok: bool,
    ) -> Result<Vec<SearchEntry>, LdapError> {
        let pool = &self.inner.service;
        // One retry on a fresh connection: an idle connection may have been closed by the server.
        for attempt in 0..2 {
            let mut conn = self.checkout(pool).await?;
            let res = tokio::time::timeout(self.timeout(), async {
                conn.ldap
                    .with_timeout(self.timeout())
                    .search(base, scope, filter, attrs.to_vec())
                    .await
            })
            .await;
            match res {
                Err(_) => {
                    return Err(LdapError::Unavailable(
                        "the directory did not answer in time".into(),
                    ));
                }
                Ok(Err(e)) if attempt == 0 && is_connection_error(&e) => continue,
                Ok(Err(e)) => return Err(classify(e)),
                Ok(Ok(result)) => {
                    let (entries, res) = (result.0, result.1);
                    if missing_ok && res.rc == RC_NO_SUCH_OBJECT {
                        self.put_back(pool, conn);
                        return Ok(Vec::new());
                    }
                    if res.rc != 0 && res.rc != 4 {
                        // 4: size limit exceeded still returns entries; anything else is an error.
                        self.put_back(pool, conn);
                        let msg = format!("search failed with code {}: {}", res.rc, res.text);
                        // The directory struggling (busy, unavailable, time or admin limit,
                        // other, loop detected) is an outage, not an answer.
                        return Err(if matches!(res.rc, 1 | 3 | 11 | 51 | 52 | 54 | 80) {
                            LdapError::Unavailable(msg)
                        } else {
                            LdapError::Directory(msg)
                        });
                    }
                    self.put_back(pool, conn);
                    let parsed = entries
                        .into_iter()
                        .map(|e| std::panic::catch_unwind(|| SearchEntry::construct(e)))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| LdapError::Directory("malformed search entry".into()))?;
                    return Ok(parsed);
                }
            }
        }
        Err(LdapError::Unavailable("lost the connection to the directory".into()))
    }

    pub(super) async fn bind_as(&self, dn: &str, password: &Secret) -> Result<(), LdapError> {
        let pool = &self.inner.binder;
        for attempt in 0..2 {
            let mut conn = self.checkout(pool).await?;
            let res = tokio::time::timeout(self.timeout(), async {
                conn.ldap.with_timeout(self.timeout()).simple_bind(dn, password.expose()).await
            })
            .await;
            match res {
                Err(_) => {
                    return Err(LdapError::Unavailable(
                        "the directory did not answer in time".into(),
                    ));
                }
                Ok(Err(e)) if attempt == 0 && is_connection_error(&e) => continue,
                Ok(Err(e)) => return Err(classify(e)),
                Ok(Ok(r)) => {
                    self.put_back(pool, conn);
                    return match r.rc {
                        0 => Ok(()),
                        RC_INVALID_CREDENTIALS => Err(LdapError::InvalidCredentials),
                        // 53 (unwilling to perform) is what some directories answer for
                        // disabled accounts; treat as a failed sign-in, without detail.
                        53 => Err(LdapError::InvalidCredentials),
                        rc => Err(LdapError::Directory(format!(
                            "bind failed with code {rc}: {}",
                            r.text
                        ))),
                    };
                }
            }
        }
        Err(LdapError::Unavailable("lost the connection to the directory".into()))
    }

    pub(super) async fn checkout(&self, pool: &ConnPool) -> Result<Checkout, LdapError> {
        let permit = tokio::time::timeout(self.timeout(), pool.permits.clone().acquire_owned())
            .await
            .map_err(|_| LdapError::Unavailable("all directory connections are busy".into()))?
            .expect("the semaphore is never closed");
        let idle = pool.idle.lock().expect("pool lock").pop();
        let ldap = match idle {
            Some(l) => l,
            None => self.connect(pool.kind).await?,
        };
        Ok(Checkout { ldap, _permit: permit })
    }

    pub(super) fn put_back(&self, pool: &ConnPool, conn: Checkout) {
        pool.idle.lock().expect("pool lock").push(conn.ldap);
    }

    pub(super) async fn connect(&self, kind: PoolKind) -> Result<Ldap, LdapError> {
        let cfg = &self.inner.cfg;
        let mut settings =
            LdapConnSettings::new().set_conn_timeout(self.timeout()).set_starttls(cfg.starttls);
        if let Some(tls) = &self.inner.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, mut ldap) =
            tokio::time::timeout(self.timeout(), LdapConnAsync::with_settings(settings, &cfg.url))
                .await
                .map_err(|_| {
                    LdapError::Unavailable("connecting to the directory timed out".into())
                })?
                .map_err(|e| {
                    LdapError::Unavailable(format!("cannot connect to the directory: {e}"))
                })?;
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "directory connection closed");
            }
        });
        if kind == PoolKind::Service && !cfg.bind_dn.is_empty() {
            if cfg.bind_password.is_empty() {
                return Err(LdapError::Directory(
                    "ldap.bind_dn is set but its password is empty".into(),
                ));
            }
            let r = tokio::time::timeout(
                self.timeout(),
                ldap.with_timeout(self.timeout())
                    .simple_bind(&cfg.bind_dn, cfg.bind_password.expose()),
            )
            .await
            .map_err(|_| LdapError::Unavailable("the directory did not answer in time".into()))?
            .map_err(classify)?;
            if r.rc != 0 {
                tracing::error!(rc = r.rc, "the service account cannot bind to the directory");
                return Err(LdapError::Unavailable(format!(
                    "the service account cannot bind (code {})",
                    r.rc
                )));
            }
        }
        Ok(ldap)
    }
}

fn is_connection_error(e: &ldap3::LdapError) -> bool {
    matches!(
        e,
        ldap3::LdapError::Io { .. }
            | ldap3::LdapError::OpSend { .. }
            | ldap3::LdapError::ResultRecv { .. }
    )
}

fn classify(e: ldap3::LdapError) -> LdapError {
    match e {
        ldap3::LdapError::Timeout { .. } => {
            LdapError::Unavailable("the directory did not answer in time".into())
        }
        e if is_connection_error(&e) => {
            LdapError::Unavailable(format!("connection to the directory failed: {e}"))
        }
        e => LdapError::Directory(e.to_string()),
    }
}

pub(super) fn tls_config(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, LdapError> {
    let pem = std::fs::read(ca_file).map_err(|e| {
        LdapError::Directory(format!("cannot read ldap.ca_file {}: {e}", ca_file.display()))
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| {
            LdapError::Directory(format!("ldap.ca_file {}: {e}", ca_file.display()))
        })?;
        roots.add(cert).map_err(|e| {
            LdapError::Directory(format!("ldap.ca_file {}: {e}", ca_file.display()))
        })?;
    }
    if roots.is_empty() {
        return Err(LdapError::Directory(format!(
            "ldap.ca_file {} holds no certificate",
            ca_file.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LdapError::Directory(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
