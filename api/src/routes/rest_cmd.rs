//! Sending a [`RestCommand`] and mapping its refusals to the original's errors.

use axum::http::StatusCode;
use serde_json::Value;

use bai_events::rest::{RestCaller, RestCommand, RestOp, REST_ERROR_KEY};
use bai_events::Command;

use crate::auth::AuthUser;
use crate::commands::{self, ReqId};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub fn caller(user: &AuthUser) -> RestCaller {
    RestCaller {
        access_key: user.access_key.clone(),
        user_uuid: user.user_uuid,
        email: user.email.clone(),
        role: user.role.as_str().to_string(),
        domain_name: user.domain_name.clone(),
    }
}

pub fn dotfile_creation_failed() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "generic-bad-request",
        "Dotfile creation has failed.",
    )
}

pub fn dotfile_already_exists() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "generic-bad-request",
        "Dotfile already exists.",
    )
}

pub fn dotfile_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "generic-not-found",
        "Requested Dotfile not found.",
    )
}

pub fn task_template_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "task-template-not-found",
        "No such task template.",
    )
}

pub fn instance_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "instance-not-found",
        "No such instance.",
    )
}

/// Maps a worker refusal code (see `bai_workers::handlers::rest`) to the API error.
fn refusal(code: &str, msg: String) -> ApiError {
    let base = match code {
        "dotfile-creation-failed" => dotfile_creation_failed(),
        "dotfile-already-exists" => dotfile_already_exists(),
        "dotfile-not-found" => dotfile_not_found(),
        "template-not-found" => task_template_not_found(),
        "instance-not-found" => instance_not_found(),
        "invalid-api-params" => ApiError::invalid_api_params(),
        "not-found" | "owner-not-found" => ApiError::not_found(),
        _ => ApiError::bad_request(),
    };
    base.with_msg(msg)
}

/// Publishes the command, waits for the worker and returns its result. A command still
/// queued at the deadline answers 503: these operations must report their outcome.
pub async fn send(
    state: &AppState,
    req_id: &ReqId,
    user: &AuthUser,
    op: RestOp,
) -> ApiResult<Value> {
    let cmd = Command::Rest(Box::new(RestCommand {
        caller: caller(user),
        op,
    }));
    let Some(result) = commands::send(state, req_id, cmd).await? else {
        return Err(ApiError::service_unavailable()
            .with_msg("The operation is queued but did not finish in time."));
    };
    if let Some(err) = result.get(REST_ERROR_KEY) {
        let code = err.get("code").and_then(Value::as_str).unwrap_or_default();
        let msg = err
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        return Err(refusal(code, msg));
    }
    Ok(result)
}
