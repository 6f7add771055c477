//! Authorization as Cedar policy, not code. `policies/` holds the schema and the policies; they
//! are validated against the schema at start-up (a bad file stops the broker, naming the file and
//! line) and reloaded on SIGHUP (a bad file is refused and the previous policies stay).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use atrium_protocol::ticket::Capabilities;
use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use thiserror::Error;

pub const SCHEMA_FILE: &str = "schema.cedarschema";

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{location}: {message}")]
    Invalid { location: String, message: String },
}

/// The actions of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Connect,
    ClipboardCopyOut,
    ClipboardPasteIn,
    FileUpload,
    FileDownload,
    Shadow,
    Administer,
    /// The desktop's sound reaches the viewer.
    Audio,
    /// Permitted: the second factor is required (at sign-in on the broker, or to connect to a
    /// pool).
    RequireMfa,
    /// Permitted: the desktop's frames carry a watermark naming the user.
    Watermark,
    /// Permitted: the user's viewer stream is recorded.
    Record,
    /// Permitted (with `record`): the user's keys and pointer are recorded too.
    RecordInput,
    /// List and play session recordings.
    ReviewRecordings,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::ClipboardCopyOut => "clipboard_copy_out",
            Self::ClipboardPasteIn => "clipboard_paste_in",
            Self::FileUpload => "file_upload",
            Self::FileDownload => "file_download",
            Self::Shadow => "shadow",
            Self::Administer => "administer",
            Self::Audio => "audio",
            Self::RequireMfa => "require_mfa",
            Self::Watermark => "watermark",
            Self::Record => "record",
            Self::RecordInput => "record_input",
            Self::ReviewRecordings => "review_recordings",
        }
    }
}

/// Who asks.
#[derive(Debug, Clone)]
pub struct Principal<'a> {
    pub username: &'a str,
    pub groups: &'a [String],
}

/// What is asked about.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    Pool { name: &'a str, kind: &'a str, image: &'a str },
    Broker,
}

/// Where and when.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext {
    pub client_ip: IpAddr,
    /// Unix time in seconds.
    pub now_secs: i64,
}

/// The annotation on a permit of `file_upload` or `file_download` that limits a file's size,
/// in MiB.
const MAX_FILE_MB: &str = "max_file_mb";
/// Largest `@max_file_mb`: 1 TiB.
const MAX_FILE_MB_LIMIT: u64 = 1 << 20;
/// The annotation on a permit of `file_upload` or `file_download` that turns scanning off
/// (`@scan("off")`).
const SCAN: &str = "scan";
/// The annotation on a permit of `clipboard_copy_out` or `clipboard_paste_in` that limits the
/// clipboard text crossing, in bytes.
const MAX_BYTES: &str = "max_bytes";
/// Largest `@max_bytes`: the protocol's clipboard limit.
const MAX_BYTES_LIMIT: u64 = atrium_protocol::agent::MAX_CLIPBOARD as u64;

/// The smallest number annotated `key` on any of the permits (checked at load).
fn smallest(permits: &[Vec<(String, String)>], key: &str) -> Option<u64> {
    permits
        .iter()
        .filter_map(|a| a.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.parse::<u64>().ok()))
        .min()
}

struct Loaded {
    schema: Schema,
    set: PolicySet,
    files: usize,
}

/// The loaded policies.
pub struct Policies {
    dir: PathBuf,
    utc_offset_secs: i64,
    loaded: RwLock<Arc<Loaded>>,
    authorizer: Authorizer,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Policies {
    pub fn load(dir: &Path, utc_offset: &str) -> Result<Self, PolicyError> {
        let utc_offset_secs = parse_utc_offset(utc_offset).map_err(|message| {
            PolicyError::Invalid { location: "policies.utc_offset".into(), message }
        })?;
        let loaded = load_dir(dir)?;
        tracing::info!(dir = %dir.display(), files = loaded.files, policies = loaded.set.policies().count(), "policies loaded");
        Ok(Self {
            dir: dir.to_owned(),
            utc_offset_secs,
            loaded: RwLock::new(Arc::new(loaded)),
            authorizer: Authorizer::new(),
        })
    }

    /// Reloads from the folder; on error the previous policies stay in force.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let loaded = load_dir(&self.dir)?;
        tracing::info!(
            files = loaded.files,
            policies = loaded.set.policies().count(),
            "policies reloaded"
        );
        *self.loaded.write().expect("policy lock") = Arc::new(loaded);
        Ok(())
    }

