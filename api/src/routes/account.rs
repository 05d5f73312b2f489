//! Account endpoints of `/auth` (api-rest.md §6.3): signup, signout, update-password and
//! the SSH keypair. Passwords are bcrypt (`$2b$12$`), the fixtures' format, hashed in the
//! API (off the async threads) so plain passwords never enter the command stream.
//!
//! Signup is off unless etcd `config/api/signup/enabled` is true (the original shipped it
//! open and left policy to hook plugins); when off it answers 403.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use bai_events::rest::RestOp;

use crate::auth::{check_password, Auth};
use crate::commands::ReqId;
use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::routes::rest_cmd;
use crate::state::AppState;

pub const SIGNUP_ENABLED_KEY: &str = "config/api/signup/enabled";

async fn hash(plain: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || bai_core::keypair::hash_password(&plain))
        .await
        .map_err(ApiError::internal_from)?
        .map_err(ApiError::internal_from)
}

/// The password hash of a user (for re-checking the current password).
async fn stored_hash(state: &AppState, user_uuid: uuid::Uuid) -> ApiResult<Option<String>> {
    let mut txn = state.db.begin_readonly().await?;
    let h: Option<Option<String>> =
        sqlx::query_scalar("SELECT password FROM users WHERE uuid = $1")
            .bind(user_uuid)
            .fetch_optional(&mut *txn)
            .await?;
    txn.commit().await?;
    Ok(h.flatten())
}

#[derive(Debug, Deserialize)]
pub struct SignupParams {
    pub domain: String,
    pub email: String,
    pub password: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub full_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

/// `POST /auth/signup` (anonymous) → 201 `{access_key, secret_key}`.
pub async fn signup(
    State(state): State<AppState>,
    req_id: ReqId,
    Params(p): Params<SignupParams>,
) -> ApiResult<Response> {
    let enabled = state
        .etcd
        .get(SIGNUP_ENABLED_KEY)
        .await
        .map_err(ApiError::internal_from)?
        .is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "true" | "1" | "yes" | "on"
            )
        });
    if !enabled {
        return Err(ApiError::forbidden().with_msg("Signup is disabled on this server."));
    }
    crate::routes::manager::ensure_not_frozen(&state).await?;
    if p.email.is_empty() || !p.email.contains('@') || p.email.len() > 64 {
        return Err(ApiError::invalid_api_params().with_msg("Invalid email"));
    }
    if p.password.len() < 8 {
        return Err(
            ApiError::invalid_api_params().with_msg("Password must be at least 8 characters long.")
        );
    }
    let username = p.username.unwrap_or_else(|| p.email.clone());
    if username.len() > 64 {
        return Err(ApiError::invalid_api_params().with_msg("Username too long"));
    }
    let password_hash = hash(p.password).await?;
    let (access_key, secret_key) = bai_core::keypair::generate_keypair();
    // Anonymous: the command's caller is the new account itself.
    let caller = crate::auth::AuthUser {
        access_key: String::new(),
        secret_key: String::new(),
        is_admin: false,
        rate_limit: 0,
        resource_policy: String::new(),
        user_uuid: uuid::Uuid::nil(),
        email: p.email.clone(),
        role: crate::auth::UserRole::User,
        domain_name: p.domain.clone(),
    };
    let r = rest_cmd::send(
        &state,
        &req_id,
        &caller,
        RestOp::Signup {
            domain: p.domain,
            email: p.email,
            username,
            password_hash,
            full_name: p.full_name.unwrap_or_default(),
            description: p.description.unwrap_or_default(),
            access_key,
            secret_key,
            group: p.group.unwrap_or_else(|| "default".into()),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignoutParams {
    #[serde(alias = "username")]
    pub email: String,
    pub password: String,
}

/// `POST /auth/signout`: deactivates the caller's account and keypairs.
pub async fn signout(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Params(p): Params<SignoutParams>,
) -> ApiResult<Json<Value>> {
    if p.email != user.email {
        return Err(ApiError::forbidden().with_msg("Not the account owner"));
    }
    let h = stored_hash(&state, user.user_uuid).await?;
    if !check_password(p.password, h).await? {
        return Err(ApiError::bad_request().with_msg("Invalid email and/or password"));
    }
    rest_cmd::send(
        &state,
        &req_id,
        &user,
        RestOp::Signout {
            user_uuid: user.user_uuid,
            email: user.email.clone(),
        },
    )
    .await?;
    // The credential cache would otherwise accept the keypair for up to its TTL.
    state.auth.keypairs.remove(&user.access_key);
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatePasswordParams {
    pub old_password: String,
    pub new_password: String,
    pub new_password2: String,
}

/// `POST /auth/update-password`: old mismatch → 401; new1 ≠ new2 → the original's plain
/// `{"error_msg": "new password mismitch"}` 400 (not problem+json).
pub async fn update_password(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Params(p): Params<UpdatePasswordParams>,
) -> ApiResult<Response> {
    let h = stored_hash(&state, user.user_uuid).await?;
    if !check_password(p.old_password, h).await? {
        return Err(ApiError::auth_failed().with_msg("Old password mismatch"));
    }
    if p.new_password != p.new_password2 {
        return Ok((
            StatusCode::BAD_REQUEST,
            Json(json!({ "error_msg": "new password mismitch" })),
        )
            .into_response());
    }
    let password_hash = hash(p.new_password).await?;
    rest_cmd::send(
        &state,
        &req_id,
        &user,
        RestOp::UpdatePassword {
            user_uuid: user.user_uuid,
            password_hash,
        },
    )
    .await?;
    Ok(Json(json!({})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// `GET /auth/ssh-keypair` → `{"ssh_public_key"}` of the caller's keypair.
pub async fn get_ssh_keypair(
    State(state): State<AppState>,
    Auth(user): Auth,
    Params(_p): Params<NoParams>,
) -> ApiResult<Json<Value>> {
    let mut txn = state.db.begin_readonly().await?;
    let key: Option<Option<String>> =
        sqlx::query_scalar("SELECT ssh_public_key FROM keypairs WHERE access_key = $1")
            .bind(&user.access_key)
            .fetch_optional(&mut *txn)
            .await?;
    txn.commit().await?;
    Ok(Json(json!({ "ssh_public_key": key.flatten() })))
}

/// `PATCH /auth/ssh-keypair` → a new RSA keypair `{ssh_public_key, ssh_private_key}`.
pub async fn refresh_ssh_keypair(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Params(_p): Params<NoParams>,
) -> ApiResult<Json<Value>> {
    crate::routes::manager::ensure_not_frozen(&state).await?;
    let r = rest_cmd::send(
        &state,
        &req_id,
        &user,
        RestOp::RegenerateSshKeypair {
            access_key: user.access_key.clone(),
        },
    )
    .await?;
    let public = r.get("ssh_public_key").cloned().unwrap_or(Value::Null);
    // The worker kept the private key out of its reply; read it from the row it wrote.
    let mut txn = state.db.begin_readonly().await?;
    let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT ssh_public_key, ssh_private_key FROM keypairs WHERE access_key = $1",
    )
    .bind(&user.access_key)
    .fetch_optional(&mut *txn)
    .await?;
    txn.commit().await?;
    let (stored_public, private) = row.unwrap_or_default();
    if stored_public.as_deref() != public.as_str() {
        // Another regeneration won the race; answer the pair that is stored now.
        tracing::info!("ssh keypair regenerated concurrently; returning the stored pair");
    }
    Ok(Json(json!({
        "ssh_public_key": stored_public,
        "ssh_private_key": private,
    })))
}
