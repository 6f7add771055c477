//! Reading the policy folder: the schema, every `*.cedar` file, each policy checked against
//! the schema (and its annotations), errors naming the file and line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;

use super::{Loaded, PolicyError, SCHEMA_FILE, capabilities};

/// `file:line:column` of a byte offset.
fn location(file: &Path, text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{}:{line}:{col}", file.display())
}

fn diagnostic_error(file: &Path, text: &str, d: &dyn Diagnostic, message: String) -> PolicyError {
    let offset = d.labels().and_then(|mut l| l.next()).map(|l| l.offset());
    let location = match offset {
        Some(o) => location(file, text, o),
        None => format!("{}", file.display()),
    };
    let help = d.help().map(|h| format!(" ({h})")).unwrap_or_default();
    PolicyError::Invalid { location, message: format!("{message}{help}") }
}

pub(super) fn load_dir(dir: &Path) -> Result<Loaded, PolicyError> {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PolicyError + '_ {
        move |source| PolicyError::Io { path: path.to_owned(), source }
    }
    let schema_path = dir.join(SCHEMA_FILE);
    let schema_text = std::fs::read_to_string(&schema_path).map_err(io(&schema_path))?;
    let (schema, warnings) = Schema::from_cedarschema_str(&schema_text).map_err(|e| {
        let msg = e.to_string();
        diagnostic_error(&schema_path, &schema_text, &e, msg)
    })?;
    for w in warnings {
        tracing::warn!(file = %schema_path.display(), warning = %w, "policy schema warning");
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(PolicyError::Invalid {
            location: dir.display().to_string(),
            message: "no *.cedar policy file: nobody could do anything".into(),
        });
    }
    let mut set = PolicySet::new();
    let mut sources: HashMap<String, (PathBuf, String)> = HashMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(io(file))?;
        let parsed = PolicySet::from_str(&text).map_err(|e| {
            let msg = e.to_string();
            diagnostic_error(file, &text, &e, msg)
        })?;
        let stem = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for (i, p) in parsed.policies().enumerate() {
            let id = match p.annotation("id") {
                Some(a) => format!("{stem}:{a}"),
                None => format!("{stem}:{i}"),
            };
            set.add(p.new_id(PolicyId::new(&id))).map_err(|e| PolicyError::Invalid {
                location: file.display().to_string(),
                message: e.to_string(),
            })?;
            sources.insert(id, (file.clone(), text.clone()));
        }
    }
    for p in set.policies() {
        if let Err(message) = capabilities::check_annotations(p) {
            let (file, _) = sources.get::<str>(p.id().as_ref()).cloned().unwrap_or_default();
            return Err(PolicyError::Invalid { location: file.display().to_string(), message });
        }
    }
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    if let Some(err) = result.validation_errors().next() {
        let key: &str = err.policy_id().as_ref();
        let (file, text) = sources.get(key).cloned().unwrap_or_default();
        return Err(diagnostic_error(&file, &text, err, err.to_string()));
    }
    Ok(Loaded { schema, set, files: files.len() })
}
