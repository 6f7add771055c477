//! Which viewers see a watermark (policy's action `watermark`) and its text: the broker's
//! `[watermark]` template filled in with who looks and from where. The display proxy adds the
//! time and draws it.

use atrium_protocol::ticket::{
    WATERMARK_MAX_CHARS, WATERMARK_MAX_LINE_CHARS, WATERMARK_TIME, Watermark,
};

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
    // user, name, client, pool: shortened (the longest first) until the text is within the
    // ticket's bounds; the template's own text and `{time}` are never cut.
    let mut values = [
        value(who.username),
        value(who.display_name.unwrap_or(who.username)),
        value(who.client),
        value(who.pool),
    ];
    let watcher = watcher.map(|a| format!("watched by {}", value(a)));
    let text = loop {
        let text = fill(&cfg.template, &values, watcher.as_deref());
        let fits = text.chars().count() <= WATERMARK_MAX_CHARS
            && text.split('\n').all(|l| l.chars().count() <= WATERMARK_MAX_LINE_CHARS);
        let longest = values.iter_mut().max_by_key(|v| v.chars().count());
        match longest {
            Some(v) if !fits && !v.is_empty() => {
                v.pop();
            }
            _ => break text,
        }
    };
    let w = Watermark {
        text,
        opacity: cfg.opacity,
        size: cfg.size,
        angle: cfg.angle,
        spacing: cfg.spacing,
    };
    if w.validate().is_ok() {
        return w;
    }
    // Values that leave nothing to show (a display name of spaces): the username and the time.
    let user = if values[0].trim().is_empty() { "?".to_owned() } else { values[0].clone() };
    let mut text = format!("{user}\n{WATERMARK_TIME}");
    if let Some(line) = watcher {
        text.push('\n');
        text.push_str(&line);
    }
    Watermark { text, ..w }
}

/// The template with `values` (user, name, client, pool) in its placeholders, and the
/// watcher's line after it.
fn fill(template: &str, values: &[String; 4], watcher: Option<&str>) -> String {
    let mut text = String::new();
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        text.push_str(&rest[..at]);
        let tail = &rest[at..];
        let (put, len) = match tail {
            t if t.starts_with("{user}") => (values[0].as_str(), 6),
            t if t.starts_with("{name}") => (values[1].as_str(), 6),
            t if t.starts_with("{client}") => (values[2].as_str(), 8),
            t if t.starts_with("{pool}") => (values[3].as_str(), 6),
            // `{time}` (the proxy's), and anything else validation let through, stay as written.
            _ => ("{", 1),
        };
        text.push_str(put);
        rest = &tail[len..];
    }
    text.push_str(rest);
    if let Some(line) = watcher {
        text.push('\n');
        text.push_str(line);
    }
    text
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
            spacing: 6,
            ..WatermarkSection::default()
        };
        let w = render(&cfg, alice(), None);
        assert_eq!(w.text, "Alice Andersen (alice)\n10.0.0.5 · finance\n{time}");
        assert_eq!((w.opacity, w.size, w.angle, w.spacing), (15, 20, 30, 6));
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

    #[test]
    fn long_values_are_cut_and_the_time_never_is() {
        let cfg = WatermarkSection {
            template: "{name} <{user}> {client} {pool} {time}".into(),
            ..WatermarkSection::default()
        };
        let long = "N".repeat(64);
        let who = Watched {
            username: &long,
            display_name: Some(&long),
            client: "2001:db8:1234:5678:9abc:def0:1234:5678",
            pool: &long,
        };
        let w = render(&cfg, who, Some(&long));
        assert_eq!(w.validate(), Ok(()), "{}", w.text);
        assert!(w.text.split('\n').next().unwrap().ends_with(" {time}"), "{}", w.text);
        // Nothing but braces and spaces: the username and the time.
        let cfg = WatermarkSection { template: "{name}".into(), ..WatermarkSection::default() };
        let who = Watched { username: "bob", display_name: Some("{} "), client: "", pool: "p" };
        assert_eq!(render(&cfg, who, None).text, "bob\n{time}");
    }
}
