//! create/modify/delete_keypair.

use serde_json::Value;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use bai_events::admin::KeyPairProps;

use super::{fail, item_json, no_match, success, Bound, KEYPAIR_ITEM};

/// `user_id` is the owner's email. Keys are generated here (AKIA + base32, 40-char
/// URL-safe secret); the whole effect commits once per command id.
pub async fn create(
    conn: &mut PgConnection,
    user_id: &str,
    p: &KeyPairProps,
) -> anyhow::Result<Value> {
    let owner: Option<Uuid> = sqlx::query_scalar("SELECT uuid FROM users WHERE email = $1")
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(owner) = owner else {
        return Ok(fail(format!("User not found: {user_id}")));
    };
    let (ak, sk) = bai_core::keypair::generate_keypair();
    sqlx::query(
        "INSERT INTO keypairs (user_id, access_key, secret_key, is_active, is_admin, resource_policy, \
         rate_limit, concurrency_used, num_queries, \"user\") VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0, $8)",
    )
    .bind(user_id)
    .bind(&ak)
    .bind(&sk)
    .bind(p.is_active.unwrap_or(false))
    .bind(p.is_admin.unwrap_or(false))
    .bind(p.resource_policy.clone().unwrap_or_else(|| "default".into()))
    .bind(p.rate_limit)
    .bind(owner)
    .execute(&mut *conn)
    .await?;
    let item = item_json(conn, KEYPAIR_ITEM, Bound::Text(ak)).await?;
    Ok(success(item))
}

pub async fn modify(
    conn: &mut PgConnection,
    access_key: &str,
    p: &KeyPairProps,
) -> anyhow::Result<Value> {
    let mut qb: QueryBuilder<Postgres> =
        QueryBuilder::new("UPDATE keypairs SET modified_at = now()");
    if let Some(v) = p.is_active {
        qb.push(", is_active = ").push_bind(v);
    }
    if let Some(v) = p.is_admin {
        qb.push(", is_admin = ").push_bind(v);
    }
    if let Some(v) = &p.resource_policy {
        qb.push(", resource_policy = ").push_bind(v.clone());
    }
    if let Some(v) = p.rate_limit {
        qb.push(", rate_limit = ").push_bind(v);
    }
    qb.push(" WHERE access_key = ")
        .push_bind(access_key.to_string());
    let done = qb.build().execute(conn).await?.rows_affected();
    Ok(if done == 0 { no_match() } else { success(None) })
}

pub async fn delete(conn: &mut PgConnection, access_key: &str) -> anyhow::Result<Value> {
    let done = sqlx::query("DELETE FROM keypairs WHERE access_key = $1")
        .bind(access_key)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(if done == 0 { no_match() } else { success(None) })
}
