//! The API's boundary error: the original's problem+json shape
//! (`{"type": "https://api.backend.ai/probs/<slug>", "title", "msg"?, "data"?}`).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {slug}: {title} {msg:?}")]
pub struct ApiError {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub msg: Option<String>,
    pub data: Option<Value>,
}

impl ApiError {
    pub const fn new(status: StatusCode, slug: &'static str, title: &'static str) -> Self {
        Self {
            status,
            slug,
            title,
            msg: None,
            data: None,
        }
    }

    pub fn with_msg(mut self, msg: impl Into<String>) -> Self {
        self.msg = Some(msg.into());
        self
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn bad_request() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "generic-bad-request",
            "Bad request.",
        )
    }
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "generic-not-found",
            "Unknown URL path.",
        )
    }
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "generic-forbidden",
            "Forbidden operation.",
        )
    }
    pub fn insufficient_privilege() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "insufficient-privilege",
            "Insufficient privilege.",
        )
    }
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "HTTP Method Not Allowed.",
        )
    }
    pub fn invalid_auth_params() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-auth-params",
            "Missing or invalid authorization parameters.",
        )
    }
    pub fn auth_failed() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "auth-failed",
            "Credential/signature mismatch.",
        )
    }
    pub fn invalid_api_params() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
            "Missing or invalid API parameters.",
        )
    }
    pub fn rejected_by_hook() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "rejected-by-hook",
            "Operation rejected by a hook plugin.",
        )
    }
    pub fn graphql_error() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "graphql-error",
            "GraphQL-generated error.",
        )
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal-server-error",
            "Internal server error.",
        )
    }
    pub fn service_unavailable() -> Self {
        // The original's title has this typo; clients match on `type`, but keep it exact.
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service-unavailable",
            "Serivce unavailable.",
        )
    }
    pub fn not_implemented() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-implemented",
            "This API query is not implemented.",
        )
    }
    pub fn server_frozen() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server-frozen",
            "The server is frozen due to maintenance. Please try again later.",
        )
    }
    pub fn rate_limit_exceeded() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limit-exceeded",
            "You have reached your API query rate limit.",
        )
    }
    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "generic-bad-request",
            "Bad request.",
        )
        .with_msg("Request body too large.")
    }

    /// Logs the cause and answers 500 without leaking internals.
    pub fn internal_from(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::internal()
    }

    pub fn body(&self) -> Value {
        let mut body = json!({
            "type": format!("https://api.backend.ai/probs/{}", self.slug),
            "title": self.title,
        });
        if let Some(m) = &self.msg {
            body["msg"] = json!(m);
        }
        if let Some(d) = &self.data {
            body["data"] = d.clone();
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal_from(e)
    }
}

impl From<bai_events::BusError> for ApiError {
    fn from(e: bai_events::BusError) -> Self {
        tracing::error!(error = %e, "command bus error");
        ApiError::service_unavailable().with_msg("The command bus is unavailable.")
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
