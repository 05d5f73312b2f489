//! Scaling groups and their associations with domains, groups and keypairs.

use serde_json::{json, Value};
use sqlx::{PgConnection, Postgres, QueryBuilder};

use bai_events::admin::ScalingGroupProps;

use super::{item_json, no_match, success, Bound, SGROUP_ITEM};

pub async fn create(
    conn: &mut PgConnection,
    name: &str,
    p: &ScalingGroupProps,
) -> anyhow::Result<Value> {
    sqlx::query(
        "INSERT INTO scaling_groups (name, description, is_active, driver, driver_opts, scheduler, scheduler_opts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(name)
    .bind(&p.description)
    .bind(p.is_active.unwrap_or(true))
    .bind(p.driver.clone().unwrap_or_default())
    .bind(p.driver_opts.clone().unwrap_or_else(|| json!({})))
    .bind(p.scheduler.clone().unwrap_or_default())
    .bind(p.scheduler_opts.clone().unwrap_or_else(|| json!({})))
    .execute(&mut *conn)
    .await?;
    let item = item_json(conn, SGROUP_ITEM, Bound::Text(name.to_string())).await?;
    Ok(success(item))
}

pub async fn modify(
    conn: &mut PgConnection,
    name: &str,
    p: &ScalingGroupProps,
) -> anyhow::Result<Value> {
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new("UPDATE scaling_groups SET name = name");
    if let Some(v) = &p.description {
        qb.push(", description = ").push_bind(v.clone());
    }
    if let Some(v) = p.is_active {
        qb.push(", is_active = ").push_bind(v);
    }
    if let Some(v) = &p.driver {
        qb.push(", driver = ").push_bind(v.clone());
    }
    if let Some(v) = &p.driver_opts {
        qb.push(", driver_opts = ").push_bind(v.clone());
    }
    if let Some(v) = &p.scheduler {
        qb.push(", scheduler = ").push_bind(v.clone());
    }
    if let Some(v) = &p.scheduler_opts {
        qb.push(", scheduler_opts = ").push_bind(v.clone());
    }
    qb.push(" WHERE name = ").push_bind(name.to_string());
    let done = qb.build().execute(conn).await?.rows_affected();
    Ok(if done == 0 { no_match() } else { success(None) })
}

pub async fn delete(conn: &mut PgConnection, name: &str) -> anyhow::Result<Value> {
    let done = sqlx::query("DELETE FROM scaling_groups WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(if done == 0 { no_match() } else { success(None) })
}

/// Inserts one association row; a duplicate is an integrity error, as in the original.
pub async fn associate(
    conn: &mut PgConnection,
    table: &'static str,
    column: &'static str,
    scaling_group: &str,
    key: Bound,
) -> anyhow::Result<Value> {
    let sql = format!("INSERT INTO {table} (scaling_group, {column}) VALUES ($1, $2)");
    let q = sqlx::query(&sql).bind(scaling_group);
    let q = match key {
        Bound::Text(t) => q.bind(t),
        Bound::Uuid(u) => q.bind(u),
    };
    q.execute(conn).await?;
    Ok(success(None))
}

/// Deletes one association (or all of a key's when `scaling_group` is `None`).
pub async fn disassociate(
    conn: &mut PgConnection,
    table: &'static str,
    column: &'static str,
    scaling_group: Option<&String>,
    key: Bound,
) -> anyhow::Result<Value> {
    let sql = match scaling_group {
        Some(_) => format!("DELETE FROM {table} WHERE {column} = $1 AND scaling_group = $2"),
        None => format!("DELETE FROM {table} WHERE {column} = $1"),
    };
    let q = sqlx::query(&sql);
    let q = match key {
        Bound::Text(t) => q.bind(t),
        Bound::Uuid(u) => q.bind(u),
    };
    let q = match scaling_group {
        Some(sg) => q.bind(sg.clone()),
        None => q,
    };
    let done = q.execute(conn).await?.rows_affected();
    // Disassociating everything from a key that has nothing is still a success.
    Ok(if done == 0 && scaling_group.is_some() {
        no_match()
    } else {
        success(None)
    })
}
