//! Authorization as Cedar policy, not code. `policies/` holds the schema and the policies; they
//! are validated against the schema at start-up (a bad file stops the broker, naming the file and
//! line) and reloaded on SIGHUP (a bad file is refused and the previous policies stay).

mod capabilities;
mod load;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema,
};
use thiserror::Error;

use load::load_dir;

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
