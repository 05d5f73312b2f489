//! The proxy's error type: every failure leaves as problem+json `{type,title,msg}` with a
//! 4xx status for the caller's mistakes and 5xx only for our own.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::proto::{problem, Problem};

#[derive(Debug, thiserror::Error)]
#[error("{title}: {msg}")]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub title: &'static str,
    pub msg: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        msg: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            title,
            msg: msg.into(),
        }
    }
    pub fn invalid_path(msg: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            problem::INVALID_PATH,
            "Invalid path",
            msg,
        )
    }
    pub fn invalid_params(msg: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            problem::INVALID_PARAMS,
            "Invalid API parameters",
            msg,
        )
    }
    pub fn file_not_found(msg: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            problem::FILE_NOT_FOUND,
            "File not found",
            msg,
        )
    }
    pub fn no_such_volume(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            problem::NO_SUCH_VOLUME,
            "No such volume",
            format!("volume {name:?} is not served by this proxy"),
        )
    }
    pub fn vfolder_not_found(msg: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            problem::VFOLDER_NOT_FOUND,
            "Virtual folder not found",
            msg,
        )
    }
    pub fn already_exists(msg: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            problem::ALREADY_EXISTS,
            "Already exists",
            msg,
        )
    }
    pub fn quota_exceeded(msg: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            problem::QUOTA_EXCEEDED,
            "Quota exceeded",
            msg,
        )
    }
    pub fn unauthorized(msg: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            problem::UNAUTHORIZED,
            "Unauthorized",
            msg,
        )
    }
    pub fn invalid_token(msg: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            problem::INVALID_TOKEN,
            "Invalid token",
            msg,
        )
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            problem::INTERNAL,
            "Internal server error",
            msg,
        )
    }

    /// Maps an I/O error on a user-named path to the caller's error where it is one.
    pub fn io(e: std::io::Error, what: &str) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound => Self::file_not_found(format!("{what}: no such file or directory")),
            K::AlreadyExists => Self::already_exists(format!("{what}: already exists")),
            K::DirectoryNotEmpty => Self::invalid_params(format!("{what}: directory not empty")),
            K::NotADirectory => Self::invalid_params(format!("{what}: not a directory")),
            K::IsADirectory => Self::invalid_params(format!("{what}: is a directory")),
            K::InvalidInput | K::InvalidFilename => Self::invalid_params(format!("{what}: {e}")),
            K::PermissionDenied => Self::new(
                StatusCode::FORBIDDEN,
                problem::INVALID_PATH,
                "Permission denied",
                format!("{what}: permission denied"),
            ),
            K::StorageFull | K::QuotaExceeded => Self::quota_exceeded(format!("{what}: {e}")),
            _ => {
                tracing::error!(error = %e, what, "storage I/O error");
                Self::internal(format!("{what}: {e}"))
            }
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        if let Some(api) = e.downcast_ref::<ApiError>() {
            return Self::new(api.status, api.kind, api.title, api.msg.clone());
        }
        tracing::error!(error = %format!("{e:#}"), "storage proxy internal error");
        Self::internal(format!("{e:#}"))
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::internal(format!("background task failed: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            kind: self.kind.to_string(),
            title: self.title.to_string(),
            msg: self.msg,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/problem+json")],
            json,
        )
            .into_response()
    }
}
