//! How every Atrium service reads its configuration: one TOML file (unknown keys refused),
//! every key overridable from the environment, errors that say where and never show a secret.
//!
//! The file becomes a TOML table; each `PREFIX...` variable is put into the table with the type
//! of that key's default: an integer, a boolean (`true`/`false`, `yes`/`no`, `1`/`0`), a list
//! (comma-separated), else a string. A key unset by default takes an integer or a boolean when
//! the value reads as one and the key accepts it, else the string; an empty value unsets it. The
//! table then becomes the service's configuration type, and the service checks the values. A
//! variable that names no key of the service is an error, so a typo never silently does nothing.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::secret::toml_error_message;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// How a service's variables name its keys.
#[derive(Debug, Clone, Copy)]
pub enum EnvKeys<'a> {
    /// `PREFIX<KEY>`: a file of top-level keys (the display proxy, the gateway).
    Flat,
    /// `PREFIX<SECTION>_<KEY>` for these sections (the broker). Variables naming no section of
    /// this service are left alone: other services share the prefix.
    Sections(&'a [&'a str]),
    /// `PREFIX<KEY>` for the keys of section `bare`, `PREFIX<SECTION>_<KEY>` for the others (the
    /// node agent). The prefix is the service's own: every such variable must name a key.
    Bare { bare: &'a str, sections: &'a [&'a str] },
}

/// A service's variables: their prefix and how they name keys.
#[derive(Debug, Clone, Copy)]
pub struct EnvSpec<'a> {
    pub prefix: &'a str,
    pub keys: EnvKeys<'a>,
}

/// Reads `path` (or nothing: the defaults), applies the variables of `env` that `spec` names,
/// and makes the configuration type. The caller then checks values.
pub fn load<T>(
    path: Option<&Path>,
    spec: EnvSpec<'_>,
    env: &[(String, String)],
) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
{
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|source| ConfigError::Read { path: p.to_owned(), source })?;
            from_text(p, &text, spec, env)
        }
        None => from_text(Path::new("(defaults)"), "", spec, env),
    }
}

/// [`load`] of a file's text; `origin` names it in errors.
pub fn from_text<T>(
    origin: &Path,
    text: &str,
    spec: EnvSpec<'_>,
    env: &[(String, String)],
) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_owned(),
        message: toml_error_message(&e, Some(text)),
    })?;
    let mut set = apply_env::<T>(&mut table, spec, env)?;
    loop {
        let e = match toml::Value::Table(table.clone()).try_into::<T>() {
            Ok(cfg) => return Ok(cfg),
            Err(e) => e,
        };
        let message = toml_error_message(&e, None);
        let Some(i) = set.iter().position(|s| names_key(&message, &s.key)) else {
            return Err(ConfigError::Parse { path: origin.to_owned(), message });
        };
        // A guessed integer or boolean the key does not take: it is the string after all.
        if set[i].guessed {
            let s = set.swap_remove(i);
            insert(&mut table, s.section.as_deref(), &s.leaf, toml::Value::String(s.raw));
            continue;
        }
        return Err(ConfigError::Env { var: set[i].var.clone(), message });
    }
}

/// Whether a TOML error message is about `key` (`leaf` or `section.leaf`): toml names the key
/// a value was refused for on the message's last line, as "in `key`".
fn names_key(message: &str, key: &str) -> bool {
    message
        .lines()
        .last()
        .and_then(|l| l.trim().strip_prefix("in `"))
        .and_then(|l| l.strip_suffix('`'))
        .is_some_and(|k| k == key)
}

