//! The request pipeline around the handlers, in the original's order (outer → inner):
//! error mapping → API version (and method override, before routing) → authentication →
//! rate limit → handler (api-rest.md §1.1).

use axum::extract::{MatchedPath, OriginalUri, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::json;

use super::hmac::{self, SigningInput};
use super::preauth::HookRejection;
use super::ratelimit::RateLimitStatus;
use super::{load_keypair, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// API versions accepted in `X-BackendAI-Version` (21.03.6's list plus `v6.20210815`,
/// which we advertise).
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "v4.20181215",
    "v4.20190115",
    "v4.20190315",
    "v4.20190615",
    "v5.20191215",
    "v6.20200815",
    "v6.20210815",
];

/// The negotiated API version of a request (request extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiVersion {
    pub major: u32,
    /// `YYYYMMDD`.
    pub date: String,
}

impl Default for ApiVersion {
    /// What the original assumes when no version header is sent.
    fn default() -> Self {
        Self {
            major: 5,
            date: "20191215".into(),
        }
    }
}

/// Endpoints that skip authentication even when credentials are present (§1.4), plus the
/// cookie-SSO login/logout. Everything else requires a valid signature (or hook session).
pub fn is_anonymous(method: &Method, path: &str) -> bool {
    let read = *method == Method::GET || *method == Method::HEAD;
    match path {
        "/"
        | "/manager/status"
        | "/manager/announcement"
        | "/config/resource-slots"
        | "/config/vfolder-types" => read,
        "/auth/authorize" | "/auth/signup" | "/server/login" | "/server/logout" => {
            *method == Method::POST
        }
        _ => false,
    }
}

/// Validates `X-BackendAI-Version` (or the legacy `X-Sorna-Version`) and records the
/// version as an [`ApiVersion`] extension; no header means v5.20191215.
pub async fn api_version(mut req: Request, next: Next) -> Response {
    let raw = req
        .headers()
        .get("x-backendai-version")
        .or_else(|| req.headers().get("x-sorna-version"))
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let version = match raw {
        None => ApiVersion::default(),
        Some(v) if SUPPORTED_VERSIONS.contains(&v.as_str()) => {
            let (major, date) = v[1..].split_once('.').unwrap_or_default();
            ApiVersion {
                major: major.parse().unwrap_or(6),
                date: date.to_string(),
            }
        }
        Some(_) => {
            return ApiError::bad_request()
                .with_msg("Unsupported API version.")
                .into_response()
        }
    };
    req.extensions_mut().insert(version);
    next.run(req).await
}

/// `X-Method-Override: <METHOD>` re-routes the request as that method. It must wrap the
/// router from outside (routing picks the handler by method), and it runs before auth, so
/// the signature covers the overridden method, as in the original.
pub async fn method_override(mut req: Request, next: Next) -> Response {
    let overridden = req
        .headers()
        .get("x-method-override")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| Method::from_bytes(s.trim().to_ascii_uppercase().as_bytes()).ok());
    if let Some(m) = overridden {
        *req.method_mut() = m;
    }
    next.run(req).await
}

