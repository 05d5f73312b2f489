//! create/modify/delete/purge_user. Creating a user also creates its first keypair.

use serde_json::Value;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use bai_events::admin::UserProps;
use bai_events::AdminCaller;

use super::{fail, item_json, no_match, reject, success, Bound, ACTIVE_KERNEL_SQL, USER_ITEM};

fn is_admin_role(role: &str) -> bool {
    role == "superadmin" || role == "admin"
}

/// The status to store: `status` wins, else `is_active`, else `None` (keep / default).
fn status_of(p: &UserProps) -> Option<String> {
    match (&p.status, p.is_active) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(true)) => Some("active".into()),
        (None, Some(false)) => Some("inactive".into()),
        (None, None) => None,
    }
}

/// Replaces the memberships of `user` with `groups` limited to the user's domain.
async fn set_groups(
    conn: &mut PgConnection,
    user: Uuid,
    domain: &str,
    groups: &[Uuid],
) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM association_groups_users WHERE user_id = $1")
        .bind(user)
        .execute(&mut *conn)
        .await?;
    add_groups(conn, user, domain, groups).await
}

async fn add_groups(
    conn: &mut PgConnection,
    user: Uuid,
    domain: &str,
    groups: &[Uuid],
) -> anyhow::Result<()> {
    if groups.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO association_groups_users (user_id, group_id) \
         SELECT $1, g.id FROM groups g WHERE g.id = ANY($2) AND g.domain_name = $3 ON CONFLICT DO NOTHING",
    )
    .bind(user)
    .bind(groups)
    .bind(domain)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn create(conn: &mut PgConnection, email: &str, p: &UserProps) -> anyhow::Result<Value> {
    let username = match p.username.as_deref() {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => email.to_string(),
    };
    let status = status_of(p).unwrap_or_else(|| "active".into());
    let role = p.role.clone().unwrap_or_else(|| "user".into());
    let domain = p.domain_name.clone().unwrap_or_default();
    let uuid: Uuid = sqlx::query_scalar(
        "INSERT INTO users (username, email, password, need_password_change, full_name, description, \
         status, status_info, domain_name, role) \
         VALUES ($1, $2, $3, $4, $5, $6, $7::userstatus, 'admin-requested', $8, $9::userrole) RETURNING uuid",
    )
    .bind(&username)
    .bind(email)
    .bind(&p.password_hash)
    .bind(p.need_password_change)
    .bind(&p.full_name)
    .bind(&p.description)
    .bind(&status)
    .bind(&domain)
    .bind(&role)
    .fetch_one(&mut *conn)
    .await?;
    // The initial keypair (21.03: policy `default`, rate limit 10000).
    let (ak, sk) = bai_core::keypair::generate_keypair();
    sqlx::query(
        "INSERT INTO keypairs (user_id, access_key, secret_key, is_active, is_admin, resource_policy, \
         rate_limit, concurrency_used, num_queries, \"user\") VALUES ($1, $2, $3, $4, $5, 'default', 10000, 0, 0, $6)",
    )
    .bind(email)
    .bind(&ak)
    .bind(&sk)
    .bind(status == "active")
    .bind(is_admin_role(&role))
    .bind(uuid)
    .execute(&mut *conn)
    .await?;
    if let Some(groups) = &p.group_ids {
        add_groups(conn, uuid, &domain, groups).await?;
    }
    let item = item_json(conn, USER_ITEM, Bound::Uuid(uuid)).await?;
    Ok(success(item))
}