/// A key a variable set.
#[derive(Debug)]
struct Set {
    /// `leaf` or `section.leaf`.
    key: String,
    section: Option<String>,
    leaf: String,
    var: String,
    raw: String,
    /// Its default is unset and the value was read as an integer or boolean.
    guessed: bool,
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

fn insert(table: &mut toml::Table, section: Option<&str>, leaf: &str, v: toml::Value) {
    let target = match section {
        None => table,
        Some(s) => match table
            .entry(s.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => t,
            // A section written as a value: the type refuses it, naming the file.
            _ => return,
        },
    };
    target.insert(leaf.to_owned(), v);
}

/// Puts `spec`'s variables into `table`; returns what each set.
fn apply_env<T: Serialize + Default>(
    table: &mut toml::Table,
    spec: EnvSpec<'_>,
    env: &[(String, String)],
) -> Result<Vec<Set>, ConfigError> {
    let defaults =
        serde_json::to_value(T::default()).expect("a configuration's defaults serialize");
    let mut set = Vec::new();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(spec.prefix) else { continue };
        let rest = rest.to_ascii_lowercase();
        let err = |message: String| ConfigError::Env { var: var.clone(), message };
        let in_section = |sections: &[&str]| {
            sections.iter().find_map(|s| {
                let leaf = rest.strip_prefix(&format!("{s}_"))?;
                defaults.get(*s)?.get(leaf).map(|_| ((*s).to_owned(), leaf.to_owned()))
            })
        };
        let (section, leaf) = match spec.keys {
            EnvKeys::Flat => (None, rest.clone()),
            EnvKeys::Sections(sections) => {
                let Some(s) = sections.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
                    continue;
                };
                (Some((*s).to_owned()), rest[s.len() + 1..].to_owned())
            }
            EnvKeys::Bare { bare, sections } => match in_section(sections) {
                Some((s, leaf)) => (Some(s), leaf),
                None => (Some(bare.to_owned()), rest.clone()),
            },
        };
        let scope = match &section {
            None => Some(&defaults),
            Some(s) => defaults.get(s),
        };
        let Some(default) = scope.and_then(|d| d.get(&leaf)) else {
            return Err(err(match (&section, spec.keys) {
                (None, _) | (Some(_), EnvKeys::Bare { .. }) => {
                    format!("`{}` is not a setting of this service", rest)
                }
                (Some(s), _) => format!("`{leaf}` is not a setting of [{s}]"),
            }));
        };
        let mut guessed = false;
        let parsed = match default {
            serde_json::Value::Number(_) => toml::Value::Integer(
                value.trim().parse().map_err(|_| err("must be an integer".into()))?,
            ),
            serde_json::Value::Bool(_) => toml::Value::Boolean(
                parse_bool(value).ok_or_else(|| err("must be true or false".into()))?,
            ),
            serde_json::Value::Array(_) => toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
            serde_json::Value::Null => {
                if value.trim().is_empty() {
                    // Unset again.
                    if let Some(t) = match &section {
                        None => Some(&mut *table),
                        Some(s) => table.get_mut(s).and_then(toml::Value::as_table_mut),
                    } {
                        t.remove(&leaf);
                    }
                    continue;
                }
                guessed = true;
                if let Ok(n) = value.trim().parse::<i64>() {
                    toml::Value::Integer(n)
                } else if let Some(b) = parse_bool(value) {
                    toml::Value::Boolean(b)
                } else {
                    guessed = false;
                    toml::Value::String(value.clone())
                }
            }
            _ => toml::Value::String(value.clone()),
        };
        if let Some(s) = &section
            && table.get(s).is_some_and(|v| !v.is_table())
        {
            return Err(err(format!("[{s}] is not a table in the file")));
        }
        insert(table, section.as_deref(), &leaf, parsed);
        let key = section.as_ref().map_or_else(|| leaf.clone(), |s| format!("{s}.{leaf}"));
        set.push(Set { key, section, leaf, var: var.clone(), raw: value.clone(), guessed });
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::secret::Secret;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Flat {
        port: u16,
        name: String,
        verbose: bool,
        peers: Vec<String>,
        cert: Option<PathBuf>,
        token: Secret,
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Sectioned {
        db: Flat,
        web: Flat,
    }

    const FLAT: EnvSpec<'static> = EnvSpec { prefix: "T_", keys: EnvKeys::Flat };
    const SECTIONS: EnvSpec<'static> =
        EnvSpec { prefix: "T_", keys: EnvKeys::Sections(&["db", "web"]) };

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    fn file(text: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("atrium-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!(
            "{:x}.toml",
            text.len() * 7919 + text.bytes().map(usize::from).sum::<usize>()
        ));
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn variables_take_the_type_of_the_default() {
        let (_d, p) = file("port = 1\nname = \"file\"\ncert = \"/from/file\"\n");
        let c: Flat = load(
            Some(&p),
            FLAT,
            &env(&[
                ("T_PORT", "8443"),
                ("T_VERBOSE", "true"),
                ("T_PEERS", "a, b,,c"),
                ("T_TOKEN", "s3cret"),
                ("T_CERT", ""),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!((c.port, c.name.as_str(), c.verbose), (8443, "file", true));
        assert_eq!(c.peers, ["a", "b", "c"]);
        assert_eq!(c.token.expose(), "s3cret");
        assert_eq!(c.cert, None, "an empty value unsets an optional key");
        let c: Flat = load(None, FLAT, &env(&[("T_CERT", "/x.pem")])).unwrap();
        assert_eq!(c.cert, Some(PathBuf::from("/x.pem")));
    }

    #[test]
    fn bad_variables_are_named() {
        let e = load::<Flat>(None, FLAT, &env(&[("T_PORTT", "1")])).unwrap_err();
        assert!(matches!(&e, ConfigError::Env { var, .. } if var == "T_PORTT"), "{e}");
        let e = load::<Flat>(None, FLAT, &env(&[("T_PORT", "many")])).unwrap_err();
        assert!(e.to_string().contains("T_PORT") && e.to_string().contains("integer"), "{e}");
        // Right kind, wrong range: the type says so, and the variable is named.
        let e = load::<Flat>(None, FLAT, &env(&[("T_PORT", "99999")])).unwrap_err();
        assert!(matches!(&e, ConfigError::Env { var, .. } if var == "T_PORT"), "{e}");
        let e = load::<Flat>(None, FLAT, &env(&[("T_VERBOSE", "maybe")])).unwrap_err();
        assert!(e.to_string().contains("true or false"), "{e}");
    }

    #[test]
    fn an_error_in_the_file_is_not_blamed_on_a_variable() {
        // An unknown key in the file; the message lists every key, `port` among them.
        let (_d, p) = file("porrt = 1\n");
        let e = load::<Flat>(Some(&p), FLAT, &env(&[("T_PORT", "80")])).unwrap_err();
        assert!(matches!(&e, ConfigError::Parse { .. }), "{e}");
    }

    #[test]
    fn sections_and_other_services_variables() {
        let c: Sectioned = load(
            None,
            SECTIONS,
            &env(&[("T_DB_PORT", "5432"), ("T_WEB_NAME", "w"), ("T_NODE_LISTEN", "ignored")]),
        )
        .unwrap();
        assert_eq!((c.db.port, c.web.name.as_str()), (5432, "w"));
        let e = load::<Sectioned>(None, SECTIONS, &env(&[("T_DB_NOPE", "1")])).unwrap_err();
        assert!(e.to_string().contains("`nope` is not a setting of [db]"), "{e}");
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Unset {
        count: Option<u32>,
        flag: Option<bool>,
        token: Option<Secret>,
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct WithBare {
        node: Unset,
        qemu: Flat,
    }

    #[test]
    fn keys_unset_by_default_take_what_they_accept() {
        let c: Unset =
            load(None, FLAT, &env(&[("T_COUNT", "8"), ("T_FLAG", "yes"), ("T_TOKEN", "12345678")]))
                .unwrap();
        assert_eq!((c.count, c.flag), (Some(8), Some(true)));
        // A secret of digits stays a string.
        assert_eq!(c.token.unwrap().expose(), "12345678");
        let e = load::<Unset>(None, FLAT, &env(&[("T_COUNT", "many")])).unwrap_err();
        assert!(matches!(&e, ConfigError::Env { var, .. } if var == "T_COUNT"), "{e}");
    }

    #[test]
    fn a_bare_section_and_the_others() {
        let spec =
            EnvSpec { prefix: "N_", keys: EnvKeys::Bare { bare: "node", sections: &["qemu"] } };
        let c: WithBare = load(
            None,
            spec,
            &env(&[("N_COUNT", "3"), ("N_QEMU_PORT", "9"), ("N_QEMU_VERBOSE", "1")]),
        )
        .unwrap();
        assert_eq!((c.node.count, c.qemu.port, c.qemu.verbose), (Some(3), 9, true));
        let e = load::<WithBare>(None, spec, &env(&[("N_QEMU_NOPE", "1")])).unwrap_err();
        assert!(matches!(&e, ConfigError::Env { var, .. } if var == "N_QEMU_NOPE"), "{e}");
    }

    #[test]
    fn file_errors_say_where_and_keep_secrets() {
        let (_d, p) = file("token = 98765432\n");
        let e = load::<Flat>(Some(&p), FLAT, &[]).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }));
        assert!(!e.to_string().contains("98765432"), "{e}");
        let (_d, p) = file("unknown = 1\n");
        assert!(load::<Flat>(Some(&p), FLAT, &[]).unwrap_err().to_string().contains("unknown"));
        let e = load::<Flat>(Some(Path::new("/nonexistent/x.toml")), FLAT, &[]).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }
}
