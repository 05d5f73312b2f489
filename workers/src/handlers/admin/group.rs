//! create/modify/delete/purge_group, including membership edits through modify_group.

use serde_json::{json, Value};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use bai_events::admin::GroupProps;
use bai_events::AdminCaller;

use super::{
    fail, item_json, no_match, no_permission, reject, success, Bound, ACTIVE_KERNEL_SQL, GROUP_ITEM,
};

/// A domain admin may only act on groups of their own domain (`privileged_mutation` with a
/// group target). `None` = allowed; `Some(payload)` = refused or missing.
async fn check_group_access(
    conn: &mut PgConnection,
    caller: &AdminCaller,
    gid: Uuid,
    field: &str,
) -> anyhow::Result<Option<Value>> {
    let domain: Option<String> = sqlx::query_scalar("SELECT domain_name FROM groups WHERE id = $1")
        .bind(gid)
        .fetch_optional(&mut *conn)
        .await?;
    match domain {
        _ if caller.is_superadmin() => Ok(None),
        Some(d) if caller.role == "admin" && d == caller.domain_name => Ok(None),
        _ => Ok(Some(no_permission(field))),
    }
}

pub async fn create(
    conn: &mut PgConnection,
    caller: &AdminCaller,
    name: &str,
    p: &GroupProps,
) -> anyhow::Result<Value> {
    let domain = p.domain_name.clone().unwrap_or_default();
    if !(caller.is_superadmin() || caller.role == "admin" && caller.domain_name == domain) {
        return Ok(no_permission("create_group"));
    }
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO groups (name, description, is_active, domain_name, total_resource_slots, \
         allowed_vfolder_hosts, integration_id) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(name)
    .bind(&p.description)
    .bind(p.is_active.unwrap_or(true))
    .bind(&domain)
    .bind(p.total_resource_slots.clone().unwrap_or_else(|| json!({})))
    .bind(p.allowed_vfolder_hosts.clone().unwrap_or_default())
    .bind(&p.integration_id)
    .fetch_one(&mut *conn)
    .await?;
    let item = item_json(conn, GROUP_ITEM, Bound::Uuid(id)).await?;
    Ok(success(item))
}

pub async fn modify(
    conn: &mut PgConnection,
    caller: &AdminCaller,
    gid: Uuid,
    p: &GroupProps,
) -> anyhow::Result<Value> {
    if let Some(refused) = check_group_access(conn, caller, gid, "modify_group").await? {
        return Ok(refused);
    }
    let has_fields = p.name.is_some()
        || p.description.is_some()
        || p.is_active.is_some()
        || p.domain_name.is_some()
        || p.total_resource_slots.is_some()
        || p.allowed_vfolder_hosts.is_some()
        || p.integration_id.is_some();
    let membership =
        p.user_update_mode.is_some() && p.user_uuids.as_ref().is_some_and(|u| !u.is_empty());
    if !has_fields && !membership {
        return Ok(fail("nothing to update"));
    }
    if membership {
        let users = p.user_uuids.clone().unwrap_or_default();
        match p.user_update_mode.as_deref() {
            Some("add") => {
                sqlx::query(
                    "INSERT INTO association_groups_users (user_id, group_id) \
                     SELECT u, $2 FROM unnest($1::uuid[]) AS u ON CONFLICT DO NOTHING",
                )
                .bind(&users)
                .bind(gid)
                .execute(&mut *conn)
                .await?;
            }
            Some("remove") => {
                sqlx::query("DELETE FROM association_groups_users WHERE group_id = $1 AND user_id = ANY($2)")
                    .bind(gid)
                    .bind(&users)
                    .execute(&mut *conn)
                    .await?;
            }
            _ => return Ok(fail("invalid user_update_mode")),
        }
    }
    if !has_fields {
        // Membership only: ok with no group item, as the original.
        return Ok(json!({"ok": true, "msg": "success", "item": null}));
    }
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new("UPDATE groups SET modified_at = now()");
    if let Some(v) = &p.name {
        qb.push(", name = ").push_bind(v.clone());
    }
    if let Some(v) = &p.description {
        qb.push(", description = ").push_bind(v.clone());
    }
    if let Some(v) = p.is_active {
        qb.push(", is_active = ").push_bind(v);
    }
    if let Some(v) = &p.domain_name {
        qb.push(", domain_name = ").push_bind(v.clone());
    }
    if let Some(v) = &p.total_resource_slots {
        qb.push(", total_resource_slots = ").push_bind(v.clone());
    }
    if let Some(v) = &p.allowed_vfolder_hosts {
        qb.push(", allowed_vfolder_hosts = ").push_bind(v.clone());
    }
    if let Some(v) = &p.integration_id {
        qb.push(", integration_id = ").push_bind(v.clone());
    }
    qb.push(" WHERE id = ").push_bind(gid);
    let done = qb.build().execute(&mut *conn).await?.rows_affected();
    if done == 0 {
        return Ok(no_match());
    }
    let item = item_json(conn, GROUP_ITEM, Bound::Uuid(gid)).await?;
    Ok(success(item))
}

/// Soft delete: inactive, and the integration id is released.
pub async fn delete(
    conn: &mut PgConnection,
    caller: &AdminCaller,
    gid: Uuid,
) -> anyhow::Result<Value> {
    if let Some(refused) = check_group_access(conn, caller, gid, "delete_group").await? {
        return Ok(refused);
    }
    let done = sqlx::query(
        "UPDATE groups SET is_active = false, integration_id = NULL, modified_at = now() WHERE id = $1",
    )
    .bind(gid)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(if done == 0 { no_match() } else { success(None) })
}

/// Hard delete of the group, its folders' records and its finished kernels.
pub async fn purge(
    conn: &mut PgConnection,
    caller: &AdminCaller,
    gid: Uuid,
) -> anyhow::Result<Value> {
    if let Some(refused) = check_group_access(conn, caller, gid, "purge_group").await? {
        return Ok(refused);
    }
    let active: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM kernels WHERE group_id = $1 AND {ACTIVE_KERNEL_SQL}"
    ))
    .bind(gid)
    .fetch_one(&mut *conn)
    .await?;
    if active > 0 {
        return Ok(reject(
            "Group has some active kernels. Terminate them first.",
        ));
    }
    let mounted: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM vfolder_attachment a JOIN vfolders v ON v.id = a.vfolder \
         JOIN kernels k ON k.id = a.kernel WHERE v.\"group\" = $1 AND k.{ACTIVE_KERNEL_SQL}"
    ))
    .bind(gid)
    .fetch_one(&mut *conn)
    .await?;
    if mounted > 0 {
        return Ok(reject(
            "Some of virtual folders that belong to this group are currently mounted to active sessions. \
             Terminate them first to proceed removal.",
        ));
    }
    sqlx::query("DELETE FROM vfolders WHERE \"group\" = $1")
        .bind(gid)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM kernels WHERE group_id = $1")
        .bind(gid)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM session_templates WHERE group_id = $1")
        .bind(gid)
        .execute(&mut *conn)
        .await?;
    let done = sqlx::query("DELETE FROM groups WHERE id = $1")
        .bind(gid)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(if done == 0 { no_match() } else { success(None) })
}
