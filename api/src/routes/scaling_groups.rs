//! `/scaling-groups` (api-rest.md §6.4).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use bai_core::Txn;

use crate::auth::Auth;
use crate::error::ApiResult;
use crate::params::Params;
use crate::state::AppState;

/// Names of the active scaling groups allowed to a caller: the union of those associated
/// with the domain, with the group (if any) and with the keypair (`query_allowed_sgroups`).
pub async fn allowed_scaling_groups(
    txn: &mut Txn,
    domain_name: &str,
    group_id: Option<Uuid>,
    access_key: &str,
) -> ApiResult<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT name FROM scaling_groups WHERE is_active AND name IN ( \
             SELECT scaling_group FROM sgroups_for_domains WHERE domain = $1 \
             UNION SELECT scaling_group FROM sgroups_for_groups WHERE \"group\" = $2 \
             UNION SELECT scaling_group FROM sgroups_for_keypairs WHERE access_key = $3) \
         ORDER BY name",
    )
    .bind(domain_name)
    .bind(group_id)
    .bind(access_key)
    .fetch_all(&mut **txn)
    .await?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// A group id or a group name (looked up in the caller's domain).
    #[serde(alias = "group_id", alias = "group_name")]
    pub group: String,
}

/// `GET /scaling-groups?group=<id or name>` → `{"scaling_groups": [{"name"}]}`.
pub async fn list_available(
    State(state): State<AppState>,
    Auth(user): Auth,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<Value>> {
    let mut txn = state.db.begin_readonly().await?;
    let group_id = match Uuid::parse_str(&p.group) {
        Ok(id) => Some(id),
        Err(_) => {
            sqlx::query_scalar("SELECT id FROM groups WHERE domain_name = $1 AND name = $2")
                .bind(&user.domain_name)
                .bind(&p.group)
                .fetch_optional(&mut *txn)
                .await?
        }
    };
    let names =
        allowed_scaling_groups(&mut txn, &user.domain_name, group_id, &user.access_key).await?;
    txn.commit().await?;
    let items: Vec<Value> = names.into_iter().map(|n| json!({ "name": n })).collect();
    Ok(Json(json!({ "scaling_groups": items })))
}
