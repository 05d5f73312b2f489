//! `POST /manager/scheduler/operation` (api-rest.md §6.1) and the agent-watcher routes of
//! `/resource/watcher` (§6.2), which our agents do not have.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use bai_events::rest::RestOp;

use crate::auth::SuperAdmin;
use crate::commands::ReqId;
use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::routes::rest_cmd;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationParams {
    pub op: String,
    pub args: Value,
}

/// `include-agents` / `exclude-agents` with a list of agent ids → 204; an unknown agent
/// → 404 `instance-not-found` and nothing changes. Excluded agents keep their running
/// kernels but get no new ones (the scheduler only picks `schedulable` agents).
pub async fn operation(
    State(state): State<AppState>,
    SuperAdmin(user): SuperAdmin,
    req_id: ReqId,
    Params(p): Params<OperationParams>,
) -> ApiResult<StatusCode> {
    let schedulable = match p.op.as_str() {
        "include-agents" => true,
        "exclude-agents" => false,
        _ => return Err(ApiError::bad_request().with_msg("Unknown scheduler operation")),
    };
    let Value::Array(items) = p.args else {
        return Err(ApiError::invalid_api_params().with_msg("Invalid argument type."));
    };
    let agents = items
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(s),
            _ => Err(ApiError::invalid_api_params().with_msg("Invalid argument type.")),
        })
        .collect::<ApiResult<Vec<String>>>()?;
    rest_cmd::send(
        &state,
        &req_id,
        &user,
        RestOp::SetAgentsSchedulable {
            agents,
            schedulable,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /resource/watcher` and `POST /resource/watcher/agent/{start,stop,restart}`
/// (superadmin): our agents run no agent watcher, so this is the original's 503
/// `not-implemented` with a message saying why, never a 404 or a 500.
pub async fn watcher_not_supported(SuperAdmin(_user): SuperAdmin) -> ApiError {
    ApiError::not_implemented().with_msg(
        "The agent watcher is not supported by this agent (process agents have no watcher).",
    )
}
