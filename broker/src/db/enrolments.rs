//! Node identities: one-time enrolment tokens (kept as their SHA-256 only) and the public key
//! each node enrolled with.

use serde::Serialize;
use utoipa::ToSchema;

use super::{Db, DbError, DbResult, col};

/// An enrolment token as an administrator sees it (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Enrolment {
    pub id: String,
    /// Only this node id may enrol with it (any when absent).
    pub node_id: Option<String>,
    /// The most the enrolled node is trusted with (what it reports at enrolment when absent).
    pub max_vcpus: Option<i64>,
    pub max_memory_mib: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    /// The node that enrolled with it.
    pub used_by: Option<String>,
}

/// What an administrator asks for; `token_hash` is the SHA-256 of the token handed out.
#[derive(Debug, Clone)]
pub struct NewEnrolment {
    pub id: String,
    pub token_hash: String,
    pub node_id: Option<String>,
    pub max_vcpus: Option<i64>,
    pub max_memory_mib: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// The key a node enrolled with and the capacity it is trusted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCredential {
    pub node_id: String,
    pub public_key: String,
    pub max_vcpus: i64,
    pub max_memory_mib: i64,
    pub enrolled_at: i64,
}

/// A node asking to enrol.
#[derive(Debug, Clone)]
pub struct EnrolAttempt<'a> {
    pub token_hash: &'a str,
    pub node_id: &'a str,
    pub public_key: &'a str,
    pub vcpus_total: i64,
    pub memory_mib_total: i64,
}

/// Why an enrolment was refused. The message is safe to answer the node with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrolRefusal {
    #[error("unknown enrolment token")]
    Unknown,
    #[error("the enrolment token has expired; ask an administrator for a new one")]
    Expired,
    #[error("the enrolment token was already used")]
    Used,
    #[error("the enrolment token is for node {0}")]
    OtherNode(String),
    #[error(
        "node id {0} is enrolled with another key; an administrator must revoke it before it can enrol again"
    )]
    Taken(String),
    #[error("the node reports more than its enrolment token allows ({0})")]
    TooMuch(String),
}

fn row_to_enrolment(r: &sqlx::any::AnyRow) -> DbResult<Enrolment> {
    Ok(Enrolment {
        id: col(r, "id")?,
        node_id: col(r, "node_id")?,
        max_vcpus: col(r, "max_vcpus")?,
        max_memory_mib: col(r, "max_memory_mib")?,
        created_by: col(r, "created_by")?,
        created_at: col(r, "created_at")?,
        expires_at: col(r, "expires_at")?,
        used_at: col(r, "used_at")?,
        used_by: col(r, "used_by")?,
    })
}

fn row_to_credential(r: &sqlx::any::AnyRow) -> DbResult<NodeCredential> {
    Ok(NodeCredential {
        node_id: col(r, "node_id")?,
        public_key: col(r, "public_key")?,
        max_vcpus: col(r, "max_vcpus")?,
        max_memory_mib: col(r, "max_memory_mib")?,
        enrolled_at: col(r, "enrolled_at")?,
    })
}

