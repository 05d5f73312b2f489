//! Who is calling. The auth middleware (HMAC, or the pre-auth hook) puts an [`AuthUser`]
//! into the request extensions; handlers take it with the [`Auth`] extractor (or
//! [`Admin`] / [`SuperAdmin`] for privileged endpoints).
//!
//! * [`hmac`]: the signing algorithm (pure functions).
//! * [`middleware`]: API-version check, method override, authentication, rate limiting,
//!   and the mapping of framework errors to problem+json.
//! * [`preauth`]: the PRE_AUTH_MIDDLEWARE hook and its cookie-SSO implementation.
//! * [`ratelimit`]: the Redis rolling window and the query counter.
//! * [`cache`]: the short-lived credential cache (see its staleness bound).

pub mod cache;
pub mod hmac;
pub mod middleware;
pub mod preauth;
pub mod ratelimit;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::Uri;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use bai_core::config::{Config, PreAuthHookKind};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use cache::{TtlCache, CREDENTIAL_TTL};
use preauth::PreAuthHook;
use ratelimit::RateLimiter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    Superadmin,
    Admin,
    User,
    Monitor,
}

impl UserRole {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "superadmin" => Some(Self::Superadmin),
            "admin" => Some(Self::Admin),
            "user" => Some(Self::User),
            "monitor" => Some(Self::Monitor),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Superadmin => "superadmin",
            Self::Admin => "admin",
            Self::User => "user",
            Self::Monitor => "monitor",
        }
    }
}

/// The authenticated keypair and its user.
#[derive(Clone, Debug)]
pub struct AuthUser {
    pub access_key: String,
    pub secret_key: String,
    /// Keypair `is_admin`: domain admin or superadmin for privilege checks of the REST API.
    pub is_admin: bool,
    pub rate_limit: i32,
    pub resource_policy: String,
    pub user_uuid: Uuid,
    pub email: String,
    pub role: UserRole,
    pub domain_name: String,
}

impl AuthUser {
    pub fn is_superadmin(&self) -> bool {
        self.role == UserRole::Superadmin
    }
}

/// Extractor: the authenticated caller, or 401 `auth-failed` for anonymous requests.
pub struct Auth(pub AuthUser);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AuthUser>()
            .cloned()
            .map(Auth)
            .ok_or_else(|| ApiError::auth_failed().with_msg("Unauthorized access"))
    }
}

/// Extractor: an authenticated caller whose keypair is an admin keypair (domain admin or
/// superadmin); otherwise 401 `auth-failed` "Unauthorized access", like the original's
/// `admin_required`.
pub struct Admin(pub AuthUser);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Auth(user) = Auth::from_request_parts(parts, state).await?;
        if user.is_admin {
            Ok(Admin(user))
        } else {
            Err(ApiError::auth_failed().with_msg("Unauthorized access"))
        }
    }
}

/// Extractor: an authenticated superadmin (user role), like `superadmin_required`.
pub struct SuperAdmin(pub AuthUser);

impl<S: Send + Sync> FromRequestParts<S> for SuperAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Auth(user) = Auth::from_request_parts(parts, state).await?;
        if user.is_superadmin() {
            Ok(SuperAdmin(user))
        } else {
            Err(ApiError::auth_failed().with_msg("Unauthorized access"))
        }
    }
}

/// Per-process authentication machinery, built once from the configuration.
pub struct AuthRuntime {
    /// access key -> the active keypair with its active user (or `None`: unknown/inactive).
    pub keypairs: TtlCache<String, Option<Arc<AuthUser>>>,
    pub rate_limiter: RateLimiter,
    /// The configured PRE_AUTH_MIDDLEWARE hook, if any.
    pub hook: Option<Arc<dyn PreAuthHook>>,
}

impl AuthRuntime {
    pub fn from_config(config: &Config) -> Self {
        let hook: Option<Arc<dyn PreAuthHook>> = match config.manager.pre_auth_hook {
            PreAuthHookKind::None => None,
            PreAuthHookKind::CookieSso => Some(Arc::new(preauth::CookieSso::new(
                config.manager.secret.as_deref(),
            ))),
        };
        Self {
            keypairs: TtlCache::new(CREDENTIAL_TTL),
            rate_limiter: RateLimiter::default(),
            hook,
        }
    }

    /// The cookie-SSO hook, when that is the configured one (for `/server/login|logout`).
    pub fn cookie_sso(&self) -> Option<&preauth::CookieSso> {
        self.hook.as_ref().and_then(|h| h.as_any().downcast_ref())
    }
}