/// Authentication and rate limiting for every matched route that is not anonymous.
///
/// Installed with `Router::route_layer`, so unknown paths get their 404 without an auth
/// check, as in the original. One difference remains: the layer also wraps a path's 405
/// fallback, so an *unsigned* request with an unsupported method gets 401, not 405.
pub async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let anonymous = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| is_anonymous(req.method(), p.as_str()));
    if anonymous {
        return next.run(req).await;
    }
    // Verify on the parts: the body is not `Sync`, so a `&Request` cannot be held across
    // the awaits below.
    let (parts, body) = req.into_parts();
    let user = match verify_request(&state, &parts).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let mut req = Request::from_parts(parts, body);
    let limit = i64::from(user.rate_limit);
    let status = match state
        .auth
        .rate_limiter
        .hit(&state.redis, &user.access_key, limit)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            // Fail open: the limiter protects the service, it is not an access control, and
            // Redis being away should not take the whole API down with it.
            tracing::warn!(error = %e, "rate limiter unavailable; request not counted");
            RateLimitStatus {
                limit,
                remaining: limit,
                exceeded: false,
            }
        }
    };
    if status.exceeded {
        let mut resp = ApiError::rate_limit_exceeded().into_response();
        status.apply(resp.headers_mut());
        return resp;
    }
    req.extensions_mut().insert(user);
    let mut resp = next.run(req).await;
    status.apply(resp.headers_mut());
    resp
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The algorithm of §1.3: date window, pre-auth hook, `Authorization`, keypair, signature.
pub async fn verify_request(state: &AppState, req: &Parts) -> ApiResult<AuthUser> {
    let headers = &req.headers;
    let date_raw = ["date", "x-backendai-date", "x-sorna-date"]
        .iter()
        .find_map(|h| header_str(headers, h));
    let sync_error = || ApiError::invalid_auth_params().with_msg("Date/time sync error");
    let date = date_raw
        .and_then(hmac::parse_date)
        .filter(|d| hmac::date_in_window(d, Utc::now()))
        .ok_or_else(sync_error)?;
    let date_raw = date_raw.ok_or_else(sync_error)?;

    if let Some(hook) = &state.auth.hook {
        match hook.resolve(state, headers).await {
            Ok(Some(access_key)) => {
                return load_keypair(state, &access_key)
                    .await?
                    .map(|u| (*u).clone())
                    .ok_or_else(|| ApiError::auth_failed().with_msg("Access key not found"));
            }
            Ok(None) => {}
            Err(HookRejection(reason)) => {
                return Err(ApiError::rejected_by_hook()
                    .with_msg(reason)
                    .with_data(json!({ "plugins": hook.name() })))
            }
        }
    }

    // Every non-anonymous handler of the original is `auth_required`, so a request without
    // credentials ends here.
    let Some(authorization) = headers.get(AUTHORIZATION) else {
        return Err(ApiError::auth_failed().with_msg("Unauthorized access"));
    };
    let authorization = authorization
        .to_str()
        .map_err(|_| ApiError::invalid_auth_params().with_msg("Malformed authorization header"))?;
    let params = hmac::parse_authorization(authorization)?;
    let user = load_keypair(state, &params.access_key)
        .await?
        .ok_or_else(|| ApiError::auth_failed().with_msg("Access key not found"))?;
    let hash = hmac::parse_sign_method(&params.sign_method)?;
    let (version_label, version) = match header_str(headers, "x-backendai-version") {
        Some(v) => ("x-backendai-version", v),
        None => match header_str(headers, "x-sorna-version") {
            Some(v) => ("x-sorna-version", v),
            None => {
                return Err(ApiError::invalid_auth_params()
                    .with_msg("API version missing in request headers"))
            }
        },
    };
    // Routers may rewrite the URI (nesting); the client signed the original request-target.
    let uri = req
        .extensions
        .get::<OriginalUri>()
        .map(|u| &u.0)
        .unwrap_or(&req.uri);
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let host = header_str(headers, HOST.as_str())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let media = hmac::media_type(header_str(headers, CONTENT_TYPE.as_str()));
    let input = SigningInput {
        method: req.method.as_str(),
        path_and_query,
        date_raw,
        host: &host,
        media_type: &media,
        version_label,
        version,
    };
    if !hmac::verify(
        hash,
        &user.secret_key,
        hmac::key_date(&date),
        &input,
        &params.signature,
    ) {
        return Err(ApiError::auth_failed().with_msg("Signature mismatch"));
    }
    Ok((*user).clone())
}

/// Gives responses that no keypair was charged for the anonymous rate-limit headers, so
/// every response carries `X-RateLimit-*`.
pub async fn default_rate_limit_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if !resp.headers().contains_key("x-ratelimit-limit") {
        RateLimitStatus::anonymous().apply(resp.headers_mut());
    }
    resp
}

/// Turns the framework's own error responses (axum rejections, 405s, 413s, caught panics:
/// plain text or empty) into problem+json, so clients always get the original's shape.
/// Error bodies a handler built on purpose (JSON) pass through untouched.
pub async fn problem_json_errors(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_plain = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("text/plain"));
    if !is_plain {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let err = match status {
        StatusCode::NOT_FOUND => {
            ApiError::not_found().with_msg(format!("Unknown URL path: {path}"))
        }
        StatusCode::METHOD_NOT_ALLOWED => ApiError::method_not_allowed(),
        StatusCode::PAYLOAD_TOO_LARGE => crate::params::too_large(),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::invalid_api_params()
            .with_msg("Input validation error")
            .with_data(json!({ "error": text })),
        StatusCode::UNAUTHORIZED => ApiError::auth_failed(),
        StatusCode::FORBIDDEN => ApiError::forbidden(),
        StatusCode::TOO_MANY_REQUESTS => ApiError::rate_limit_exceeded(),
        s if s.is_server_error() => {
            tracing::error!(status = %s, body = %text, "framework error response");
            ApiError::internal()
        }
        _ if text.is_empty() => ApiError::invalid_api_params().with_msg("Malformed body"),
        _ => ApiError::invalid_api_params().with_msg(text),
    };
    let mut out = err.into_response();
    // Keep what the framework said besides the body (e.g. `Allow` on a 405).
    for (name, value) in parts.headers.iter() {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_table() {
        assert!(is_anonymous(&Method::GET, "/"));
        assert!(is_anonymous(&Method::HEAD, "/manager/status"));
        assert!(!is_anonymous(&Method::PUT, "/manager/status"));
        assert!(!is_anonymous(&Method::POST, "/manager/announcement"));
        assert!(is_anonymous(&Method::POST, "/auth/authorize"));
        assert!(!is_anonymous(&Method::GET, "/auth"));
        assert!(!is_anonymous(&Method::GET, "/admin/gql"));
    }
}
