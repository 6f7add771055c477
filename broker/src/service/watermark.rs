//! Which viewers see a watermark (policy's action `watermark`) and its text: the broker's
//! `[watermark]` template filled in with who looks and from where. The display proxy adds the
//! time and draws it.

use atrium_protocol::ticket::{WATERMARK_MAX_CHARS, Watermark};

use crate::config::WatermarkSection;

/// Who a watermark names.
#[derive(Debug, Clone, Copy)]
pub struct Watched<'a> {
    pub username: &'a str,
    pub display_name: Option<&'a str>,
    /// The viewer's address as the broker saw it.
    pub client: &'a str,
    pub pool: &'a str,
}

/// The watermark of `who`'s desktop, and when an administrator shadows it, a line naming them.
pub fn render(cfg: &WatermarkSection, who: Watched<'_>, watcher: Option<&str>) -> Watermark {
    // Values come from the directory, the provider and the network: one line each, printable,
    // bounded, and never mistaken for a placeholder.
    let value = |v: &str| -> String {
        v.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .filter(|c| *c != '{' && *c != '}')
            .take(64)
            .collect()
    };
    let name = value(who.display_name.unwrap_or(who.username));
    let mut text = String::new();
    let mut rest = cfg.template.as_str();
    while let Some(at) = rest.find('{') {
        text.push_str(&rest[..at]);
        let tail = &rest[at..];
        let (put, len) = match tail {
            t if t.starts_with("{user}") => (value(who.username), 6),
            t if t.starts_with("{name}") => (name.clone(), 6),
            t if t.starts_with("{client}") => (value(who.client), 8),
            t if t.starts_with("{pool}") => (value(who.pool), 6),
            // `{time}` (the proxy's), and anything else validation let through, stay as written.
            _ => ("{".to_owned(), 1),
        };
        text.push_str(&put);
        rest = &tail[len..];
    }
    text.push_str(rest);
    if let Some(admin) = watcher {
        text.push_str("\nwatched by ");
        text.push_str(&value(admin));
    }
    // Within the ticket's bound, whatever the values' length (lines kept, the longest cut).
    while text.chars().count() > WATERMARK_MAX_CHARS {
        let longest = text.split('\n').map(|l| l.chars().count()).max().unwrap_or(0);
        text = text
            .split('\n')
            .map(|l| {
                if l.chars().count() == longest {
                    l.chars().take(longest - 1).collect()
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<String>>()
            .join("\n");
    }
    Watermark { text, opacity: cfg.opacity, size: cfg.size, angle: cfg.angle }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Watched<'static> {
        Watched {
            username: "alice",
            display_name: Some("Alice Andersen"),
            client: "10.0.0.5",
            pool: "finance",
        }
    }

    #[test]
    fn the_template_names_the_user_their_address_and_pool() {
        let cfg = WatermarkSection {
            template: "{name} ({user})\n{client} · {pool}\n{time}".into(),
            ..WatermarkSection::default()
        };
        let w = render(&cfg, alice(), None);
        assert_eq!(w.text, "Alice Andersen (alice)\n10.0.0.5 · finance\n{time}");
        assert_eq!((w.opacity, w.size, w.angle), (15, 20, 30));
        assert_eq!(w.validate(), Ok(()));
        let w = render(&cfg, alice(), Some("carol"));
        assert!(w.text.ends_with("\n{time}\nwatched by carol"), "{}", w.text);
        assert_eq!(w.validate(), Ok(()));
        let plain = render(&WatermarkSection::default(), alice(), None);
        assert_eq!(plain.text, "alice · 10.0.0.5\n{time}");
    }

    #[test]
    fn hostile_values_stay_one_bounded_printable_line() {
        let cfg = WatermarkSection {
            template: "{name}\n{user}\n{pool}".into(),
            ..WatermarkSection::default()
        };
        let long = "A".repeat(500);
        let who = Watched {
            username: "eve\n{client}\u{1b}[2J",
            display_name: Some(&long),
            client: "10.0.0.6",
            pool: "p{time}",
        };
        let w = render(&cfg, who, Some("mallory\nwatched by nobody"));
        assert_eq!(w.validate(), Ok(()), "{}", w.text);
        let lines: Vec<&str> = w.text.split('\n').collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[1], "eve client [2J");
        assert_eq!(lines[2], "ptime");
        assert_eq!(lines[3], "watched by mallory watched by nobody");
        assert!(lines[0].len() <= 64);
    }
}