    /// Whether policy permits `action`. Any evaluation problem is a denial.
    pub fn is_allowed(
        &self,
        who: &Principal<'_>,
        action: Action,
        what: Resource<'_>,
        ctx: &RequestContext,
    ) -> bool {
        self.permits(who, action, what, ctx).is_some()
    }

    /// When policy permits `action`: the annotations of the permits that decided it, each
    /// as `(key, value)` pairs. `None`: denied (any evaluation problem is a denial).
    fn permits(
        &self,
        who: &Principal<'_>,
        action: Action,
        what: Resource<'_>,
        ctx: &RequestContext,
    ) -> Option<Vec<Vec<(String, String)>>> {
        let loaded = self.loaded.read().expect("policy lock").clone();
        match self.decide(&loaded, who, action, what, ctx) {
            Ok(Some(ids)) => Some(
                ids.iter()
                    .filter_map(|id| loaded.set.policy(id))
                    .map(|p| p.annotations().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
                    .collect(),
            ),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, action = action.name(), "policy evaluation failed; denying");
                None
            }
        }
    }

    /// Uploads' (or downloads') rules from the permits that allow them: the smallest
    /// `@max_file_mb` of them (none: no limit but the desktop's disk), and `@scan("off")` only
    /// when every one says so (scanning is the default).
    fn file_rules(permits: &[Vec<(String, String)>]) -> (u64, bool) {
        let scan = permits.iter().any(|a| a.iter().all(|(k, v)| k != SCAN || v != "off"));
        (smallest(permits, MAX_FILE_MB).map_or(0, |mb| mb << 20), scan)
    }

    /// The session capabilities policy grants `who` on a pool.
    pub fn capabilities(
        &self,
        who: &Principal<'_>,
        pool: Resource<'_>,
        ctx: &RequestContext,
    ) -> Capabilities {
        let uploads = self.permits(who, Action::FileUpload, pool, ctx);
        let (upload_max_bytes, scan_files) = uploads.as_deref().map_or((0, true), Self::file_rules);
        let downloads = self.permits(who, Action::FileDownload, pool, ctx);
        let (download_max_bytes, scan_downloads) =
            downloads.as_deref().map_or((0, true), Self::file_rules);
        let copy_out = self.permits(who, Action::ClipboardCopyOut, pool, ctx);
        let paste_in = self.permits(who, Action::ClipboardPasteIn, pool, ctx);
        let bytes = |p: &Option<Vec<Vec<(String, String)>>>| {
            p.as_deref()
                .and_then(|p| smallest(p, MAX_BYTES))
                .map_or(0, |b| u32::try_from(b).expect("checked at load: at most MAX_BYTES_LIMIT"))
        };
        Capabilities {
            view_only: false,
            clipboard_copy_out: copy_out.is_some(),
            clipboard_paste_in: paste_in.is_some(),
            clipboard_out_max_bytes: bytes(&copy_out),
            clipboard_in_max_bytes: bytes(&paste_in),
            file_upload: uploads.is_some(),
            file_download: downloads.is_some(),
            shadow: false,
            audio: self.is_allowed(who, Action::Audio, pool, ctx),
            upload_max_bytes,
            scan_files,
            download_max_bytes,
            scan_downloads,
        }
    }

    fn decide(
        &self,
        loaded: &Loaded,
        who: &Principal<'_>,
        action: Action,
        what: Resource<'_>,
        ctx: &RequestContext,
    ) -> Result<Option<Vec<PolicyId>>, String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let group_uids: HashSet<EntityUid> =
            who.groups.iter().map(|g| uid("Group", g)).collect::<Result<_, _>>()?;
        let user_uid = uid("User", who.username)?;
        let user = Entity::new(
            user_uid.clone(),
            HashMap::from([(
                "username".to_owned(),
                RestrictedExpression::new_string(who.username.to_owned()),
            )]),
            group_uids.clone(),
        )
        .map_err(|x| e(&x))?;
        let mut entities: Vec<Entity> =
            group_uids.iter().map(|g| Entity::new_no_attrs(g.clone(), HashSet::new())).collect();
        entities.push(user);
        let resource_uid = match what {
            Resource::Pool { name, kind, image } => {
                let u = uid("Pool", name)?;
                entities.push(
                    Entity::new(
                        u.clone(),
                        HashMap::from([
                            ("name".to_owned(), RestrictedExpression::new_string(name.to_owned())),
                            ("kind".to_owned(), RestrictedExpression::new_string(kind.to_owned())),
                            (
                                "image".to_owned(),
                                RestrictedExpression::new_string(image.to_owned()),
                            ),
                        ]),
                        HashSet::new(),
                    )
                    .map_err(|x| e(&x))?,
                );
                u
            }
            Resource::Broker => {
                let u = uid("Broker", "atrium")?;
                entities.push(Entity::new_no_attrs(u.clone(), HashSet::new()));
                u
            }
        };
        let entities =
            Entities::from_entities(entities, Some(&loaded.schema)).map_err(|x| e(&x))?;
        let local = ctx.now_secs + self.utc_offset_secs;
        let days = local.div_euclid(86_400);
        // 1970-01-01 was a Thursday (weekday 4).
        let weekday = (days + 3).rem_euclid(7) + 1;
        let hour = local.rem_euclid(86_400) / 3600;
        let action_uid = uid("Action", action.name())?;
        let context = Context::from_pairs([
            ("client_ip".to_owned(), RestrictedExpression::new_ip(ctx.client_ip.to_string())),
            ("hour".to_owned(), RestrictedExpression::new_long(hour)),
            ("weekday".to_owned(), RestrictedExpression::new_long(weekday)),
        ])
        .map_err(|x| e(&x))?;
        let request =
            Request::new(user_uid, action_uid, resource_uid, context, Some(&loaded.schema))
                .map_err(|x| e(&x))?;
        let response = self.authorizer.is_authorized(&request, &loaded.set, &entities);
        Ok((response.decision() == Decision::Allow)
            .then(|| response.diagnostics().reason().cloned().collect()))
    }
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    let ty = EntityTypeName::from_str(&format!("Atrium::{ty}")).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

