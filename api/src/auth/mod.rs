//! Who is calling. The auth middleware (HMAC, or the pre-auth hook) puts an [`AuthUser`]
//! into the request extensions; handlers take it with the [`Auth`] extractor.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;

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
