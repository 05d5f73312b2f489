//! `/logs/error` (api-rest.md §6.9, errata 2.6): client-reported error logs.
//!
//! Visibility: superadmins see every log, domain admins the logs of their domain's users
//! (both including cleared ones, with `is_cleared`), everyone else their own uncleared
//! logs. The original crashed (500) for domain admins and on clearing an unknown id; both
//! work here (the latter is a 404).

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use bai_events::rest::RestOp;

use crate::auth::{Auth, AuthUser, UserRole};
use crate::commands::ReqId;
use crate::error::{ApiError, ApiResult};
use crate::params::{de, Params};
use crate::routes::rest_cmd;
use crate::state::AppState;

/// Severities the API accepts. The schema's enum type (`errorlog_severity`) only has the
/// first three, so `info`/`debug` (accepted by the original's validator, then a database
/// error) are refused with a 400.
const SEVERITIES: &[&str] = &["critical", "error", "warning"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostParams {
    pub severity: String,
    pub source: String,
    pub message: String,
    pub context_lang: String,
    /// A JSON string (`tx.JSONString`).
    pub context_env: String,
    #[serde(default)]
    pub request_url: Option<String>,
    #[serde(default, deserialize_with = "de::opt_int")]
    pub request_status: Option<i64>,
    #[serde(default)]
    pub traceback: Option<String>,
}

pub async fn append(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Params(p): Params<PostParams>,
) -> ApiResult<Json<Value>> {
    let severity = p.severity.to_ascii_lowercase();
    if !SEVERITIES.contains(&severity.as_str()) {
        return Err(ApiError::invalid_api_params()
            .with_msg("Input validation error")
            .with_data(json!({ "severity": format!("value must be one of {SEVERITIES:?}") })));
    }
    let context_env: Value = serde_json::from_str(&p.context_env).map_err(|_| {
        ApiError::invalid_api_params()
            .with_msg("Input validation error")
            .with_data(json!({ "context_env": "value is not a valid JSON string" }))
    })?;
    let request_status = p
        .request_status
        .map(|s| {
            i32::try_from(s)
                .map_err(|_| ApiError::invalid_api_params().with_msg("request_status out of range"))
        })
        .transpose()?;
    let r = rest_cmd::send(
        &state,
        &req_id,
        &user,
        RestOp::PostErrorLog {
            id: Uuid::new_v4(),
            user: user.user_uuid,
            severity,
            source: p.source,
            message: p.message,
            context_lang: p.context_lang,
            context_env,
            request_url: p.request_url,
            request_status,
            traceback: p.traceback,
        },
    )
    .await?;
    Ok(Json(r))
}

fn default_page_size() -> i64 {
    20
}
fn default_page_no() -> i64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    #[serde(default, deserialize_with = "de::tobool")]
    pub mark_read: bool,
    #[serde(default = "default_page_size", deserialize_with = "de::int")]
    pub page_size: i64,
    #[serde(default = "default_page_no", deserialize_with = "de::int")]
    pub page_no: i64,
}

#[derive(sqlx::FromRow)]
struct LogRow {
    id: Uuid,
    created_at: Option<DateTime<Utc>>,
    severity: Option<String>,
    source: Option<String>,
    user: Option<Uuid>,
    is_read: Option<bool>,
    is_cleared: Option<bool>,
    message: Option<String>,
    context_lang: Option<String>,
    context_env: Option<Value>,
    request_url: Option<String>,
    request_status: Option<i32>,
    traceback: Option<String>,
}

/// The visibility condition (`$1` user uuid, `$2` domain) for a caller.
fn scope(user: &AuthUser) -> &'static str {
    match user.role {
        UserRole::Superadmin => "true",
        UserRole::Admin => "l.\"user\" IN (SELECT uuid FROM users WHERE domain_name = $2)",
        _ => "l.\"user\" = $1 AND NOT COALESCE(l.is_cleared, false)",
    }
}

pub async fn list(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<Value>> {
    if !(1..=100).contains(&p.page_size) {
        return Err(ApiError::invalid_api_params()
            .with_msg("Input validation error")
            .with_data(json!({ "page_size": "value should be between 1 and 100" })));
    }
    if p.page_no < 1 {
        return Err(ApiError::invalid_api_params()
            .with_msg("Input validation error")
            .with_data(json!({ "page_no": "value should be at least 1" })));
    }
    let cond = scope(&user);
    let mut txn = state.db.begin_readonly().await?;
    let rows: Vec<LogRow> = sqlx::query_as(&format!(
        "SELECT l.id, l.created_at, l.severity::text AS severity, l.source, l.\"user\", l.is_read, \
         l.is_cleared, l.message, l.context_lang, l.context_env, l.request_url, l.request_status, \
         l.traceback FROM error_logs l WHERE {cond} \
         ORDER BY l.created_at DESC, l.id LIMIT $3 OFFSET $4"
    ))
    .bind(user.user_uuid)
    .bind(&user.domain_name)
    .bind(p.page_size)
    .bind((p.page_no - 1).saturating_mul(p.page_size))
    .fetch_all(&mut *txn)
    .await?;
    let count: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM error_logs l WHERE {cond} AND $1::uuid IS NOT NULL AND $2::text IS NOT NULL"
    ))
    .bind(user.user_uuid)
    .bind(&user.domain_name)
    .fetch_one(&mut *txn)
    .await?;
    txn.commit().await?;
    let admin = matches!(user.role, UserRole::Superadmin | UserRole::Admin);
    let unread: Vec<Uuid> = rows
        .iter()
        .filter(|r| !r.is_read.unwrap_or(false))
        .map(|r| r.id)
        .collect();
    let logs: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let mut item = json!({
                "log_id": r.id.to_string(),
                "created_at": r.created_at.map(|t| t.timestamp_micros() as f64 / 1e6),
                "severity": r.severity,
                "source": r.source,
                "user": r.user.map(|u| u.to_string()),
                "is_read": r.is_read.unwrap_or(false),
                "message": r.message,
                "context_lang": r.context_lang,
                "context_env": r.context_env,
                "request_url": r.request_url,
                "request_status": r.request_status,
                "traceback": r.traceback,
            });
            if admin {
                item["is_cleared"] = json!(r.is_cleared.unwrap_or(false));
            }
            item
        })
        .collect();
    // Answered as read before the marking, like the original (it marks after listing).
    if p.mark_read && !unread.is_empty() {
        rest_cmd::send(
            &state,
            &req_id,
            &user,
            RestOp::MarkErrorLogsRead { ids: unread },
        )
        .await?;
    }
    Ok(Json(json!({ "logs": logs, "count": count })))
}

pub async fn clear(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Path(log_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let not_found = || ApiError::not_found().with_msg("No such error log.");
    let id = Uuid::parse_str(&log_id).map_err(|_| not_found())?;
    let cond = scope(&user);
    let mut txn = state.db.begin_readonly().await?;
    let visible: Option<Uuid> = sqlx::query_scalar(&format!(
        "SELECT l.id FROM error_logs l WHERE l.id = $3 AND {cond} \
         AND $1::uuid IS NOT NULL AND $2::text IS NOT NULL"
    ))
    .bind(user.user_uuid)
    .bind(&user.domain_name)
    .bind(id)
    .fetch_optional(&mut *txn)
    .await?;
    txn.commit().await?;
    if visible.is_none() {
        return Err(not_found());
    }
    let r = rest_cmd::send(&state, &req_id, &user, RestOp::ClearErrorLog { id }).await?;
    Ok(Json(r))
}
