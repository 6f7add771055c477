//! MFA secrets encrypted at rest: AES-256-GCM with a key kept outside the database (a file
//! beside the signing keys, shared by the replicas the same way), each secret bound to its
//! user (the user's id is the associated data), so a sealed secret copied to another user's row
//! does not open.

use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The sealing key.
pub struct Vault {
    key: LessSafeKey,
    path: PathBuf,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Vault {
    /// Reads the key (32 bytes, base64url, first line) from `path`, creating it (mode 0600)
    /// when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
                let text = B64.encode(k);
                match write_private(path, &text) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "generated the MFA key");
                        text
                    }
                    // Another replica made it first: its key is the one.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        std::fs::read_to_string(path)
                            .map_err(|e| format!("{}: {e}", path.display()))?
                    }
                    Err(e) => return Err(format!("{}: {e}", path.display())),
                }
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let raw = B64
            .decode(text.lines().next().unwrap_or("").trim())
            .map_err(|_| format!("{}: not a base64url key", path.display()))?;
        let unbound = UnboundKey::new(&AES_256_GCM, &raw)
            .map_err(|_| format!("{}: the key must be 32 bytes", path.display()))?;
        Ok(Self { key: LessSafeKey::new(unbound), path: path.to_owned() })
    }

    /// `plain` sealed for `owner`: base64url of nonce, ciphertext and tag.
    pub fn seal(&self, owner: &str, plain: &[u8]) -> String {
        let mut n = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut n);
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(n),
                Aad::from(owner.as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM seals any length that fits in memory");
        let mut out = n.to_vec();
        out.extend_from_slice(&buf);
        B64.encode(out)
    }

    /// What `seal` sealed for `owner`; `None` for anything else (another key, another owner,
    /// a changed byte).
    pub fn open(&self, owner: &str, sealed: &str) -> Option<Vec<u8>> {
        let raw = B64.decode(sealed).ok()?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (n, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).ok()?;
        let mut buf = rest.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(owner.as_bytes()), &mut buf).ok()?;
        Some(plain.to_vec())
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Written whole to a file of its own, then linked into place: two replicas starting at
    // once do not both put a key there (the second link fails), and nobody reads half a key.
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    let written =
        f.write_all(text.as_bytes()).and_then(|()| f.write_all(b"\n")).and_then(|()| f.sync_all());
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    linked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_open_only_for_their_owner_under_their_key() {
        let dir = std::env::temp_dir().join(format!("atrium-vault-{}", uuid::Uuid::new_v4()));
        let path = dir.join("mfa.key");
        let v = Vault::load_or_create(&path).unwrap();
        let sealed = v.seal("user-1", b"secret bytes");
        assert_eq!(v.open("user-1", &sealed).as_deref(), Some(&b"secret bytes"[..]));
        assert_eq!(v.open("user-2", &sealed), None, "bound to its owner");
        let mut raw = B64.decode(&sealed).unwrap();
        raw[NONCE_LEN] ^= 1;
        assert_eq!(v.open("user-1", &B64.encode(raw)), None, "a changed byte");
        assert_eq!(v.open("user-1", "!!"), None);
        assert_eq!(v.open("user-1", ""), None);
        // The same file gives the same key; another file another.
        let again = Vault::load_or_create(&path).unwrap();
        assert!(again.open("user-1", &sealed).is_some());
        let other = Vault::load_or_create(&dir.join("other.key")).unwrap();
        assert_eq!(other.open("user-1", &sealed), None);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(dir.join("bad.key"), "short").unwrap();
        assert!(Vault::load_or_create(&dir.join("bad.key")).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
