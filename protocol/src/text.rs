//! Text from outside (a guest, a directory, a request) made safe to log and store: no control
//! characters (a newline would forge a log line, NUL breaks PostgreSQL text), and a bounded
//! length.

/// `s` with every control character replaced by U+FFFD, cut to `max` characters.
pub fn printable(s: &str, max: usize) -> String {
    s.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c }).take(max).collect()
}

/// `s` as a URL query value: all but RFC 3986's unreserved characters percent-encoded.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_a_line() {
        let forged = "ok\n2026-12-01T00:00:00Z  INFO atrium_node: admin logged in\r\u{1b}[2J\0";
        let p = printable(forged, 1000);
        assert!(!p.chars().any(char::is_control), "{p:?}");
        assert!(p.starts_with("ok\u{fffd}2026"));
        assert_eq!(printable(&"é".repeat(10), 3), "ééé");
        assert_eq!(query_escape("a b/ü&=~"), "a%20b%2F%C3%BC%26%3D~");
        assert_eq!(query_escape("eyJ.ab-_c"), "eyJ.ab-_c", "a JWT passes unchanged");
    }
}
