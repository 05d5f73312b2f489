//! `/manager`: manager status (freeze/unfreeze) and the announcement (api-rest.md §6.1),
//! and the frozen-state gate for read-write handlers (§1.7).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use bai_events::Command;

use crate::auth::SuperAdmin;
use crate::commands::{self, ReqId};
use crate::error::{ApiError, ApiResult};
use crate::params::{de, Params};
use crate::state::AppState;

pub const STATUS_KEY: &str = "manager/status";
pub const ANNOUNCEMENT_KEY: &str = "manager/announcement";

/// Main kernels in these statuses count as active sessions (AGENT_RESOURCE_OCCUPYING).
const ACTIVE_STATUSES: &str = "('SCHEDULED', 'PREPARING', 'BUILDING', 'PULLING', 'RUNNING', \
     'RESTARTING', 'RESIZING', 'SUSPENDED', 'TERMINATING', 'ERROR')";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagerStatus {
    Running,
    Frozen,
}

impl ManagerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Frozen => "frozen",
        }
    }
}

/// The manager status from etcd; a missing or unknown value means running.
pub async fn manager_status(state: &AppState) -> ApiResult<ManagerStatus> {
    let raw = state
        .etcd
        .get(STATUS_KEY)
        .await
        .map_err(ApiError::internal_from)?;
    Ok(match raw.as_deref().map(str::trim) {
        Some(s) if s.eq_ignore_ascii_case("frozen") => ManagerStatus::Frozen,
        _ => ManagerStatus::Running,
    })
}

/// The gate for RW handlers: 503 `server-frozen` while the manager is frozen. Read from
/// etcd on every call (no cache), so a freeze takes effect for the very next request.
pub async fn ensure_not_frozen(state: &AppState) -> ApiResult<()> {
    match manager_status(state).await? {
        ManagerStatus::Frozen => Err(ApiError::server_frozen()),
        ManagerStatus::Running => Ok(()),
    }
}

/// `GET /manager/status` (anonymous). The client sends `{"status": "running"}`; ignored.
pub async fn get_status(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let status = manager_status(&state).await?;
    let mut txn = state.db.begin_readonly().await?;
    let active: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM kernels WHERE cluster_role = 'main' AND status IN {ACTIVE_STATUSES}"
    ))
    .fetch_one(&mut *txn)
    .await?;
    txn.commit().await?;
    let m = &state.config.manager;
    Ok(Json(json!({
        "nodes": [{
            "id": m.id,
            "num_proc": 1,
            "service_addr": m.service_addr,
            "heartbeat_timeout": m.heartbeat_timeout,
            "ssl_enabled": false,
            "active_sessions": active,
            "status": status.as_str(),
        }],
        "status": status.as_str(),
        "active_sessions": active,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutStatus {
    pub status: String,
    #[serde(default, deserialize_with = "de::tobool")]
    pub force_kill: bool,
}

/// `PUT /manager/status` (superadmin) → 204. Accepts the client's lowercase values and
/// the original's enum names (its own validation broke on the former).
pub async fn put_status(
    State(state): State<AppState>,
    SuperAdmin(_admin): SuperAdmin,
    req_id: ReqId,
    Params(p): Params<PutStatus>,
) -> ApiResult<StatusCode> {
    let status = match p.status.to_ascii_lowercase().as_str() {
        "running" => ManagerStatus::Running,
        "frozen" => ManagerStatus::Frozen,
        other => {
            return Err(ApiError::invalid_api_params()
                .with_msg("Input validation error")
                .with_data(
                    json!({ "status": format!("{other:?} is not a valid manager status") }),
                ))
        }
    };
    commands::send(
        &state,
        &req_id,
        Command::SetManagerStatus {
            status: status.as_str().to_string(),
        },
    )
    .await?;
    if status == ManagerStatus::Frozen && p.force_kill {
        // Enumerated after the freeze committed: sessions enqueued later are refused by
        // the gate, so none can slip in between the listing and the freeze.
        let mut txn = state.db.begin_readonly().await?;
        let sessions: Vec<Uuid> = sqlx::query_scalar(
            "SELECT session_id FROM kernels WHERE cluster_role = 'main' \
             AND status NOT IN ('TERMINATING', 'TERMINATED', 'CANCELLED')",
        )
        .fetch_all(&mut *txn)
        .await?;
        txn.commit().await?;
        tracing::info!(
            count = sessions.len(),
            "freeze with force_kill: terminating live sessions"
        );
        for session_id in sessions {
            commands::enqueue(
                &state,
                &req_id,
                Uuid::new_v4(),
                Command::TerminateSession {
                    session_id,
                    reason: "force-terminated".into(),
                },
            )
            .await?;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /manager/announcement` (anonymous): always `{"enabled", "message"}` (the CLI
/// crashes without `enabled`).
pub async fn get_announcement(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let message = state
        .etcd
        .get(ANNOUNCEMENT_KEY)
        .await
        .map_err(ApiError::internal_from)?
        .unwrap_or_default();
    Ok(Json(
        json!({ "enabled": !message.is_empty(), "message": message }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostAnnouncement {
    #[serde(default, deserialize_with = "de::tobool")]
    pub enabled: bool,
    #[serde(default)]
    pub message: Option<String>,
}

/// `POST /manager/announcement` (superadmin) → 204.
pub async fn post_announcement(
    State(state): State<AppState>,
    SuperAdmin(_admin): SuperAdmin,
    req_id: ReqId,
    Params(p): Params<PostAnnouncement>,
) -> ApiResult<StatusCode> {
    let message = if p.enabled {
        match p.message.filter(|m| !m.is_empty()) {
            Some(m) => Some(m),
            None => {
                return Err(ApiError::invalid_api_params()
                    .with_msg("Empty message not allowed to enable announcement"))
            }
        }
    } else {
        None
    };
    commands::send(&state, &req_id, Command::SetAnnouncement { message }).await?;
    Ok(StatusCode::NO_CONTENT)
}
