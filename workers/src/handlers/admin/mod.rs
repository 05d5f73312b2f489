//! Handlers of admin commands (GraphQL mutations).
//!
//! Each database mutation runs in one SERIALIZABLE transaction through
//! [`crate::idempotency::run_once`], so a redelivered command has exactly one effect and
//! its retry answers with the stored payload. Inside that transaction the mutation itself
//! runs under a SAVEPOINT: an integrity error (duplicate key, foreign key, check) rolls
//! back just the mutation and becomes the original's `{ok: false, msg: "integrity error:
//! ..."}` payload, while the command is still recorded as processed. Serialization
//! failures and deadlocks are propagated so the whole transaction is retried.
//!
//! Results are the original's payloads: `{"ok": bool, "msg": str, "item": {...}?}`, or
//! `{"__rejected": msg}` for failures the original raised as GraphQL errors.

mod domain;
mod group;
mod image;
mod keypair;
mod policy;
mod sgroup;
mod user;

use std::sync::Arc;

use serde_json::{json, Value};
use sqlx::{Acquire, PgConnection};

use bai_events::admin::REJECTED_KEY;
use bai_events::{AdminCommand, AdminOp, Command, CommandReply, Envelope};

use crate::idempotency::run_once;
use crate::runtime::{HandlerError, WorkerContext};

/// Handles one admin command.
pub async fn handle(
    ctx: &Arc<WorkerContext>,
    env: &Envelope<Command>,
    cmd: &AdminCommand,
) -> Result<CommandReply, HandlerError> {
    tracing::info!(mutation = cmd.field_name(), caller = %cmd.caller.email, "admin command");
    let result = if cmd.op.is_etcd_op() {
        image::handle(ctx, env.id, cmd).await?
    } else {
        let cmd = Arc::new(cmd.clone());
        run_once(&ctx.db, env.id, "admin", move |txn| {
            let cmd = cmd.clone();
            Box::pin(async move { guarded(txn, &cmd).await })
        })
        .await
        .map_err(HandlerError::from_txn)?
        .into_value()
    };
    Ok(CommandReply::Ok { result })
}

/// Runs the mutation under a savepoint and maps integrity errors to payloads.
async fn guarded(conn: &mut PgConnection, cmd: &AdminCommand) -> anyhow::Result<Value> {
    let mut sp = conn.begin().await?;
    match apply(&mut sp, cmd).await {
        Ok(v) => {
            if v.get("ok").and_then(Value::as_bool) == Some(true) {
                sp.commit().await?;
            } else {
                // A refusal leaves nothing behind, even if the handler wrote before deciding.
                sp.rollback().await?;
            }
            Ok(v)
        }
        Err(e) => {
            let db = e
                .chain()
                .find_map(|c| c.downcast_ref::<sqlx::Error>())
                .and_then(|s| s.as_database_error())
                .map(|d| {
                    (
                        d.code().map(|c| c.to_string()).unwrap_or_default(),
                        d.message().to_string(),
                    )
                });
            match db {
                Some((code, message)) if code.starts_with("23") => {
                    sp.rollback().await?;
                    Ok(fail(format!("integrity error: {message}")))
                }
                Some((code, _)) if bai_core::db::is_retryable_sqlstate(&code) => Err(e),
                Some((code, message))
                    if !code.starts_with("08")
                        && !code.starts_with("57")
                        && !code.starts_with("53") =>
                {
                    sp.rollback().await?;
                    Ok(fail(format!("unexpected error: {message}")))
                }
                _ => Err(e),
            }
        }
    }
}

