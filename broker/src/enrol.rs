//! Node identities. An administrator creates a one-time, expiring enrolment token (the portal,
//! the API or `atrium-broker enrol-token`); a node enrols with it once and binds its id to its
//! own Ed25519 public key, whose private half never leaves the node. Every heartbeat is then a
//! request signed with that key ([`atrium_protocol::signed`]), checked here: the one place the
//! broker decides which node is speaking.

use atrium_protocol::node::{Capacity, EnrolReply, EnrolRequest, validate_name};
use atrium_protocol::signed::{self, BROKER_AUDIENCE};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::db::enrolments::{EnrolAttempt, NewEnrolment, NodeCredential};
use crate::db::{Db, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// How long an enrolment token lasts when the administrator does not say.
pub const DEFAULT_VALID_FOR_SECS: u64 = 3600;
/// The longest an enrolment token may last.
pub const MAX_VALID_FOR_SECS: u64 = 7 * 24 * 3600;
/// Most vCPUs a node may claim (a large two-socket host has a few hundred).
pub const MAX_NODE_VCPUS: i64 = 4096;
/// Most memory a node may claim: 64 TiB.
pub const MAX_NODE_MEMORY_MIB: i64 = 64 * 1024 * 1024;
/// Enrolment tokens start with this, so one found in a log or a chat is recognised.
const TOKEN_PREFIX: &str = "atrium-enrol-";

/// An enrolment token as created: the token itself is shown once and never stored.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CreatedEnrolment {
    pub id: String,
    pub token: String,
    pub node_id: Option<String>,
    pub expires_at: i64,
}

/// What an administrator asks for.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentInput {
    /// Only this node id may enrol with the token.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Seconds the token stays valid (default an hour, at most a week).
    #[serde(default)]
    pub valid_for_secs: Option<u64>,
    /// The most vCPUs and memory the node is trusted with; what it reports when it enrols when
    /// absent.
    #[serde(default)]
    pub max_vcpus: Option<i64>,
    #[serde(default)]
    pub max_memory_mib: Option<i64>,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Validation { field: field.into(), message: message.into() }
}

/// SHA-256 of an enrolment token, hex: what the database keeps.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates an enrolment token for `created_by` (an administrator, or `cli` for the command).
pub async fn create(
    db: &Db,
    created_by: &str,
    input: &EnrolmentInput,
) -> ApiResult<CreatedEnrolment> {
    if let Some(n) = &input.node_id {
        validate_name("node_id", n, 128)?;
    }
    let valid_for = input.valid_for_secs.unwrap_or(DEFAULT_VALID_FOR_SECS);
    if !(60..=MAX_VALID_FOR_SECS).contains(&valid_for) {
        return Err(invalid("valid_for_secs", format!("between 60 and {MAX_VALID_FOR_SECS}")));
    }
    if input.max_vcpus.is_some_and(|v| !(1..=MAX_NODE_VCPUS).contains(&v)) {
        return Err(invalid("max_vcpus", format!("between 1 and {MAX_NODE_VCPUS}")));
    }
    if input.max_memory_mib.is_some_and(|v| !(256..=MAX_NODE_MEMORY_MIB).contains(&v)) {
        return Err(invalid("max_memory_mib", format!("between 256 and {MAX_NODE_MEMORY_MIB}")));
    }
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
    let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
    let now = now_ms();
    let expires_at = now + i64::try_from(valid_for).unwrap_or(i64::MAX / 2) * 1000;
    let id = uuid::Uuid::new_v4().simple().to_string();
    db.create_enrolment(&NewEnrolment {
        id: id.clone(),
        token_hash: token_hash(&token),
        node_id: input.node_id.clone(),
        max_vcpus: input.max_vcpus,
        max_memory_mib: input.max_memory_mib,
        created_by: created_by.to_owned(),
        created_at: now,
        expires_at,
    })
    .await?;
    Ok(CreatedEnrolment { id, token, node_id: input.node_id.clone(), expires_at })
}

/// `atrium-broker enrol-token`: creates a token straight in the configured database (a first
/// node needs no administrator signed in), audited as made by `cli`.
pub async fn create_from_cli(
    cfg: &crate::config::Config,
    input: &EnrolmentInput,
) -> Result<CreatedEnrolment, String> {
    let db = Db::connect_with(
        &cfg.database_url(),
        1,
        std::time::Duration::from_secs(cfg.database.acquire_timeout_secs),
    )
    .await
    .map_err(|e| format!("database: {e}"))?;
    let created = create(&db, "cli", input).await.map_err(|e| e.to_string())?;
    let details =
        serde_json::json!({ "node_id": created.node_id, "expires_at": created.expires_at });
    let event = crate::db::AuditEvent::now(
        "cli",
        "node.enrolment_create",
        &created.id,
        "success",
        String::new(),
        &details,
    );
    db.insert_audit(db.pool(), &event).await.map_err(|e| format!("audit: {e}"))?;
    Ok(created)
}