pub async fn modify(conn: &mut PgConnection, email: &str, p: &UserProps) -> anyhow::Result<Value> {
    let status = status_of(p);
    let nothing = p.username.is_none()
        && p.password_hash.is_none()
        && p.need_password_change.is_none()
        && p.full_name.is_none()
        && p.description.is_none()
        && status.is_none()
        && p.domain_name.is_none()
        && p.role.is_none();
    if nothing && p.group_ids.is_none() {
        return Ok(fail("nothing to update"));
    }
    let current: Option<(Uuid, String, String, Option<String>)> = sqlx::query_as(
        "SELECT uuid, status::text, coalesce(role::text, 'user'), domain_name FROM users WHERE email = $1 FOR UPDATE",
    )
    .bind(email)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((uuid, prev_status, prev_role, prev_domain)) = current else {
        return Ok(no_match());
    };
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new("UPDATE users SET modified_at = now()");
    if let Some(v) = &p.username {
        qb.push(", username = ").push_bind(v.clone());
    }
    if let Some(v) = &p.password_hash {
        qb.push(", password = ").push_bind(v.clone());
    }
    if let Some(v) = p.need_password_change {
        qb.push(", need_password_change = ").push_bind(v);
    }
    if let Some(v) = &p.full_name {
        qb.push(", full_name = ").push_bind(v.clone());
    }
    if let Some(v) = &p.description {
        qb.push(", description = ").push_bind(v.clone());
    }
    if let Some(v) = &status {
        qb.push(", status = ")
            .push_bind(v.clone())
            .push("::userstatus");
        if v != &prev_status {
            qb.push(", status_info = 'admin-requested'");
        }
    }
    if let Some(v) = &p.domain_name {
        qb.push(", domain_name = ").push_bind(v.clone());
    }
    if let Some(v) = &p.role {
        qb.push(", role = ").push_bind(v.clone()).push("::userrole");
    }
    qb.push(" WHERE uuid = ").push_bind(uuid);
    qb.build().execute(&mut *conn).await?;

    // Keypairs follow a role change.
    if let Some(new_role) = &p.role {
        if new_role != &prev_role {
            let best: Option<String> = sqlx::query_scalar(
                "SELECT access_key FROM keypairs WHERE \"user\" = $1 \
                 ORDER BY is_admin DESC NULLS LAST, is_active DESC NULLS LAST, created_at LIMIT 1",
            )
            .bind(uuid)
            .fetch_optional(&mut *conn)
            .await?;
            if is_admin_role(new_role) {
                if let Some(ak) = best {
                    sqlx::query("UPDATE keypairs SET is_admin = true, is_active = true, modified_at = now() WHERE access_key = $1")
                        .bind(ak)
                        .execute(&mut *conn)
                        .await?;
                }
            } else if is_admin_role(&prev_role) {
                if let Some(ak) = best {
                    sqlx::query("UPDATE keypairs SET is_admin = false, modified_at = now() WHERE access_key = $1")
                        .bind(&ak)
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query(
                        "UPDATE keypairs SET is_active = false, modified_at = now() \
                         WHERE \"user\" = $1 AND access_key <> $2 AND is_admin AND is_active",
                    )
                    .bind(uuid)
                    .bind(&ak)
                    .execute(&mut *conn)
                    .await?;
                }
            }
        }
    }
    let domain_changed = p.domain_name.is_some() && p.domain_name != prev_domain;
    let domain = p.domain_name.clone().or(prev_domain).unwrap_or_default();
    match &p.group_ids {
        Some(groups) => set_groups(conn, uuid, &domain, groups).await?,
        None if domain_changed => set_groups(conn, uuid, &domain, &[]).await?,
        None => {}
    }
    let item = item_json(conn, USER_ITEM, Bound::Uuid(uuid)).await?;
    Ok(success(item))
}

/// Soft delete: keypairs deactivated, status `deleted`.
pub async fn delete(conn: &mut PgConnection, email: &str) -> anyhow::Result<Value> {
    let uuid: Option<Uuid> = sqlx::query_scalar(
        "UPDATE users SET status = 'deleted', status_info = 'admin-requested', modified_at = now() \
         WHERE email = $1 RETURNING uuid",
    )
    .bind(email)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(uuid) = uuid else {
        return Ok(no_match());
    };
    sqlx::query("UPDATE keypairs SET is_active = false, modified_at = now() WHERE \"user\" = $1")
        .bind(uuid)
        .execute(conn)
        .await?;
    Ok(success(None))
}

/// Hard delete of the user and everything that is only theirs.
pub async fn purge(
    conn: &mut PgConnection,
    caller: &AdminCaller,
    email: &str,
    purge_shared: bool,
) -> anyhow::Result<Value> {
    let uuid: Option<Uuid> =
        sqlx::query_scalar("SELECT uuid FROM users WHERE email = $1 FOR UPDATE")
            .bind(email)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(uuid) = uuid else {
        return Ok(no_match());
    };
    let active: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM kernels WHERE user_uuid = $1 AND {ACTIVE_KERNEL_SQL}"
    ))
    .bind(uuid)
    .fetch_one(&mut *conn)
    .await?;
    if active > 0 {
        return Ok(reject(
            "User has some active kernels. Terminate them first.",
        ));
    }
    if !purge_shared {
        // Shared folders go to the purging admin; a name clash gets a `-<10 hex>` suffix.
        let shared: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT v.id, v.name FROM vfolders v WHERE v.\"user\" = $1 \
             AND EXISTS (SELECT 1 FROM vfolder_permissions p WHERE p.vfolder = v.id)",
        )
        .bind(uuid)
        .fetch_all(&mut *conn)
        .await?;
        for (id, name) in shared {
            let clash: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM vfolders WHERE \"user\" = $1 AND name = $2)",
            )
            .bind(caller.user_uuid)
            .bind(&name)
            .fetch_one(&mut *conn)
            .await?;
            let new_name = if clash {
                format!("{name}-{}", &Uuid::new_v4().simple().to_string()[..10])
            } else {
                name
            };
            sqlx::query("UPDATE vfolders SET \"user\" = $2, name = $3 WHERE id = $1")
                .bind(id)
                .bind(caller.user_uuid)
                .bind(&new_name)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM vfolder_permissions WHERE vfolder = $1 AND \"user\" = $2")
                .bind(id)
                .bind(caller.user_uuid)
                .execute(&mut *conn)
                .await?;
        }
    }
    for sql in [
        "DELETE FROM vfolder_permissions WHERE \"user\" = $1",
        "DELETE FROM vfolders WHERE \"user\" = $1",
        "DELETE FROM kernels WHERE user_uuid = $1",
        "DELETE FROM session_templates WHERE user_uuid = $1",
        "UPDATE error_logs SET \"user\" = NULL WHERE \"user\" = $1",
        "DELETE FROM keypairs WHERE \"user\" = $1",
        "DELETE FROM users WHERE uuid = $1",
    ] {
        sqlx::query(sql).bind(uuid).execute(&mut *conn).await?;
    }
    Ok(success(None))
}