async fn apply(conn: &mut PgConnection, cmd: &AdminCommand) -> anyhow::Result<Value> {
    let c = &cmd.caller;
    match &cmd.op {
        AdminOp::CreateDomain { name, props } => domain::create(conn, name, props).await,
        AdminOp::ModifyDomain { name, props } => domain::modify(conn, name, props).await,
        AdminOp::DeleteDomain { name } => domain::delete(conn, name).await,
        AdminOp::PurgeDomain { name } => domain::purge(conn, name).await,
        AdminOp::CreateGroup { name, props } => group::create(conn, c, name, props).await,
        AdminOp::ModifyGroup { gid, props } => group::modify(conn, c, *gid, props).await,
        AdminOp::DeleteGroup { gid } => group::delete(conn, c, *gid).await,
        AdminOp::PurgeGroup { gid } => group::purge(conn, c, *gid).await,
        AdminOp::CreateUser { email, props } => user::create(conn, email, props).await,
        AdminOp::ModifyUser { email, props } => user::modify(conn, email, props).await,
        AdminOp::DeleteUser { email } => user::delete(conn, email).await,
        AdminOp::PurgeUser {
            email,
            purge_shared_vfolders,
        } => user::purge(conn, c, email, *purge_shared_vfolders).await,
        AdminOp::CreateKeypair { user_id, props } => keypair::create(conn, user_id, props).await,
        AdminOp::ModifyKeypair { access_key, props } => {
            keypair::modify(conn, access_key, props).await
        }
        AdminOp::DeleteKeypair { access_key } => keypair::delete(conn, access_key).await,
        AdminOp::CreateKeypairResourcePolicy { name, props } => {
            policy::create_policy(conn, name, props).await
        }
        AdminOp::ModifyKeypairResourcePolicy { name, props } => {
            policy::modify_policy(conn, name, props).await
        }
        AdminOp::DeleteKeypairResourcePolicy { name } => policy::delete_policy(conn, name).await,
        AdminOp::CreateResourcePreset { name, props } => {
            policy::create_preset(conn, name, props).await
        }
        AdminOp::ModifyResourcePreset { name, props } => {
            policy::modify_preset(conn, name, props).await
        }
        AdminOp::DeleteResourcePreset { name } => policy::delete_preset(conn, name).await,
        AdminOp::CreateScalingGroup { name, props } => sgroup::create(conn, name, props).await,
        AdminOp::ModifyScalingGroup { name, props } => sgroup::modify(conn, name, props).await,
        AdminOp::DeleteScalingGroup { name } => sgroup::delete(conn, name).await,
        AdminOp::AssociateScalingGroupWithDomain {
            scaling_group,
            domain,
        } => {
            sgroup::associate(
                conn,
                "sgroups_for_domains",
                "domain",
                scaling_group,
                Bound::Text(domain.clone()),
            )
            .await
        }
        AdminOp::DisassociateScalingGroupWithDomain {
            scaling_group,
            domain,
        } => {
            sgroup::disassociate(
                conn,
                "sgroups_for_domains",
                "domain",
                Some(scaling_group),
                Bound::Text(domain.clone()),
            )
            .await
        }
        AdminOp::DisassociateAllScalingGroupsWithDomain { domain } => {
            sgroup::disassociate(
                conn,
                "sgroups_for_domains",
                "domain",
                None,
                Bound::Text(domain.clone()),
            )
            .await
        }
        AdminOp::AssociateScalingGroupWithUserGroup {
            scaling_group,
            user_group,
        } => {
            sgroup::associate(
                conn,
                "sgroups_for_groups",
                "\"group\"",
                scaling_group,
                Bound::Uuid(*user_group),
            )
            .await
        }
        AdminOp::DisassociateScalingGroupWithUserGroup {
            scaling_group,
            user_group,
        } => {
            sgroup::disassociate(
                conn,
                "sgroups_for_groups",
                "\"group\"",
                Some(scaling_group),
                Bound::Uuid(*user_group),
            )
            .await
        }
        AdminOp::DisassociateAllScalingGroupsWithGroup { user_group } => {
            sgroup::disassociate(
                conn,
                "sgroups_for_groups",
                "\"group\"",
                None,
                Bound::Uuid(*user_group),
            )
            .await
        }
        AdminOp::AssociateScalingGroupWithKeypair {
            scaling_group,
            access_key,
        } => {
            sgroup::associate(
                conn,
                "sgroups_for_keypairs",
                "access_key",
                scaling_group,
                Bound::Text(access_key.clone()),
            )
            .await
        }
        AdminOp::DisassociateScalingGroupWithKeypair {
            scaling_group,
            access_key,
        } => {
            sgroup::disassociate(
                conn,
                "sgroups_for_keypairs",
                "access_key",
                Some(scaling_group),
                Bound::Text(access_key.clone()),
            )
            .await
        }
        AdminOp::AliasImage { .. }
        | AdminOp::DealiasImage { .. }
        | AdminOp::ModifyImage { .. }
        | AdminOp::ForgetImage { .. } => {
            // Routed to `image::handle` before any transaction is opened.
            Ok(fail("image mutations are not database mutations"))
        }
    }
}

