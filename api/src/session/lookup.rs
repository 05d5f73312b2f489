//! Resolution of the `{session_name}` path parameter (api-rest.md §2): a session-id
//! prefix, else a session-name prefix, else a kernel-id prefix — the first non-empty match
//! set wins, newest first, at most 10 — restricted to the owner's access key; dead
//! (TERMINATED / CANCELLED) sessions are invisible unless `allow_stale`.
//!
//! One refinement over the original: inside a match set an *exact* match (the full
//! session id, or the exact name) wins over longer names sharing the prefix, so `abc1`
//! stays reachable while `abc10` exists (the original answered "too many sessions
//! matched" there).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use bai_core::Txn;

use super::{session_not_found, too_many_sessions_matched};
use crate::error::ApiResult;

/// Matches considered per lookup, as in the original.
const MAX_MATCHES: i64 = 10;

/// A session as the endpoints see it: its main kernel's row.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SessionRow {
    pub session_id: Uuid,
    /// The main kernel (== session id in sessions this manager creates).
    pub kernel_id: Uuid,
    pub name: Option<String>,
    pub status: String,
    pub created_at: Option<DateTime<Utc>>,
    pub agent: Option<String>,
    pub access_key: Option<String>,
    pub image: Option<String>,
    pub service_ports: Option<Value>,
    pub session_type: String,
}

const COLUMNS: &str = "k.session_id, k.id AS kernel_id, k.session_name AS name, k.status::text AS status, \
     k.created_at, k.agent, k.access_key, k.image, k.service_ports, k.session_type::text AS session_type";

/// Escapes `%`, `_` and `\` for a `LIKE` pattern (PostgreSQL's default escape is `\`).
pub fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

async fn match_set(
    txn: &mut Txn,
    cond: &str,
    pattern: &str,
    access_key: &str,
    allow_stale: bool,
) -> ApiResult<Vec<SessionRow>> {
    let stale = if allow_stale {
        ""
    } else {
        "AND k.status NOT IN ('TERMINATED', 'CANCELLED')"
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM kernels k WHERE k.cluster_role = 'main' AND k.access_key = $2 {stale} \
         AND ({cond}) ORDER BY k.created_at DESC LIMIT {MAX_MATCHES}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(pattern)
        .bind(access_key)
        .fetch_all(&mut **txn)
        .await?)
}

/// Finds the one session `key` designates for `access_key`.
pub async fn find_session(
    txn: &mut Txn,
    key: &str,
    access_key: &str,
    allow_stale: bool,
) -> ApiResult<SessionRow> {
    let pick =
        |rows: Vec<SessionRow>, exact: &dyn Fn(&SessionRow) -> bool| -> ApiResult<SessionRow> {
            if let Some(row) = rows.iter().find(|r| exact(r)) {
                return Ok(row.clone());
            }
            if rows.len() == 1 {
                if let Some(row) = rows.first() {
                    return Ok(row.clone());
                }
            }
            Err(too_many_sessions_matched().with_data(json!({
                "matches": rows.iter().map(|r| json!({
                    "id": r.session_id,
                    "name": r.name,
                    "status": r.status,
                    "created_at": r.created_at.map(|t| t.to_rfc3339()),
                })).collect::<Vec<_>>(),
            })))
        };
    if key.is_empty() {
        return Err(session_not_found());
    }
    let id_pattern = format!("{}%", like_escape(&key.to_ascii_lowercase()));
    let rows = match_set(
        txn,
        "k.session_id::text LIKE $1",
        &id_pattern,
        access_key,
        allow_stale,
    )
    .await?;
    if !rows.is_empty() {
        let full = Uuid::parse_str(key).ok();
        return pick(rows, &|r| Some(r.session_id) == full);
    }
    let name_pattern = format!("{}%", like_escape(key));
    let rows = match_set(
        txn,
        "k.session_name LIKE $1",
        &name_pattern,
        access_key,
        allow_stale,
    )
    .await?;
    if !rows.is_empty() {
        return pick(rows, &|r| r.name.as_deref() == Some(key));
    }
    let rows = match_set(
        txn,
        "k.session_id IN (SELECT s.session_id FROM kernels s WHERE s.id::text LIKE $1)",
        &id_pattern,
        access_key,
        allow_stale,
    )
    .await?;
    if !rows.is_empty() {
        return pick(rows, &|_| false);
    }
    Err(session_not_found())
}

/// The match set `key` designates for `access_key` (`GET /session/_/match`): the first
/// non-empty set of live sessions by session-id prefix, name prefix, kernel-id prefix
/// (newest first, at most 10) — the candidates [`find_session`] chooses from.
pub async fn match_sessions(
    txn: &mut Txn,
    key: &str,
    access_key: &str,
) -> ApiResult<Vec<SessionRow>> {
    if key.is_empty() {
        return Ok(Vec::new());
    }
    let id_pattern = format!("{}%", like_escape(&key.to_ascii_lowercase()));
    let name_pattern = format!("{}%", like_escape(key));
    for (cond, pattern) in [
        ("k.session_id::text LIKE $1", &id_pattern),
        ("k.session_name LIKE $1", &name_pattern),
        (
            "k.session_id IN (SELECT s.session_id FROM kernels s WHERE s.id::text LIKE $1)",
            &id_pattern,
        ),
    ] {
        let rows = match_set(txn, cond, pattern, access_key, false).await?;
        if !rows.is_empty() {
            return Ok(rows);
        }
    }
    Ok(Vec::new())
}

/// The live session of `access_key` with exactly this name, if any.
pub async fn find_by_exact_name(
    txn: &mut Txn,
    name: &str,
    access_key: &str,
) -> ApiResult<Option<SessionRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM kernels k WHERE k.cluster_role = 'main' AND k.access_key = $2 \
         AND k.status NOT IN ('TERMINATED', 'CANCELLED') AND k.session_name = $1 \
         ORDER BY k.created_at DESC LIMIT 1"
    );
    Ok(sqlx::query_as(&sql)
        .bind(name)
        .bind(access_key)
        .fetch_optional(&mut **txn)
        .await?)
}

/// The main kernel's row of a session by id (whatever its status).
pub async fn by_id(txn: &mut Txn, session_id: Uuid) -> ApiResult<Option<SessionRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM kernels k WHERE k.session_id = $1 AND k.cluster_role = 'main' LIMIT 1"
    );
    Ok(sqlx::query_as(&sql)
        .bind(session_id)
        .fetch_optional(&mut **txn)
        .await?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_like_wildcards() {
        assert_eq!(super::like_escape("a_b%c\\d"), "a\\_b\\%c\\\\d");
    }
}
