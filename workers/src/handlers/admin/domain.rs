//! create/modify/delete/purge_domain.

use serde_json::{json, Value};
use sqlx::{PgConnection, Postgres, QueryBuilder};

use bai_events::admin::DomainProps;

use super::{item_json, no_match, reject, success, Bound, ACTIVE_KERNEL_SQL, DOMAIN_ITEM};

pub async fn create(conn: &mut PgConnection, name: &str, p: &DomainProps) -> anyhow::Result<Value> {
    sqlx::query(
        "INSERT INTO domains (name, description, is_active, total_resource_slots, allowed_vfolder_hosts, \
         allowed_docker_registries, integration_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(name)
    .bind(&p.description)
    .bind(p.is_active.unwrap_or(true))
    .bind(p.total_resource_slots.clone().unwrap_or_else(|| json!({})))
    .bind(p.allowed_vfolder_hosts.clone().unwrap_or_default())
    .bind(p.allowed_docker_registries.clone().unwrap_or_default())
    .bind(&p.integration_id)
    .execute(&mut *conn)
    .await?;
    let item = item_json(conn, DOMAIN_ITEM, Bound::Text(name.to_string())).await?;
    Ok(success(item))
}

pub async fn modify(conn: &mut PgConnection, name: &str, p: &DomainProps) -> anyhow::Result<Value> {
    let mut qb: QueryBuilder<Postgres> =
        QueryBuilder::new("UPDATE domains SET modified_at = now()");
    if let Some(v) = &p.name {
        qb.push(", name = ").push_bind(v.clone());
    }
    if let Some(v) = &p.description {
        qb.push(", description = ").push_bind(v.clone());
    }
    if let Some(v) = p.is_active {
        qb.push(", is_active = ").push_bind(v);
    }
    if let Some(v) = &p.total_resource_slots {
        qb.push(", total_resource_slots = ").push_bind(v.clone());
    }
    if let Some(v) = &p.allowed_vfolder_hosts {
        qb.push(", allowed_vfolder_hosts = ").push_bind(v.clone());
    }
    if let Some(v) = &p.allowed_docker_registries {
        qb.push(", allowed_docker_registries = ")
            .push_bind(v.clone());
    }
    if let Some(v) = &p.integration_id {
        qb.push(", integration_id = ").push_bind(v.clone());
    }
    qb.push(" WHERE name = ").push_bind(name.to_string());
    let done = qb.build().execute(&mut *conn).await?.rows_affected();
    if done == 0 {
        return Ok(no_match());
    }
    let new_name = p.name.clone().unwrap_or_else(|| name.to_string());
    let item = item_json(conn, DOMAIN_ITEM, Bound::Text(new_name)).await?;
    Ok(success(item))
}

/// Soft delete: the domain becomes inactive.
pub async fn delete(conn: &mut PgConnection, name: &str) -> anyhow::Result<Value> {
    let done =
        sqlx::query("UPDATE domains SET is_active = false, modified_at = now() WHERE name = $1")
            .bind(name)
            .execute(conn)
            .await?
            .rows_affected();
    Ok(if done == 0 { no_match() } else { success(None) })
}

/// Hard delete, refused while anything still belongs to the domain.
pub async fn purge(conn: &mut PgConnection, name: &str) -> anyhow::Result<Value> {
    let active: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM kernels WHERE domain_name = $1 AND {ACTIVE_KERNEL_SQL}"
    ))
    .bind(name)
    .fetch_one(&mut *conn)
    .await?;
    if active > 0 {
        return Ok(reject(
            "Domain has some active kernels. Terminate them first.",
        ));
    }
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE domain_name = $1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    if users > 0 {
        return Ok(reject(
            "There are users bound to the domain. Remove users first.",
        ));
    }
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM groups WHERE domain_name = $1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    if groups > 0 {
        return Ok(reject(
            "There are groups bound to the domain. Remove groups first.",
        ));
    }
    sqlx::query("DELETE FROM kernels WHERE domain_name = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM session_templates WHERE domain_name = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    let done = sqlx::query("DELETE FROM domains WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(if done == 0 { no_match() } else { success(None) })
}