/// A key value of an association table.
pub(crate) enum Bound {
    Text(String),
    Uuid(uuid::Uuid),
}

pub(crate) fn success(item: Option<Value>) -> Value {
    match item {
        Some(i) => json!({"ok": true, "msg": "success", "item": i}),
        None => json!({"ok": true, "msg": "success"}),
    }
}

pub(crate) fn fail(msg: impl Into<String>) -> Value {
    json!({"ok": false, "msg": msg.into()})
}

pub(crate) fn no_match() -> Value {
    fail("no matching record")
}

pub(crate) fn no_permission(field: &str) -> Value {
    fail(format!("no permission to execute {field}"))
}

/// A failure the original raised: the API answers it as a GraphQL error.
pub(crate) fn reject(msg: impl Into<String>) -> Value {
    json!({ REJECTED_KEY: msg.into() })
}

/// `SELECT to_jsonb(x) FROM (<select>) x` with one bind: the item of a payload, in the
/// same columns the API's row types read.
pub(crate) async fn item_json(
    conn: &mut PgConnection,
    select: &str,
    key: Bound,
) -> anyhow::Result<Option<Value>> {
    let sql = format!("SELECT to_jsonb(x) FROM ({select}) x");
    let q = sqlx::query_scalar::<_, Value>(&sql);
    let q = match key {
        Bound::Text(t) => q.bind(t),
        Bound::Uuid(u) => q.bind(u),
    };
    Ok(q.fetch_optional(conn).await?)
}

/// Columns returned as the `domain` item.
pub(crate) const DOMAIN_ITEM: &str = "SELECT name, description, is_active, created_at, modified_at, \
    total_resource_slots, allowed_vfolder_hosts, allowed_docker_registries, integration_id FROM domains WHERE name = $1";
pub(crate) const GROUP_ITEM: &str = "SELECT id, name, description, is_active, created_at, modified_at, \
    integration_id, domain_name, total_resource_slots, allowed_vfolder_hosts FROM groups WHERE id = $1";
pub(crate) const USER_ITEM: &str = "SELECT uuid, username, email, need_password_change, full_name, description, \
    status::text AS status, status_info, created_at, modified_at, domain_name, role::text AS role, integration_id \
    FROM users WHERE uuid = $1";
pub(crate) const KEYPAIR_ITEM: &str = "SELECT k.user_id, k.access_key, k.secret_key, k.is_active, k.is_admin, \
    k.resource_policy, k.created_at, k.last_used, k.concurrency_used, k.rate_limit, k.\"user\", k.ssh_public_key, \
    u.email AS owner_email, u.full_name AS owner_full_name \
    FROM keypairs k LEFT JOIN users u ON u.uuid = k.\"user\" WHERE k.access_key = $1";
pub(crate) const POLICY_ITEM: &str = "SELECT name, created_at, default_for_unspecified::text AS default_for_unspecified, \
    total_resource_slots, max_concurrent_sessions, max_containers_per_session, max_vfolder_count, max_vfolder_size, \
    idle_timeout, allowed_vfolder_hosts FROM keypair_resource_policies WHERE name = $1";
pub(crate) const PRESET_ITEM: &str =
    "SELECT name, resource_slots, shared_memory FROM resource_presets WHERE name = $1";
pub(crate) const SGROUP_ITEM: &str =
    "SELECT name, description, is_active, created_at, driver, driver_opts, scheduler, \
    scheduler_opts FROM scaling_groups WHERE name = $1";

/// Statuses in which a kernel still holds resources or may be running.
pub(crate) const ACTIVE_KERNEL_SQL: &str = "status NOT IN ('TERMINATED', 'CANCELLED')";
