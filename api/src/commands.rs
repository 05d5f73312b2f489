//! Sending commands to the worker fleet from handlers: the request id travels in the
//! envelope (log correlation across API and workers), and worker replies become
//! problem+json errors with the original's slugs and titles.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde_json::Value;
use tower_http::request_id::RequestId;
use uuid::Uuid;

use bai_events::{Command, CommandOutcome, CommandReply, Envelope};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Extractor: the request id set (or propagated from the client) by the request-id layer.
#[derive(Clone, Debug, Default)]
pub struct ReqId(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ReqId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let id = parts
            .extensions
            .get::<RequestId>()
            .and_then(|r| r.header_value().to_str().ok())
            .or_else(|| {
                parts
                    .headers
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
            })
            .map(str::to_string);
        Ok(ReqId(id))
    }
}

/// The original's error types a worker may answer with, and their fixed titles.
const KNOWN_ERRORS: &[(&str, &str)] = &[
    ("generic-bad-request", "Bad request."),
    ("generic-not-found", "Unknown URL path."),
    ("generic-forbidden", "Forbidden operation."),
    ("insufficient-privilege", "Insufficient privilege."),
    ("invalid-api-params", "Missing or invalid API parameters."),
    ("auth-failed", "Credential/signature mismatch."),
    ("internal-server-error", "Internal server error."),
    ("server-misconfigured", "Service misconfigured."),
    ("service-unavailable", "Serivce unavailable."),
    ("not-implemented", "This API query is not implemented."),
    (
        "server-frozen",
        "The server is frozen due to maintenance. Please try again later.",
    ),
    ("instance-not-found", "No such instance."),
    ("session-not-found", "No such session."),
    ("scaling-group-not-found", "No such scaling group."),
    (
        "session-already-exists",
        "The session already exists but you requested not to reuse existing one.",
    ),
    ("too-many-sessions-matched", "Too many sessions matched."),
    ("image-not-found", "No such environment image."),
    ("vfolder-not-found", "No such virtual folder."),
    (
        "vfolder-creation-failed",
        "Virtual folder creation has failed.",
    ),
    (
        "vfolder-already-exists",
        "The virtual folder already exists with the same name.",
    ),
    (
        "vfolder-operation-failed",
        "Virtual folder operation has failed.",
    ),
    ("group-not-found", "No such user group."),
    ("domain-not-found", "No such domain."),
    ("kernel-creation-failed", "Kernel creation has failed."),
    (
        "kernel-destruction-failed",
        "Kernel destruction has failed.",
    ),
    ("kernel-restart-failed", "Kernel restart has failed."),
    ("kernel-execution-failed", "Kernel execution has failed."),
];

/// Maps a worker's `Rejected` reply to an [`ApiError`].
pub fn rejected(http_status: u16, error_type: &str, title: &str, msg: Option<String>) -> ApiError {
    let status = StatusCode::from_u16(http_status).unwrap_or(StatusCode::BAD_REQUEST);
    let slug = error_type.rsplit('/').next().unwrap_or(error_type);
    let mut err = match KNOWN_ERRORS.iter().find(|(s, _)| *s == slug) {
        Some((s, t)) => ApiError::new(status, s, t),
        None if status.is_server_error() => ApiError::internal(),
        None => ApiError::new(status, "generic-bad-request", "Bad request."),
    };
    // An unknown slug keeps the worker's wording in `msg`, so nothing is lost.
    err.msg = msg.or_else(|| (!title.is_empty()).then(|| title.to_string()));
    err
}

/// Publishes `cmd` and waits (up to `manager.command-timeout-ms`) for the worker's reply.
/// `Ok(None)` means the command is stored but no worker answered in time: it will still
/// run, exactly once in effect.
pub async fn send(state: &AppState, req_id: &ReqId, cmd: Command) -> ApiResult<Option<Value>> {
    let deadline = Duration::from_millis(state.config.manager.command_timeout_ms);
    let outcome = state
        .bus
        .publish_command_with_id(Uuid::new_v4(), req_id.0.clone(), cmd, deadline)
        .await?;
    match outcome {
        CommandOutcome::Completed(CommandReply::Ok { result }) => Ok(Some(result)),
        CommandOutcome::Completed(CommandReply::Rejected {
            http_status,
            error_type,
            title,
            msg,
            data,
        }) => {
            let mut err = rejected(http_status, &error_type, &title, msg);
            err.data = data;
            Err(err)
        }
        CommandOutcome::Completed(CommandReply::Failed { error }) => {
            Err(ApiError::internal_from(error))
        }
        CommandOutcome::Accepted { command_id } => {
            tracing::warn!(%command_id, "no worker answered before the deadline; command stays queued");
            Ok(None)
        }
    }
}

/// Stores a command without waiting for its reply (fan-out such as force-kill).
pub async fn enqueue(state: &AppState, req_id: &ReqId, id: Uuid, cmd: Command) -> ApiResult<()> {
    let mut env = Envelope::new(id, state.bus.originator().to_string(), cmd);
    env.request_id = req_id.0.clone();
    state.bus.enqueue_command(&env).await?;
    Ok(())
}