/// `+HH:MM` or `-HH:MM` to seconds.
pub fn parse_utc_offset(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not an offset like +01:00");
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let h: i64 = h.parse().map_err(|_| bad())?;
    let m: i64 = m.parse().map_err(|_| bad())?;
    if h > 14 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

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

fn load_dir(dir: &Path) -> Result<Loaded, PolicyError> {
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
        let bad = |message: String| {
            let (file, _) = sources.get::<str>(p.id().as_ref()).cloned().unwrap_or_default();
            PolicyError::Invalid { location: file.display().to_string(), message }
        };
        if let Some(v) = p.annotation(MAX_FILE_MB)
            && !v.parse::<u64>().is_ok_and(|mb| (1..=MAX_FILE_MB_LIMIT).contains(&mb))
        {
            return Err(bad(format!(
                "policy {}: @{MAX_FILE_MB}({v:?}) is not a number of MiB from 1 to \
                 {MAX_FILE_MB_LIMIT}",
                p.id()
            )));
        }
        if let Some(v) = p.annotation(MAX_BYTES)
            && !v.parse::<u64>().is_ok_and(|b| (1..=MAX_BYTES_LIMIT).contains(&b))
        {
            return Err(bad(format!(
                "policy {}: @{MAX_BYTES}({v:?}) is not a number of bytes from 1 to \
                 {MAX_BYTES_LIMIT}",
                p.id()
            )));
        }
        if let Some(v) = p.annotation(SCAN)
            && v != "on"
            && v != "off"
        {
            return Err(bad(format!(
                "policy {}: @{SCAN}({v:?}) is neither \"on\" nor \"off\"",
                p.id()
            )));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policies_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
    }

    fn temp_with(extra: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("atrium-pol-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(policies_dir().join(SCHEMA_FILE), dir.join(SCHEMA_FILE)).unwrap();
        for (name, text) in extra {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    fn ctx(ip: &str, now_secs: i64) -> RequestContext {
        RequestContext { client_ip: ip.parse().unwrap(), now_secs }
    }

    const POOL: Resource<'static> =
        Resource::Pool { name: "finance", kind: "floating", image: "console" };
    // 2026-11-26 is a Thursday; 10:00 UTC.
    const THU_10: i64 = 1_795_687_200;

    #[test]
    fn default_policies_load_and_decide() {
        let p = Policies::load(&policies_dir(), "+00:00").unwrap();
        let users = vec!["atrium-users".to_owned()];
        let admins = vec!["atrium-admins".to_owned()];
        let alice = Principal { username: "alice", groups: &users };
        let root = Principal { username: "root", groups: &admins };
        let c = ctx("127.0.0.1", THU_10);
        assert!(p.is_allowed(&alice, Action::Connect, POOL, &c));
        assert!(!p.is_allowed(&alice, Action::Administer, Resource::Broker, &c));
        assert!(p.is_allowed(&root, Action::Administer, Resource::Broker, &c));
        assert!(!p.is_allowed(&root, Action::Connect, POOL, &c));
        let caps = p.capabilities(&alice, POOL, &c);
        assert!(caps.clipboard_copy_out && caps.clipboard_paste_in && !caps.file_upload);
        let nobody = Principal { username: "eve", groups: &[] };
        assert!(!p.is_allowed(&nobody, Action::Connect, POOL, &c));
    }

    #[test]
    fn address_and_time_are_policy() {
        let example =
            std::fs::read_to_string(policies_dir().join("examples.cedar.example")).unwrap();
        let default = std::fs::read_to_string(policies_dir().join("default.cedar")).unwrap();
        let dir = temp_with(&[("default.cedar", &default), ("examples.cedar", &example)]);
        let p = Policies::load(&dir, "+00:00").unwrap();
        let users = vec!["atrium-users".to_owned()];
        let alice = Principal { username: "alice", groups: &users };
        assert!(p.is_allowed(&alice, Action::Connect, POOL, &ctx("10.1.2.3", THU_10)));
        assert!(!p.is_allowed(&alice, Action::Connect, POOL, &ctx("192.168.1.2", THU_10)));
        assert!(!p.is_allowed(&alice, Action::Connect, POOL, &ctx("10.1.2.3", THU_10 + 10 * 3600)));
        assert!(
            !p.is_allowed(&alice, Action::Connect, POOL, &ctx("10.1.2.3", THU_10 + 2 * 86_400)),
            "Saturday"
        );
        let other = Resource::Pool { name: "general", kind: "floating", image: "console" };
        assert!(p.is_allowed(&alice, Action::Connect, other, &ctx("192.168.1.2", THU_10)));
        // The offset moves the clock policies see: 10:00 UTC is 19:00 at +09:00.
        let tokyo = Policies::load(&dir, "+09:00").unwrap();
        assert!(!tokyo.is_allowed(&alice, Action::Connect, POOL, &ctx("10.1.2.3", THU_10)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn upload_rules_come_from_the_permits_that_allow_uploads() {
        let limited = "@id(\"staff\") @max_file_mb(\"500\") permit(principal in \
                       Atrium::Group::\"staff\", action == Atrium::Action::\"file_upload\", resource);\n\
                       @id(\"temps\") @max_file_mb(\"20\") @scan(\"off\") permit(principal in \
                       Atrium::Group::\"temps\", action == Atrium::Action::\"file_upload\", resource);\n\
                       @id(\"out\") @max_file_mb(\"7\") @scan(\"off\") permit(principal in \
                       Atrium::Group::\"temps\", action == Atrium::Action::\"file_download\", resource);\n";
        let dir = temp_with(&[("up.cedar", limited)]);
        let p = Policies::load(&dir, "+00:00").unwrap();
        let c = ctx("127.0.0.1", THU_10);
        let caps = |groups: &[&str]| {
            let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
            p.capabilities(&Principal { username: "u", groups: &groups }, POOL, &c)
        };
        let staff = caps(&["staff"]);
        assert!(staff.file_upload && staff.scan_files);
        assert_eq!(staff.upload_max_bytes, 500 << 20);
        let temp = caps(&["temps"]);
        assert!(temp.file_upload && !temp.scan_files, "scanning off where the permit says so");
        assert!(temp.file_download && !temp.scan_downloads && temp.download_max_bytes == 7 << 20);
        assert!(!staff.file_download && staff.scan_downloads, "downloads have rules of their own");
        // Both apply: the smaller limit, and scanning unless every permit turns it off.
        let both = caps(&["staff", "temps"]);
        assert_eq!(both.upload_max_bytes, 20 << 20);
        assert!(both.scan_files);
        assert!(!caps(&["others"]).file_upload);
        for bad in [
            "@max_file_mb(\"0\")",
            "@max_file_mb(\"lots\")",
            "@scan(\"maybe\")",
            "@max_bytes(\"262145\")",
        ] {
            let text = format!("{bad} permit(principal, action, resource);\n");
            std::fs::write(dir.join("up.cedar"), text).unwrap();
            let e = Policies::load(&dir, "+00:00").expect_err(bad).to_string();
            assert!(
                e.contains("up.cedar")
                    && e.contains(bad.trim_start_matches('@').split('(').next().unwrap()),
                "{e}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn clipboard_limits_come_from_the_permits_that_allow_it() {
        let text = "@id(\"short\") @max_bytes(\"1024\") permit(principal in \
                    Atrium::Group::\"temps\", action == Atrium::Action::\"clipboard_copy_out\", resource);\n";
        let dir = temp_with(&[
            (
                "default.cedar",
                &std::fs::read_to_string(policies_dir().join("default.cedar")).unwrap(),
            ),
            ("clip.cedar", text),
        ]);
        let p = Policies::load(&dir, "+00:00").unwrap();
        let c = ctx("127.0.0.1", THU_10);
        let groups = vec!["atrium-users".to_owned()];
        let user = p.capabilities(&Principal { username: "u", groups: &groups }, POOL, &c);
        assert!(user.clipboard_copy_out && user.clipboard_paste_in);
        assert_eq!((user.clipboard_out_max_bytes, user.clipboard_in_max_bytes), (0, 0));
        let groups = vec!["atrium-users".to_owned(), "temps".to_owned()];
        let temp = p.capabilities(&Principal { username: "t", groups: &groups }, POOL, &c);
        assert_eq!(temp.clipboard_out_max_bytes, 1024, "the smaller limit of the two permits");
        assert_eq!(temp.clipboard_in_max_bytes, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_file_is_named_with_its_line() {
        let dir = temp_with(&[
            ("ok.cedar", "permit(principal, action, resource);\n"),
            ("bad.cedar", "\n\npermit(principal, action, resource) when { context.nope == 1 };\n"),
        ]);
        let e = Policies::load(&dir, "+00:00").expect_err("must fail").to_string();
        assert!(e.contains("bad.cedar:3:"), "{e}");
        std::fs::write(dir.join("bad.cedar"), "permit(principal,\n action resource);").unwrap();
        let e = Policies::load(&dir, "+00:00").expect_err("must fail").to_string();
        assert!(e.contains("bad.cedar:2:"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reload_keeps_old_policies_on_error() {
        let default = std::fs::read_to_string(policies_dir().join("default.cedar")).unwrap();
        let dir = temp_with(&[("default.cedar", &default)]);
        let p = Policies::load(&dir, "+00:00").unwrap();
        std::fs::write(dir.join("default.cedar"), "garbage").unwrap();
        assert!(p.reload().is_err());
        let users = vec!["atrium-users".to_owned()];
        assert!(p.is_allowed(
            &Principal { username: "a", groups: &users },
            Action::Connect,
            POOL,
            &ctx("127.0.0.1", THU_10)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_utc_offset("+01:30"), Ok(5400));
        assert_eq!(parse_utc_offset("-05:00"), Ok(-18000));
        assert!(parse_utc_offset("01:00").is_err());
        assert!(parse_utc_offset("+25:00").is_err());
    }
}