impl Db {
    pub async fn create_enrolment(&self, e: &NewEnrolment) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO node_enrolments (id, token_hash, node_id, max_vcpus, max_memory_mib, created_by, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&e.id)
        .bind(&e.token_hash)
        .bind(&e.node_id)
        .bind(e.max_vcpus)
        .bind(e.max_memory_mib)
        .bind(&e.created_by)
        .bind(e.created_at)
        .bind(e.expires_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every enrolment token, newest first.
    pub async fn list_enrolments(&self) -> DbResult<Vec<Enrolment>> {
        let rows = sqlx::query("SELECT * FROM node_enrolments ORDER BY created_at DESC, id")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(row_to_enrolment).collect()
    }

    /// Withdraws an enrolment token (used or not). `Ok(false)`: no such token.
    pub async fn delete_enrolment(&self, id: &str) -> DbResult<bool> {
        let r = sqlx::query("DELETE FROM node_enrolments WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Enrols a node: the token must exist, be unexpired and unused, and allow this node id;
    /// the id must not be bound to another key. Enrolling again with the same token, id and key
    /// (a node that crashed before it saw the answer) is accepted and changes nothing.
    pub async fn enrol_node(
        &self,
        a: &EnrolAttempt<'_>,
        now: i64,
    ) -> DbResult<Result<NodeCredential, EnrolRefusal>> {
        let mut tx = self.begin_write().await?;
        let sql =
            format!("SELECT * FROM node_enrolments WHERE token_hash = $1{}", self.for_update());
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(a.token_hash)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(Err(EnrolRefusal::Unknown));
        };
        let e = row_to_enrolment(&row)?;
        let existing = sqlx::query("SELECT * FROM node_credentials WHERE node_id = $1")
            .bind(a.node_id)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(row_to_credential)
            .transpose()?;
        if e.used_at.is_some() {
            let same = e.used_by.as_deref() == Some(a.node_id)
                && existing.as_ref().is_some_and(|c| c.public_key == a.public_key);
            return Ok(match (same, existing) {
                (true, Some(c)) => Ok(c),
                _ => Err(EnrolRefusal::Used),
            });
        }
        if now >= e.expires_at {
            return Ok(Err(EnrolRefusal::Expired));
        }
        if let Some(only) = &e.node_id
            && only != a.node_id
        {
            return Ok(Err(EnrolRefusal::OtherNode(only.clone())));
        }
        if existing.is_some() {
            return Ok(Err(EnrolRefusal::Taken(a.node_id.to_owned())));
        }
        let max_vcpus = match e.max_vcpus {
            Some(m) if a.vcpus_total > m => {
                return Ok(Err(EnrolRefusal::TooMuch(format!(
                    "{} vCPUs, {m} allowed",
                    a.vcpus_total
                ))));
            }
            Some(m) => m,
            None => a.vcpus_total,
        };
        let max_memory_mib = match e.max_memory_mib {
            Some(m) if a.memory_mib_total > m => {
                return Ok(Err(EnrolRefusal::TooMuch(format!(
                    "{} MiB, {m} allowed",
                    a.memory_mib_total
                ))));
            }
            Some(m) => m,
            None => a.memory_mib_total,
        };
        let cred = NodeCredential {
            node_id: a.node_id.to_owned(),
            public_key: a.public_key.to_owned(),
            max_vcpus,
            max_memory_mib,
            enrolled_at: now,
        };
        sqlx::query(
            "INSERT INTO node_credentials (node_id, public_key, max_vcpus, max_memory_mib, enrolment_id, enrolled_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&cred.node_id)
        .bind(&cred.public_key)
        .bind(cred.max_vcpus)
        .bind(cred.max_memory_mib)
        .bind(&e.id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE node_enrolments SET used_at = $2, used_by = $3 WHERE id = $1")
            .bind(&e.id)
            .bind(now)
            .bind(a.node_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(Ok(cred))
    }

    /// The key node `node_id` enrolled with, if it did and was not revoked since.
    pub async fn node_credential(&self, node_id: &str) -> DbResult<Option<NodeCredential>> {
        sqlx::query("SELECT * FROM node_credentials WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(row_to_credential)
            .transpose()
    }

    /// Spends request `jti` of node `node_id`, kept until `expires_at` (ms): `false` when it
    /// was already spent (the same request again). One statement, so replicas agree.
    pub async fn spend_node_request(
        &self,
        node_id: &str,
        jti: &str,
        expires_at: i64,
    ) -> DbResult<bool> {
        let r = sqlx::query(
            "INSERT INTO node_request_ids (node_id, jti, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (node_id, jti) DO NOTHING",
        )
        .bind(node_id)
        .bind(jti)
        .bind(expires_at)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Forgets spent request ids whose requests have expired; returns how many.
    pub async fn prune_node_requests(&self, now: i64) -> DbResult<u64> {
        let r = sqlx::query("DELETE FROM node_request_ids WHERE expires_at < $1")
            .bind(now)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected())
    }

    /// Revokes a node: its key opens nothing from now on, and the next reconcile pass finds it
    /// lost (its desktops fail over as for any lost node). `Ok(false)`: it had no credential.
    pub async fn revoke_node(&self, node_id: &str) -> DbResult<bool> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query("DELETE FROM node_credentials WHERE node_id = $1")
            .bind(node_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE nodes SET last_heartbeat_at = 0 WHERE id = $1")
            .bind(node_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }
}
