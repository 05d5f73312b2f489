//! PRE_AUTH_MIDDLEWARE (21.03 #420, api-rest.md §1.10) and the one hook we ship.
//!
//! The hook runs inside authentication, after the date check and before HMAC parsing, for
//! every endpoint that needs auth. If it resolves an access key, that keypair is loaded as
//! if the request had been signed (no HMAC check); if it resolves nothing, normal HMAC
//! authentication runs; if it rejects, the answer is 400 `rejected-by-hook`.
//!
//! [`CookieSso`] (config `manager.pre-auth-hook = "cookie-sso"`) gives browser-style
//! sessions: `POST /server/login {"username","password"}` checks the bcrypt password and
//! sets a cookie signed with a key derived from `manager.secret`; requests carrying the
//! cookie act as the user's main active keypair; `POST /server/logout` revokes it.
//!
//! The date check still comes first, as in the original (the hook runs after it), so cookie
//! clients send `X-BackendAI-Date` (browsers may not set `Date` themselves).

use std::any::Any;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use bai_core::redis::redis;

use super::cache::{TtlCache, CREDENTIAL_TTL};
use super::hmac::{constant_time_eq, HashType};
use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::state::AppState;

/// A hook's refusal: becomes 400 `rejected-by-hook` with `msg` = the reason.
#[derive(Debug, Clone)]
pub struct HookRejection(pub String);

pub trait PreAuthHook: Send + Sync + 'static {
    /// Plugin name, reported as `data.plugins` when the hook rejects.
    fn name(&self) -> &'static str;

    /// `Ok(Some(access_key))`: authenticate as that key without HMAC. `Ok(None)`: fall
    /// through to HMAC. `Err`: reject the request.
    fn resolve<'a>(
        &'a self,
        state: &'a AppState,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Option<String>, HookRejection>>;

    fn as_any(&self) -> &dyn Any;
}

pub const COOKIE_NAME: &str = "backendai_sso";
/// Lifetime of a login session.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const COOKIE_VERSION: &str = "v1";

/// What a valid session cookie says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionClaims {
    /// Random session id: the revocation handle.
    pub sid: String,
    pub user: Uuid,
    /// Expiry, Unix seconds.
    pub expires: i64,
}

pub struct CookieSso {
    key: Vec<u8>,
    /// user uuid -> the user's main active access key (same staleness bound as keypairs).
    main_keys: TtlCache<Uuid, Option<String>>,
}

impl CookieSso {
    /// `secret` is `manager.secret`; config validation requires it for this hook. Without
    /// one (tests building a config by hand) a random per-process key is used, so cookies
    /// then only work against the process that issued them.
    pub fn new(secret: Option<&str>) -> Self {
        let secret = match secret.filter(|s| !s.is_empty()) {
            Some(s) => s.as_bytes().to_vec(),
            None => {
                tracing::warn!("cookie-sso without manager.secret: using a random per-process key");
                (0..32).map(|_| rand::random::<u8>()).collect()
            }
        };
        // A derived key, so manager.secret is never used raw for two purposes.
        let key = HashType::Sha256.hmac(&secret, b"backend.ai pre-auth cookie-sso v1");
        Self {
            key,
            main_keys: TtlCache::new(CREDENTIAL_TTL),
        }
    }

    fn mac(&self, payload: &str) -> String {
        data_encoding::HEXLOWER.encode(&HashType::Sha256.hmac(&self.key, payload.as_bytes()))
    }

    /// A fresh session cookie value for `user`, valid for [`SESSION_TTL`] from `now`.
    pub fn issue(&self, user: Uuid, now: i64) -> (String, SessionClaims) {
        let sid = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let expires = now + SESSION_TTL.as_secs() as i64;
        let payload = format!("{COOKIE_VERSION}.{sid}.{}.{expires}", user.simple());
        let value = format!("{payload}.{}", self.mac(&payload));
        (value, SessionClaims { sid, user, expires })
    }

    /// Checks signature and expiry of a cookie value.
    pub fn verify(&self, value: &str, now: i64) -> Option<SessionClaims> {
        let (payload, sig) = value.rsplit_once('.')?;
        if !constant_time_eq(self.mac(payload).as_bytes(), sig.as_bytes()) {
            return None;
        }
        let mut parts = payload.split('.');
        let (Some(COOKIE_VERSION), Some(sid), Some(user), Some(expires), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let expires: i64 = expires.parse().ok()?;
        if expires <= now {
            return None;
        }
        Some(SessionClaims {
            sid: sid.to_string(),
            user: Uuid::parse_str(user).ok()?,
            expires,
        })
    }

    /// The claims of the request's session cookie, if it carries a valid one.
    pub fn claims(&self, headers: &HeaderMap, now: i64) -> Option<SessionClaims> {
        cookie_value(headers, COOKIE_NAME).and_then(|v| self.verify(&v, now))
    }

    async fn main_access_key(&self, state: &AppState, user: Uuid) -> ApiResult<Option<String>> {
        if let Some(hit) = self.main_keys.get(&user) {
            return Ok(hit);
        }
        let key = main_access_key(state, user).await?;
        self.main_keys.insert(user, key.clone());
        Ok(key)
    }
}

fn revoked_key(sid: &str) -> String {
    format!("sso:revoked:{sid}")
}

impl PreAuthHook for CookieSso {
    fn name(&self) -> &'static str {
        "cookie-sso"
    }

