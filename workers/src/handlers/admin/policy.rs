//! Keypair resource policies and resource presets.

use serde_json::{json, Value};
use sqlx::{PgConnection, Postgres, QueryBuilder};

use bai_events::admin::{ResourcePolicyProps, ResourcePresetProps};

use super::{item_json, no_match, success, Bound, POLICY_ITEM, PRESET_ITEM};

pub async fn create_policy(
    conn: &mut PgConnection,
    name: &str,
    p: &ResourcePolicyProps,
) -> anyhow::Result<Value> {
    sqlx::query(
        "INSERT INTO keypair_resource_policies (name, default_for_unspecified, total_resource_slots, \
         max_concurrent_sessions, max_containers_per_session, idle_timeout, max_vfolder_count, \
         max_vfolder_size, allowed_vfolder_hosts) \
         VALUES ($1, $2::defaultforunspecified, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(name)
    .bind(p.default_for_unspecified.clone().unwrap_or_else(|| "LIMITED".into()))
    .bind(p.total_resource_slots.clone().unwrap_or_else(|| json!({})))
    .bind(p.max_concurrent_sessions)
    .bind(p.max_containers_per_session)
    .bind(p.idle_timeout)
    .bind(p.max_vfolder_count)
    .bind(p.max_vfolder_size)
    .bind(p.allowed_vfolder_hosts.clone().unwrap_or_default())
    .execute(&mut *conn)
    .await?;
    let item = item_json(conn, POLICY_ITEM, Bound::Text(name.to_string())).await?;
    Ok(success(item))
}

pub async fn modify_policy(
    conn: &mut PgConnection,
    name: &str,
    p: &ResourcePolicyProps,
) -> anyhow::Result<Value> {
    let mut qb: QueryBuilder<Postgres> =
        QueryBuilder::new("UPDATE keypair_resource_policies SET name = name");
    if let Some(v) = &p.default_for_unspecified {
        qb.push(", default_for_unspecified = ")
            .push_bind(v.clone())
            .push("::defaultforunspecified");
    }
    if let Some(v) = &p.total_resource_slots {
        qb.push(", total_resource_slots = ").push_bind(v.clone());
    }
    if let Some(v) = p.max_concurrent_sessions {
        qb.push(", max_concurrent_sessions = ").push_bind(v);
    }
    if let Some(v) = p.max_containers_per_session {
        qb.push(", max_containers_per_session = ").push_bind(v);
    }
    if let Some(v) = p.idle_timeout {
        qb.push(", idle_timeout = ").push_bind(v);
    }
    if let Some(v) = p.max_vfolder_count {
        qb.push(", max_vfolder_count = ").push_bind(v);
    }
    if let Some(v) = p.max_vfolder_size {
        qb.push(", max_vfolder_size = ").push_bind(v);
    }
    if let Some(v) = &p.allowed_vfolder_hosts {
        qb.push(", allowed_vfolder_hosts = ").push_bind(v.clone());
    }
    qb.push(" WHERE name = ").push_bind(name.to_string());
    let done = qb.build().execute(conn).await?.rows_affected();
    Ok(if done == 0 { no_match() } else { success(None) })
}

pub async fn delete_policy(conn: &mut PgConnection, name: &str) -> anyhow::Result<Value> {
    let done = sqlx::query("DELETE FROM keypair_resource_policies WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(if done == 0 { no_match() } else { success(None) })
}

pub async fn create_preset(
    conn: &mut PgConnection,
    name: &str,
    p: &ResourcePresetProps,
) -> anyhow::Result<Value> {
    sqlx::query(
        "INSERT INTO resource_presets (name, resource_slots, shared_memory) VALUES ($1, $2, $3)",
    )
    .bind(name)
    .bind(p.resource_slots.clone().unwrap_or_else(|| json!({})))
    .bind(p.shared_memory)
    .execute(&mut *conn)
    .await?;
    let item = item_json(conn, PRESET_ITEM, Bound::Text(name.to_string())).await?;
    Ok(success(item))
}

pub async fn modify_preset(
    conn: &mut PgConnection,
    name: &str,
    p: &ResourcePresetProps,
) -> anyhow::Result<Value> {
    let mut qb: QueryBuilder<Postgres> =
        QueryBuilder::new("UPDATE resource_presets SET name = name");
    if let Some(v) = &p.resource_slots {
        qb.push(", resource_slots = ").push_bind(v.clone());
    }
    if let Some(v) = p.shared_memory {
        qb.push(", shared_memory = ").push_bind(v);
    }
    qb.push(" WHERE name = ").push_bind(name.to_string());
    let done = qb.build().execute(conn).await?.rows_affected();
    Ok(if done == 0 { no_match() } else { success(None) })
}

pub async fn delete_preset(conn: &mut PgConnection, name: &str) -> anyhow::Result<Value> {
    let done = sqlx::query("DELETE FROM resource_presets WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(if done == 0 { no_match() } else { success(None) })
}
