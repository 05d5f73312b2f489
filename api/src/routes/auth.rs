//! `/auth` (api-rest.md §6.3): the signed echo test, credential exchange and roles.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::{check_password, Auth};
use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoParams {
    pub echo: String,
}

/// `GET|POST /auth` and `/auth/test`: proves a signed request got through.
pub async fn test(Auth(_user): Auth, Params(p): Params<EchoParams>) -> Json<Value> {
    Json(json!({ "authorized": "yes", "echo": p.echo }))
}

#[derive(Debug, Deserialize)]
pub struct AuthorizeParams {
    #[serde(rename = "type")]
    pub kind: String,
    pub domain: String,
    pub username: String,
    pub password: String,
}

fn credential_mismatch() -> ApiError {
    ApiError::auth_failed().with_msg("User credential mismatch.")
}

/// `POST /auth/authorize` (anonymous): email + password → the user's keypair, preferring
/// an admin keypair, as `{"data": {access_key, secret_key, role, status}}`.
pub async fn authorize(
    State(state): State<AppState>,
    Params(p): Params<AuthorizeParams>,
) -> ApiResult<Json<Value>> {
    match p.kind.as_str() {
        "keypair" => {}
        "jwt" => {
            return Err(ApiError::invalid_api_params().with_msg("Unsupported authorization type"))
        }
        other => {
            return Err(ApiError::invalid_api_params()
                .with_msg("Input validation error")
                .with_data(
                    json!({ "type": format!("value doesn't match any variant: {other:?}") }),
                ))
        }
    }
    let mut txn = state.db.begin_readonly().await?;
    let user: Option<(Uuid, Option<String>, String, String)> = sqlx::query_as(
        "SELECT uuid, password, status::text, COALESCE(role, 'user')::text FROM users \
         WHERE email = $1 AND domain_name = $2",
    )
    .bind(&p.username)
    .bind(&p.domain)
    .fetch_optional(&mut *txn)
    .await?;
    let hash = user.as_ref().and_then(|u| u.1.clone());
    if !check_password(p.password, hash).await? {
        return Err(credential_mismatch());
    }
    let Some((uuid, _, status, role)) = user else {
        return Err(credential_mismatch());
    };
    if status != "active" {
        return Err(ApiError::auth_failed().with_msg("Inactive user"));
    }
    let keypair: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT access_key, secret_key FROM keypairs WHERE \"user\" = $1 AND is_active \
         ORDER BY is_admin DESC NULLS LAST, created_at ASC NULLS LAST LIMIT 1",
    )
    .bind(uuid)
    .fetch_optional(&mut *txn)
    .await?;
    txn.commit().await?;
    let Some((access_key, secret_key)) = keypair else {
        return Err(ApiError::auth_failed().with_msg("No active keypair for the user."));
    };
    Ok(Json(json!({
        "data": {
            "access_key": access_key,
            "secret_key": secret_key,
            "role": role,
            "status": status,
        }
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleParams {
    #[serde(default)]
    pub group: Option<Uuid>,
}

/// `GET /auth/role`: `{global_role, domain_role, group_role}`. 21.03 has no per-group
/// roles, so a member's group role is always `user`; a non-member gets 404.
pub async fn role(
    State(state): State<AppState>,
    Auth(user): Auth,
    Params(p): Params<RoleParams>,
) -> ApiResult<Json<Value>> {
    let group_role = match p.group {
        None => None,
        Some(group) => {
            let mut txn = state.db.begin_readonly().await?;
            let member: Option<Uuid> = sqlx::query_scalar(
                "SELECT group_id FROM association_groups_users WHERE group_id = $1 AND user_id = $2",
            )
            .bind(group)
            .bind(user.user_uuid)
            .fetch_optional(&mut *txn)
            .await?;
            txn.commit().await?;
            if member.is_none() {
                return Err(ApiError::not_found()
                    .with_msg("No such project or you are not the member of it."));
            }
            Some("user")
        }
    };
    Ok(Json(json!({
        "global_role": if user.is_superadmin() { "superadmin" } else { "user" },
        "domain_role": if user.is_admin { "admin" } else { "user" },
        "group_role": group_role,
    })))
}
