//! How Atrium's services call each other: TLS (rustls) that trusts a configured CA bundle (or
//! the system's roots when none is configured), and plain `http://` (or `ws://`) only to a
//! loopback address, and only where the configuration allows it.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;

use crate::tls::TlsError;

/// Makes ring the process's rustls provider (once; later calls change nothing). reqwest needs a
/// process provider for any client built without [`http_client`]'s settings (a client of a unix
/// socket, a test's client); services call this first thing.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS settings of calls to other services: the CA bundle that issued their certificates
/// (PEM; `None`: the system's roots).
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|source| TlsError::Read { path: path.to_owned(), source })?;
            let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<_, _>>()
                .map_err(|e| TlsError::BadPem { path: path.to_owned(), message: e.to_string() })?;
            if certs.is_empty() {
                return Err(TlsError::NoCertificate { path: path.to_owned() });
            }
            for c in certs {
                roots.add(c).map_err(|e| TlsError::BadPem {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An HTTP client builder whose TLS trusts `ca_file` (see [`client_config`]); callers add
/// their timeouts.
pub fn http_client(ca_file: Option<&Path>) -> Result<reqwest::ClientBuilder, TlsError> {
    install_default_provider();
    Ok(reqwest::Client::builder().tls_backend_preconfigured(client_config(ca_file)?))
}

/// Whether `host` (as written in a URL: a name, an address, or `[v6]`) is this machine.
fn is_loopback(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host of an `http(s)://` or `ws(s)://` URL.
fn host_of(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.starts_with('[') {
        return authority.split_once(']').map_or(authority, |(h, _)| h).trim_start_matches('[');
    }
    authority.split(':').next().unwrap_or("")
}

/// Checks a URL one service calls another at: `https://` (or `wss://`) always; `http://` (or
/// `ws://`) only to a loopback address and only when `plain_loopback` is set. The error says
/// which and how to allow it.
pub fn check_url(url: &str, plain_loopback: bool) -> Result<(), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url:?} is not a URL"))?;
    // No user info, and no backslash (which some parsers read as a path separator and others
    // not): the host checked here must be the host connected to.
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains(['@', '\\']) {
        return Err(format!("{url:?}: a service URL names a host and port only (no user info)"));
    }
    let host = host_of(rest);
    if host.is_empty() || url.contains(char::is_whitespace) {
        return Err(format!("{url:?} names no host"));
    }
    match scheme {
        "https" | "wss" => Ok(()),
        "http" | "ws" if plain_loopback && is_loopback(host) => Ok(()),
        "http" | "ws" if plain_loopback => Err(format!(
            "{url:?} is plain {scheme}:// to another host: use TLS (plain {scheme}:// is allowed \
             to a loopback address only)"
        )),
        "http" | "ws" => Err(format!(
            "{url:?} is plain {scheme}://: use TLS (plain {scheme}:// to a loopback address \
             needs plain_http_loopback = true)"
        )),
        other => Err(format!("{url:?}: unknown scheme {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback_and_only_when_allowed() {
        for ok in ["https://broker.internal:8443", "wss://node-1:8090", "https://[fd00::1]/x"] {
            check_url(ok, false).unwrap();
        }
        for local in [
            "http://127.0.0.1:8080",
            "ws://localhost:8090/",
            "http://[::1]:7070",
            "http://127.9.9.9",
        ] {
            assert!(check_url(local, false).is_err(), "{local} without the setting");
            check_url(local, true).unwrap();
        }
        for remote in [
            "http://10.0.0.5:7070",
            "ws://node-1:8090",
            "http://127.0.0.1.evil.example",
            "http://[fd00::1]:80",
        ] {
            let e = check_url(remote, true).unwrap_err();
            assert!(e.contains("another host"), "{remote}: {e}");
        }
        for bad in [
            "ftp://x",
            "127.0.0.1:80",
            "https://",
            "https://a b",
            "http://10.0.0.5\\@127.0.0.1/",
            "http://user@127.0.0.1/",
            "http://localhost@10.0.0.5/",
        ] {
            assert!(check_url(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ca_bundle_is_read_or_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("atrium-door-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        let good = dir.join("ca.crt");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        client_config(Some(&good)).unwrap();
        let empty = dir.join("empty.crt");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(e.contains("empty.crt"), "{e}");
        assert!(client_config(Some(&dir.join("missing.crt"))).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