/// Enrols a node. Refusals are 401 (the token), 403 (another node's token) or 409 (the id is
/// bound to another key), each with a message the node logs.
pub async fn enrol(st: &AppState, req: &EnrolRequest) -> ApiResult<EnrolReply> {
    validate_name("node_id", &req.node_id, 128)?;
    signed::node_public_key(&req.public_key)
        .map_err(|_| invalid("public_key", "not an Ed25519 public key (32 bytes, base64url)"))?;
    if req.token.len() > 256 || !req.token.starts_with(TOKEN_PREFIX) {
        return Err(ApiError::Forbidden("unknown enrolment token".into()));
    }
    let vcpus = i64::from(req.vcpus_total);
    let memory = i64::try_from(req.memory_mib_total).unwrap_or(i64::MAX);
    if !(1..=MAX_NODE_VCPUS).contains(&vcpus) {
        return Err(invalid("vcpus_total", format!("between 1 and {MAX_NODE_VCPUS}")));
    }
    if !(256..=MAX_NODE_MEMORY_MIB).contains(&memory) {
        return Err(invalid("memory_mib_total", format!("between 256 and {MAX_NODE_MEMORY_MIB}")));
    }
    let hash = token_hash(&req.token);
    let attempt = EnrolAttempt {
        token_hash: &hash,
        node_id: &req.node_id,
        public_key: &req.public_key,
        vcpus_total: vcpus,
        memory_mib_total: memory,
    };
    use crate::db::enrolments::EnrolRefusal as R;
    match st.db.enrol_node(&attempt, now_ms()).await? {
        Ok(c) => Ok(EnrolReply {
            node_id: c.node_id,
            max_vcpus: u32::try_from(c.max_vcpus).unwrap_or(u32::MAX),
            max_memory_mib: u64::try_from(c.max_memory_mib).unwrap_or(0),
        }),
        Err(r @ (R::Unknown | R::Expired | R::Used)) => Err(ApiError::Forbidden(r.to_string())),
        Err(r @ R::OtherNode(_)) => Err(ApiError::Forbidden(r.to_string())),
        Err(r @ R::Taken(_)) => Err(ApiError::Conflict(r.to_string())),
        Err(r @ R::TooMuch(_)) => Err(invalid("capacity", r.to_string())),
    }
}

/// Which node signed this request: the signature must verify under the key the node named in
/// `sub` enrolled with, and bind this method and path ([`signed::verify_head`]; the caller then
/// checks the body with [`signed::RequestClaims::check_body`], once it has read it, so nobody
/// without a valid signature makes the broker read a body). A node never enrolled (or revoked)
/// gets a 401 that says so, so that it knows to enrol.
pub async fn verify_node_request(
    st: &AppState,
    authorization: Option<&str>,
    method: &str,
    path_and_query: &str,
) -> ApiResult<(NodeCredential, signed::RequestClaims)> {
    let token = signed::bearer(authorization).map_err(|_| ApiError::Unauthorized)?;
    let who = signed::peek(token).map_err(|_| ApiError::Unauthorized)?;
    if validate_name("sub", &who.sub, 128).is_err() {
        return Err(ApiError::Unauthorized);
    }
    let Some(cred) = st.db.node_credential(&who.sub).await? else {
        return Err(ApiError::NotEnrolled(who.sub));
    };
    let key = signed::node_public_key(&cred.public_key)
        .map_err(|e| ApiError::internal("a stored node key", e))?;
    let now = signed::now_secs();
    let claims = signed::verify_head(
        token,
        &key,
        BROKER_AUDIENCE,
        method,
        path_and_query,
        now,
        signed::CLOCK_LEEWAY_SECS,
    )
    .map_err(|e| {
        tracing::info!(node = %who.sub, reason = %e, "signed node request refused");
        ApiError::Unauthorized
    })?;
    // Spent once: the same request again (captured on the wire and replayed) is refused. Its id
    // is kept until no replica could accept the request any more (its expiry, the clock leeway,
    // and a minute more for replicas' clocks apart).
    let keep_until = claims.exp.saturating_add(signed::CLOCK_LEEWAY_SECS + 60).saturating_mul(1000);
    let keep_until = i64::try_from(keep_until).unwrap_or(i64::MAX);
    if !st.db.spend_node_request(&cred.node_id, &claims.jti, keep_until).await? {
        tracing::info!(node = %who.sub, "a node request already used was refused (a replay)");
        return Err(ApiError::Conflict("this signed request was already used".into()));
    }
    Ok((cred, claims))
}

/// Caps what a node reports at what it enrolled with: placement never believes a node (whose
/// key may have been stolen) has more vCPUs or memory than it had then. Returns whether
/// anything was cut.
pub fn cap_capacity(c: &mut Capacity, cred: &NodeCredential) -> bool {
    let max_vcpus = u32::try_from(cred.max_vcpus).unwrap_or(0);
    let max_memory = u64::try_from(cred.max_memory_mib).unwrap_or(0);
    let over = c.vcpus_total > max_vcpus || c.memory_mib_total > max_memory;
    c.vcpus_total = c.vcpus_total.min(max_vcpus);
    c.memory_mib_total = c.memory_mib_total.min(max_memory);
    over
}

#[cfg(test)]
mod tests {
    use atrium_protocol::node::{KvmKind, RuntimeKind};

    use super::*;

    #[test]
    fn capacity_beyond_enrolment_is_not_believed() {
        let cred = NodeCredential {
            node_id: "n".into(),
            public_key: String::new(),
            max_vcpus: 8,
            max_memory_mib: 16384,
            enrolled_at: 0,
        };
        let mut c = Capacity {
            vcpus_total: 4096,
            vcpus_allocated: 0,
            memory_mib_total: 1 << 40,
            memory_mib_allocated: 0,
            memory_mib_used: 0,
            memory_mib_physical: 0,
            vms: 0,
            kvm: KvmKind::Pvm,
            default_runtime: RuntimeKind::Qemu,
            images: vec![],
            image_fetches: Vec::new(),
        };
        assert!(cap_capacity(&mut c, &cred));
        assert_eq!((c.vcpus_total, c.memory_mib_total), (8, 16384));
        assert!(!cap_capacity(&mut c, &cred));
    }

    #[test]
    fn tokens_are_stored_as_their_hash() {
        let h = token_hash("atrium-enrol-x");
        assert_eq!(h.len(), 64);
        assert!(!h.contains("enrol"));
        assert_ne!(h, token_hash("atrium-enrol-y"));
    }
}
