//! Text from outside (a guest, a directory, a request) made safe to log and store: no control
//! characters (a newline would forge a log line, NUL breaks PostgreSQL text), and a bounded
//! length.

/// `s` with every control character replaced by U+FFFD, cut to `max` characters.
pub fn printable(s: &str, max: usize) -> String {
    s.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c }).take(max).collect()
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
    }
}