/// One row of the credential lookup.
#[derive(sqlx::FromRow)]
struct KeypairRow {
    access_key: String,
    secret_key: String,
    is_admin: bool,
    rate_limit: i32,
    resource_policy: String,
    uuid: Uuid,
    email: String,
    role: String,
    domain_name: String,
}

/// Loads the **active** keypair `access_key` of an **active** user, through the cache.
pub async fn load_keypair(state: &AppState, access_key: &str) -> ApiResult<Option<Arc<AuthUser>>> {
    if let Some(hit) = state.auth.keypairs.get(&access_key.to_string()) {
        return Ok(hit);
    }
    let mut txn = state.db.begin_readonly().await?;
    let row: Option<KeypairRow> = sqlx::query_as(
        "SELECT k.access_key, COALESCE(k.secret_key, '') AS secret_key, \
                COALESCE(k.is_admin, false) AS is_admin, COALESCE(k.rate_limit, 1000) AS rate_limit, \
                k.resource_policy, u.uuid, u.email, COALESCE(u.role, 'user')::text AS role, \
                COALESCE(u.domain_name, '') AS domain_name \
         FROM keypairs k JOIN users u ON k.\"user\" = u.uuid \
         WHERE k.access_key = $1 AND k.is_active AND u.status = 'active'",
    )
    .bind(access_key)
    .fetch_optional(&mut *txn)
    .await?;
    txn.commit().await?;
    let user = row.map(|r| {
        Arc::new(AuthUser {
            access_key: r.access_key,
            secret_key: r.secret_key,
            is_admin: r.is_admin,
            rate_limit: r.rate_limit,
            resource_policy: r.resource_policy,
            user_uuid: r.uuid,
            email: r.email,
            role: UserRole::parse(&r.role).unwrap_or(UserRole::User),
            domain_name: r.domain_name,
        })
    });
    state
        .auth
        .keypairs
        .insert(access_key.to_string(), user.clone());
    Ok(user)
}

/// Verifies a password against a stored bcrypt hash, off the async workers (cost 12 takes a
/// few hundred ms of CPU). Without a stored hash (unknown user) it spends the same time on a
/// dummy hash, so response times do not tell which accounts exist.
pub async fn check_password(plain: String, hash: Option<String>) -> ApiResult<bool> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    tokio::task::spawn_blocking(move || match hash {
        Some(h) => bai_core::keypair::verify_password(&plain, &h),
        None => {
            let dummy = DUMMY.get_or_init(|| {
                bai_core::keypair::hash_password("not anyone's password").unwrap_or_default()
            });
            let _ = bai_core::keypair::verify_password(&plain, dummy);
            false
        }
    })
    .await
    .map_err(ApiError::internal_from)
}

/// The keypair a request acts as (§1.6): the requester's own, or `?owner_access_key=`'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub access_key: String,
    pub user_uuid: Uuid,
    pub domain_name: String,
    pub role: UserRole,
}

/// `owner_access_key` from the query string. Only the query string counts: the original
/// drops the key from parsed bodies before validation (api-rest.md §1.5).
pub fn owner_access_key_param(uri: &Uri) -> Option<String> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .ok()?
        .0
        .into_iter()
        .find(|(k, _)| k == "owner_access_key")
        .map(|(_, v)| v)
}

/// Resolves on whose behalf a request acts (§1.6). Acting for another key needs a
/// superadmin, or a domain admin of the owner's domain when the owner is not a superadmin
/// (else 403 `generic-forbidden`); an unknown or inactive owner key is 400.
pub async fn resolve_owner(
    state: &AppState,
    requester: &AuthUser,
    owner_access_key: Option<&str>,
) -> ApiResult<Owner> {
    let own = Owner {
        access_key: requester.access_key.clone(),
        user_uuid: requester.user_uuid,
        domain_name: requester.domain_name.clone(),
        role: requester.role,
    };
    let Some(owner_key) = owner_access_key.filter(|k| *k != requester.access_key) else {
        return Ok(own);
    };
    let owner = load_keypair(state, owner_key)
        .await?
        .ok_or_else(|| ApiError::invalid_api_params().with_msg("Unknown owner access key"))?;
    let allowed = match requester.role {
        UserRole::Superadmin => true,
        UserRole::Admin => {
            owner.domain_name == requester.domain_name && owner.role != UserRole::Superadmin
        }
        _ => false,
    };
    if !allowed {
        return Err(ApiError::forbidden());
    }
    Ok(Owner {
        access_key: owner.access_key.clone(),
        user_uuid: owner.user_uuid,
        domain_name: owner.domain_name.clone(),
        role: owner.role,
    })
}
