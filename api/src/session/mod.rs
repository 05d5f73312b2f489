//! Helpers of the session endpoints (`/session`, `/stream/session`):
//!
//! * [`lookup`]: `{session_name}` resolution (session-id prefix, name, kernel-id prefix);
//! * [`create`]: validation of `POST /session` and construction of the [`SessionSpec`]
//!   the worker inserts (image resolution from etcd, resources, scaling group, owner);
//! * [`kernel`]: calling the main kernel's agent (execute, files, logs...) and mapping
//!   agent failures to the original's error types;
//! * [`access`]: the last-access timestamp the idle checker reads from Redis, and the
//!   execute counter (`kernels.num_queries`);
//! * [`cluster`]: `_/create-cluster` from stored cluster and task templates.
//!
//! [`SessionSpec`]: bai_events::session::SessionSpec

pub mod access;
pub mod cache;
pub mod cluster;
pub mod create;
pub mod kernel;
pub mod lookup;

use axum::http::StatusCode;

use crate::error::ApiError;

/// Session statuses in which a session no longer exists for the API (§2: invisible).
pub const DEAD_STATUSES: &[&str] = &["TERMINATED", "CANCELLED"];

pub fn session_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "session-not-found",
        "No such session.",
    )
}

pub fn too_many_sessions_matched() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "too-many-sessions-matched",
        "Too many sessions matched.",
    )
}

pub fn session_already_exists() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "session-already-exists",
        "The session already exists but you requested not to reuse existing one.",
    )
}

pub fn image_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "image-not-found",
        "No such environment image.",
    )
}

pub fn vfolder_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "vfolder-not-found",
        "No such virtual folder.",
    )
}

pub fn scaling_group_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "scaling-group-not-found",
        "No such scaling group.",
    )
}

pub fn kernel_execution_failed() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "kernel-execution-failed",
        "Kernel execution has failed.",
    )
}
