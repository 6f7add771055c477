//! Secrets (passwords, tokens) in a type that never prints its value, and a comparison that
//! takes the same time wherever two byte strings differ. Every service uses them for its
//! credentials (LDAP password, node token), and shows configuration errors without the
//! secrets in them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Words in a key, a section or a message that mark a value as possibly secret.
const SECRET_HINTS: [&str; 3] = ["password", "token", "database"];

/// A TOML error as the operator sees it: where (line and column when the text is known), and
/// what, without the offending line and without the value itself when the key may hold a
/// secret (a password, a token, a database URL with credentials): error output ends up in
/// journals. `text` is the file's text when the error came from parsing it.
pub fn toml_error_message(e: &toml::de::Error, text: Option<&str>) -> String {
    let secretish = |s: &str| SECRET_HINTS.iter().any(|k| s.to_lowercase().contains(k));
    // With the text, where is worked out below and the message alone is kept (toml's own
    // rendering quotes the offending line); without it (a typed value), toml's rendering
    // names the key on a second line.
    let mut message = if text.is_some() {
        e.message().trim().to_owned()
    } else {
        e.to_string().trim().to_owned()
    };
    let mut at = String::new();
    // Which key it is about: "in `ldap.bind_password`" on a later line (the first line may
    // list every field name, password ones included).
    let mut secret = message.lines().skip(1).any(secretish);
    if let (Some(text), Some(span)) = (text, e.span()) {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        at = format!("line {line}, column {column}: ");
        let key = text.lines().nth(line - 1).and_then(|l| l.split('=').next()).unwrap_or("");
        let section = before.lines().rev().find(|l| l.trim_start().starts_with('[')).unwrap_or("");
        secret |= secretish(key) || secretish(section);
    }
    if secret {
        message = hide_quoted_values(&message);
    }
    format!("{at}{message}")
}

/// The message with what its first line quotes in backticks (the value) replaced; later
/// lines (`in `ldap.bind_password``) say where and stay.
fn hide_quoted_values(message: &str) -> String {
    let (first, rest) = message.split_once('\n').unwrap_or((message, ""));
    let mut out = String::new();
    for (i, part) in first.split('`').enumerate() {
        out.push_str(if i % 2 == 1 { "(value not shown)" } else { part });
    }
    if !rest.is_empty() {
        out.push('\n');
        out.push_str(rest);
    }
    out
}

/// A secret string. `Debug` and `Display` print `[redacted]`; the value is reached only through
/// [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret value. Call sites are easy to audit: grep for `expose`.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[redacted]\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