    fn resolve<'a>(
        &'a self,
        state: &'a AppState,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Option<String>, HookRejection>> {
        Box::pin(async move {
            // No (valid) cookie: not ours to decide; HMAC runs as usual.
            let Some(claims) = self.claims(headers, Utc::now().timestamp()) else {
                return Ok(None);
            };
            let revoked: bool = async {
                let mut conn = state.redis.get().await?;
                let n: bool = redis::cmd("EXISTS")
                    .arg(revoked_key(&claims.sid))
                    .query_async(&mut *conn)
                    .await?;
                anyhow::Ok(n)
            }
            .await
            .map_err(|e| HookRejection(format!("session store unavailable: {e}")))?;
            if revoked {
                return Ok(None);
            }
            self.main_access_key(state, claims.user)
                .await
                .map_err(|e| HookRejection(e.msg.unwrap_or_else(|| e.title.to_string())))
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The user's main active keypair: admin keypairs first (as `/auth/authorize` prefers
/// them), then the oldest.
pub async fn main_access_key(state: &AppState, user: Uuid) -> ApiResult<Option<String>> {
    let mut txn = state.db.begin_readonly().await?;
    let key: Option<String> = sqlx::query_scalar(
        "SELECT k.access_key FROM keypairs k JOIN users u ON k.\"user\" = u.uuid \
         WHERE u.uuid = $1 AND k.is_active AND u.status = 'active' \
         ORDER BY k.is_admin DESC NULLS LAST, k.created_at ASC NULLS LAST, k.access_key \
         LIMIT 1",
    )
    .bind(user)
    .fetch_optional(&mut *txn)
    .await?;
    txn.commit().await?;
    Ok(key)
}

/// Finds a cookie by name across all `Cookie` headers.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_string())
}

fn set_cookie(value: &str, max_age: u64) -> Option<HeaderValue> {
    // SameSite=Lax keeps other sites from riding the session with cross-site POSTs.
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}"
    ))
    .ok()
}

#[derive(Debug, Deserialize)]
pub struct LoginBody {
    pub username: String,
    pub password: String,
}

fn credential_mismatch() -> ApiError {
    ApiError::auth_failed().with_msg("User credential mismatch.")
}

/// `POST /server/login` (anonymous; only with the cookie-sso hook).
pub async fn login(
    State(state): State<AppState>,
    Params(body): Params<LoginBody>,
) -> ApiResult<Response> {
    let Some(sso) = state.auth.cookie_sso() else {
        return Err(ApiError::not_found().with_msg("Unknown URL path: /server/login"));
    };
    let mut txn = state.db.begin_readonly().await?;
    // Email first: that is what the console sends as "username".
    let row: Option<(Uuid, Option<String>, String, String, String)> = sqlx::query_as(
        "SELECT uuid, password, status::text, COALESCE(role, 'user')::text, email FROM users \
         WHERE email = $1 OR username = $1 ORDER BY (email = $1) DESC LIMIT 1",
    )
    .bind(&body.username)
    .fetch_optional(&mut *txn)
    .await?;
    txn.commit().await?;
    let hash = row.as_ref().and_then(|r| r.1.clone());
    if !super::check_password(body.password, hash).await? {
        return Err(credential_mismatch());
    }
    let Some((user, _, status, role, email)) = row else {
        return Err(credential_mismatch());
    };
    if status != "active" {
        return Err(ApiError::auth_failed().with_msg("Inactive user"));
    }
    let Some(access_key) = main_access_key(&state, user).await? else {
        return Err(ApiError::auth_failed().with_msg("The user has no active keypair."));
    };
    let (value, _) = sso.issue(user, Utc::now().timestamp());
    let mut resp = Json(json!({
        "authenticated": true,
        "data": {
            "access_key": access_key,
            "email": email,
            "role": role,
            "status": status,
        },
    }))
    .into_response();
    if let Some(cookie) = set_cookie(&value, SESSION_TTL.as_secs()) {
        resp.headers_mut().insert(SET_COOKIE, cookie);
    }
    Ok(resp)
}

/// `POST /server/logout` (anonymous): revokes the session (a copied cookie stops working
/// too, not only the browser's) and clears the cookie.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let Some(sso) = state.auth.cookie_sso() else {
        return Err(ApiError::not_found().with_msg("Unknown URL path: /server/logout"));
    };
    let now = Utc::now().timestamp();
    if let Some(claims) = sso.claims(&headers, now) {
        let ttl = (claims.expires - now).max(1) as u64;
        let mut conn = state.redis.get().await.map_err(ApiError::internal_from)?;
        redis::cmd("SET")
            .arg(revoked_key(&claims.sid))
            .arg(1)
            .arg("EX")
            .arg(ttl)
            .query_async::<()>(&mut *conn)
            .await
            .map_err(ApiError::internal_from)?;
    }
    let mut resp = Json(json!({ "authenticated": false })).into_response();
    if let Some(cookie) = set_cookie("", 0) {
        resp.headers_mut().insert(SET_COOKIE, cookie);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_round_trip() {
        let sso = CookieSso::new(Some("s3cret"));
        let user = Uuid::new_v4();
        let (value, claims) = sso.issue(user, 1000);
        assert_eq!(sso.verify(&value, 1001), Some(claims.clone()));
        assert_eq!(claims.user, user);
        // Expired, tampered, or signed with another secret: rejected.
        assert_eq!(sso.verify(&value, claims.expires), None);
        let tampered = value.replacen(
            &user.simple().to_string(),
            &Uuid::new_v4().simple().to_string(),
            1,
        );
        assert_eq!(sso.verify(&tampered, 1001), None);
        assert_eq!(CookieSso::new(Some("other")).verify(&value, 1001), None);
        assert_eq!(sso.verify("garbage", 1001), None);
    }

    #[test]
    fn cookie_header_parsing() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; backendai_sso=xyz"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie_value(&h, COOKIE_NAME).as_deref(), Some("xyz"));
        assert_eq!(cookie_value(&h, "b").as_deref(), Some("2"));
        assert_eq!(cookie_value(&h, "c"), None);
    }
}
