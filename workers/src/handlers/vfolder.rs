//! Virtual-folder writes (`Command::Vfolder`).
//!
//! Every rule that depends on database state (accessibility, duplicate names, the folder
//! count limit, allowed hosts, invitation states) is checked inside the SERIALIZABLE
//! transaction that writes, through [`run_once`]; a refusal is stored as the command's
//! result (`{"rejected": {...}}`) so a redelivery answers the same. Storage-proxy calls
//! happen outside the transaction: folder creation right after the commit (with the row
//! removed again if the proxy refuses), folder deletion after the row is gone (the proxy's
//! delete is idempotent), and the clone copy in a background task started by the API.

use std::sync::Arc;

use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use bai_core::vfolder::{self as vf, Caller, Perm};
use bai_events::{Command, CommandReply, Envelope, VfolderCommand, VfolderOp};
use bai_storage::client::{parse_host, StorageError};
use bai_storage::registry::StorageProxies;

use crate::agents::derived_id;
use crate::idempotency::run_once;
use crate::runtime::{HandlerError, WorkerContext};

/// The storage proxies of this process (see [`StorageProxies::shared`]).
pub fn proxies(etcd: &bai_core::etcd::Etcd) -> StorageProxies {
    StorageProxies::shared(etcd)
}

fn rejected(status: u16, error_type: &str, msg: impl Into<String>) -> Value {
    json!({"rejected": {"status": status, "type": error_type, "msg": msg.into()}})
}

fn invalid(msg: impl Into<String>) -> Value {
    rejected(400, "invalid-api-params", msg)
}

fn not_found_vf(msg: &str) -> Value {
    rejected(404, "vfolder-not-found", msg)
}

fn denied() -> Value {
    not_found_vf("Your operation may be permission denied.")
}

fn ok(v: Value) -> Value {
    json!({ "ok": v })
}

/// The reply for a stored result.
fn reply(v: &Value) -> CommandReply {
    if let Some(r) = v.get("rejected") {
        return CommandReply::Rejected {
            http_status: r["status"].as_u64().unwrap_or(400) as u16,
            error_type: r["type"].as_str().unwrap_or("generic-bad-request").into(),
            title: String::new(),
            msg: r["msg"].as_str().map(str::to_string),
            data: None,
        };
    }
    CommandReply::Ok {
        result: v.get("ok").cloned().unwrap_or(Value::Null),
    }
}

pub async fn handle(
    ctx: &Arc<WorkerContext>,
    env: &Envelope<Command>,
    cmd: &VfolderCommand,
) -> Result<CommandReply, HandlerError> {
    let etcd = ctx
        .etcd
        .clone()
        .ok_or_else(|| HandlerError::Permanent(anyhow::anyhow!("vfolder commands need etcd")))?;
    let types = Arc::new(
        vf::allowed_types(&etcd)
            .await
            .map_err(HandlerError::Transient)?,
    );
    let cmd = Arc::new(cmd.clone());
    let vfid = derived_id(env.id, "vfolder");
    let (c2, t2) = (cmd.clone(), types.clone());
    let done = run_once(&ctx.db, env.id, "vfolder", move |txn| {
        let (cmd, types) = (c2.clone(), t2.clone());
        Box::pin(async move { apply(txn, &cmd.caller, &types, &cmd.op, vfid).await })
    })
    .await
    .map_err(HandlerError::from_txn)?
    .into_value();
    if done.get("rejected").is_some() {
        return Ok(reply(&done));
    }
    let store = proxies(&etcd);
    match &cmd.op {
        VfolderOp::Create {
            host,
            quota,
            unmanaged_path: None,
            ..
        } => {
            if let Err(e) = create_on_proxy(&store, host, vfid, *quota).await {
                tracing::warn!(%vfid, error = %e, "storage proxy refused the folder; removing its row");
                ctx.db
                    .transact(move |txn| {
                        Box::pin(async move {
                            sqlx::query("DELETE FROM vfolders WHERE id = $1")
                                .bind(vfid)
                                .execute(&mut **txn)
                                .await?;
                            Ok(())
                        })
                    })
                    .await
                    .map_err(HandlerError::from_txn)?;
                return Ok(reply(&rejected(
                    400,
                    "vfolder-creation-failed",
                    e.to_string(),
                )));
            }
        }
        VfolderOp::Delete { .. } | VfolderOp::DeleteById { .. } => {
            // The row is gone (committed); the data follows, best effort: the proxy's
            // delete is idempotent, and a leftover directory is invisible to users.
            let host = done["ok"]["host"].as_str().unwrap_or_default().to_string();
            let id = done["ok"]["id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok());
            if let (Some(id), false) = (id, host.is_empty()) {
                match store.for_host(&host).await {
                    Ok((p, volume)) => {
                        if let Err(e) = p.client().delete_folder(&volume, id).await {
                            tracing::warn!(%id, error = %e, "could not delete folder data");
                        }
                    }
                    Err(e) => tracing::warn!(%id, error = %e, "could not delete folder data"),
                }
            }
            return Ok(CommandReply::Ok { result: json!({}) });
        }
        _ => {}
    }
    Ok(reply(&done))
}

/// Creates the folder on its proxy; a folder that already exists (a redelivery after the
/// proxy call succeeded) counts as created.
async fn create_on_proxy(
    store: &StorageProxies,
    host: &str,
    vfid: Uuid,
    quota: Option<i64>,
) -> Result<(), StorageError> {
    let (p, volume) = store.for_host(host).await?;
    let p = p.client();
    // The API keeps only positive quotas (`0` means none), so nothing is dropped here.
    let quota = quota.and_then(|q| u64::try_from(q).ok());
    match p.create_folder(&volume, vfid, quota).await {
        Ok(()) => Ok(()),
        Err(e) => match p.folder_usage(&volume, vfid).await {
            Ok(_) => Ok(()),
            Err(_) => Err(e),
        },
    }
}

async fn apply(
    conn: &mut PgConnection,
    c: &Caller,
    types: &[String],
    op: &VfolderOp,
    vfid: Uuid,
) -> anyhow::Result<Value> {
    match op {
        VfolderOp::Create {
            name,
            host,
            usage_mode,
            permission,
            unmanaged_path,
            group,
            quota: _,
            cloneable,
        } => {
            create(
                conn,
                c,
                types,
                NewFolder {
                    id: vfid,
                    name,
                    host,
                    usage_mode,
                    permission,
                    unmanaged_path: unmanaged_path.as_deref(),
                    group: group.as_deref(),
                    cloneable: *cloneable,
                },
            )
            .await
        }
        VfolderOp::Delete { name } => {
            let entries = vf::accessible(conn, c, types, Some(name)).await?;
            let Some(e) = entries.into_iter().next() else {
                return Ok(invalid("No such vfolder."));
            };
            if !e.is_owner && e.perm() != Perm::Wd {
                return Ok(invalid(
                    "Cannot delete the vfolder that is not owned by myself.",
                ));
            }
            delete_row(conn, e.id, &e.host).await
        }
        VfolderOp::DeleteById { id } => {
            let host: Option<String> =
                sqlx::query_scalar("SELECT host FROM vfolders WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
            match host {
                None => Ok(not_found_vf("No such vfolder.")),
                Some(h) => delete_row(conn, *id, &h).await,
            }
        }
        VfolderOp::Rename { name, new_name } => {
            let Some(e) = vf::find_with_perm(conn, c, types, name, Perm::Wd).await? else {
                return Ok(denied());
            };
            let all = vf::accessible(conn, c, types, None).await?;
            if all.iter().any(|x| &x.name == new_name) {
                return Ok(invalid(
                    "One of your accessible vfolders already has the name you requested.",
                ));
            }
            if !e.is_owner {
                return Ok(invalid(
                    "Cannot change the name of a vfolder that is not owned by myself.",
                ));
            }
            sqlx::query("UPDATE vfolders SET name = $2 WHERE id = $1")
                .bind(e.id)
                .bind(new_name)
                .execute(&mut *conn)
                .await?;
            Ok(ok(Value::Null))
        }
        VfolderOp::UpdateOptions {
            name,
            cloneable,
            permission,
        } => {
            let Some(e) = vf::find_with_perm(conn, c, types, name, Perm::Wd).await? else {
                return Ok(denied());
            };
            if !e.is_owner {
                return Ok(invalid(
                    "Cannot change the options of a vfolder that is not owned by myself.",
                ));
            }
            sqlx::query(
                "UPDATE vfolders SET cloneable = COALESCE($2, cloneable), \
                 permission = COALESCE($3::vfolderpermission, permission) WHERE id = $1",
            )
            .bind(e.id)
            .bind(*cloneable)
            .bind(permission.as_deref())
            .execute(&mut *conn)
            .await?;
            Ok(ok(Value::Null))
        }
        VfolderOp::Invite {
            name,
            permission,
            emails,
        } => invite(conn, c, name, permission, emails).await,
        VfolderOp::UpdateInvitation { inv_id, permission } => {
            sqlx::query(
                "UPDATE vfolder_invitations SET permission = $3::vfolderpermission, modified_at = now() \
                 WHERE id = $1 AND inviter = $2 AND state = 'pending'",
            )
            .bind(inv_id)
            .bind(&c.email)
            .bind(permission)
            .execute(&mut *conn)
            .await?;
            Ok(ok(
                json!({"msg": format!("vfolder invitation updated: {inv_id}.")}),
            ))
        }
        VfolderOp::AcceptInvitation { inv_id } => accept(conn, c, *inv_id).await,
        VfolderOp::DeleteInvitation { inv_id } => {
            let row: Option<(Option<String>, String)> = sqlx::query_as(
                "SELECT inviter, invitee FROM vfolder_invitations WHERE id = $1 AND state = 'pending'",
            )
            .bind(inv_id)
            .fetch_optional(&mut *conn)
            .await?;
            let Some((inviter, invitee)) = row else {
                return Ok(rejected(
                    404,
                    "generic-not-found",
                    "No such vfolder invitation",
                ));
            };
            let state = if inviter.as_deref() == Some(c.email.as_str()) {
                "canceled"
            } else if invitee == c.email {
                "rejected"
            } else {
                return Ok(rejected(
                    403,
                    "generic-forbidden",
                    "Cannot change other user's invitaiton",
                ));
            };
            sqlx::query(
                "UPDATE vfolder_invitations SET state = $2::vfolderinvitationstate, modified_at = now() \
                 WHERE id = $1",
            )
            .bind(inv_id)
            .bind(state)
            .execute(&mut *conn)
            .await?;
            Ok(ok(json!({})))
        }
        VfolderOp::Leave { name } => {
            let Some(e) = vf::find_with_perm(conn, c, types, name, Perm::Ro).await? else {
                return Ok(denied());
            };
            if e.ownership_type == "group" {
                return Ok(invalid("Cannot leave a group vfolder."));
            }
            if e.is_owner {
                return Ok(invalid("Cannot leave a vfolder owned by the requester."));
            }
            sqlx::query("DELETE FROM vfolder_permissions WHERE vfolder = $1 AND \"user\" = $2")
                .bind(e.id)
                .bind(c.user_uuid)
                .execute(&mut *conn)
                .await?;
            Ok(ok(json!({"msg": "left the shared vfolder"})))
        }
        VfolderOp::Share {
            name,
            permission,
            emails,
        } => share(conn, c, types, name, permission, emails).await,
        VfolderOp::Unshare { name, emails } => {
            let Some(e) = vf::find_with_perm(conn, c, types, name, Perm::Ro).await? else {
                return Ok(denied());
            };
            if e.ownership_type != "group" {
                return Ok(not_found_vf(
                    "Only project folders are directly unsharable.",
                ));
            }
            let users: Vec<(Uuid, String)> = sqlx::query_as(
                "SELECT uuid, email FROM users WHERE email = ANY($1) AND status = 'active' ORDER BY email",
            )
            .bind(emails)
            .fetch_all(&mut *conn)
            .await?;
            if users.is_empty() {
                return Ok(rejected(
                    404,
                    "generic-not-found",
                    "No such user(s) to unshare.",
                ));
            }
            let ids: Vec<Uuid> = users.iter().map(|u| u.0).collect();
            sqlx::query(
                "DELETE FROM vfolder_permissions WHERE vfolder = $1 AND \"user\" = ANY($2)",
            )
            .bind(e.id)
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
            let emails: Vec<String> = users.into_iter().map(|u| u.1).collect();
            Ok(ok(json!({ "unshared_emails": emails })))
        }
        VfolderOp::SetShared {
            vfolder,
            user,
            permission,
        } => {
            let row: Option<(Option<Uuid>, Option<Uuid>, Option<String>)> = sqlx::query_as(
                "SELECT v.\"user\", v.\"group\", g.domain_name FROM vfolders v \
                 LEFT JOIN groups g ON g.id = v.\"group\" WHERE v.id = $1",
            )
            .bind(vfolder)
            .fetch_optional(&mut *conn)
            .await?;
            let Some((owner, _group, gdomain)) = row else {
                return Ok(not_found_vf("No such vfolder."));
            };
            let allowed = c.is_superadmin()
                || owner == Some(c.user_uuid)
                || (c.is_admin && gdomain.as_deref() == Some(c.domain_name.as_str()));
            if !allowed {
                return Ok(rejected(
                    403,
                    "generic-forbidden",
                    "Cannot change the shares of a vfolder that is not yours.",
                ));
            }
            match permission {
                Some(p) => {
                    sqlx::query(
                        "UPDATE vfolder_permissions SET permission = $3::vfolderpermission \
                         WHERE vfolder = $1 AND \"user\" = $2",
                    )
                    .bind(vfolder)
                    .bind(user)
                    .bind(p)
                    .execute(&mut *conn)
                    .await?;
                }
                None => {
                    sqlx::query(
                        "DELETE FROM vfolder_permissions WHERE vfolder = $1 AND \"user\" = $2",
                    )
                    .bind(vfolder)
                    .bind(user)
                    .execute(&mut *conn)
                    .await?;
                }
            }
            Ok(ok(json!({"msg": "shared vfolder permission updated"})))
        }
        VfolderOp::Clone {
            name,
            target_name,
            target_host,
            usage_mode,
            permission,
            cloneable,
        } => {
            let Some(src) = vf::find_with_perm(conn, c, types, name, Perm::Ro).await? else {
                return Ok(denied());
            };
            if !src.cloneable {
                return Ok(rejected(
                    403,
                    "generic-forbidden",
                    "The source vfolder is not permitted to be cloned.",
                ));
            }
            let same_proxy = matches!(
                (parse_host(&src.host), parse_host(target_host)),
                (Ok((a, _)), Ok((b, _))) if a == b
            );
            if !same_proxy {
                return Ok(invalid(
                    "proxy name of source and target vfolders must be equal.",
                ));
            }
            // The proxy's clone copies within one volume (storage contract).
            if parse_host(&src.host).ok().map(|h| h.1) != parse_host(target_host).ok().map(|h| h.1)
            {
                return Ok(invalid(
                    "Cloning to another volume is not supported: use the source's volume.",
                ));
            }
            let mut v = create(
                conn,
                c,
                types,
                NewFolder {
                    id: vfid,
                    name: target_name,
                    host: target_host,
                    usage_mode,
                    permission,
                    unmanaged_path: None,
                    group: None,
                    cloneable: *cloneable,
                },
            )
            .await?;
            if let Some(o) = v.get_mut("ok") {
                o["source_id"] = json!(src.id);
                o["source_host"] = json!(src.host);
            }
            Ok(v)
        }
    }
}

struct NewFolder<'a> {
    id: Uuid,
    name: &'a str,
    host: &'a str,
    usage_mode: &'a str,
    permission: &'a str,
    unmanaged_path: Option<&'a str>,
    group: Option<&'a str>,
    cloneable: bool,
}

/// The checks and the insert of `POST /folders` (and of a clone's target).
async fn create(
    conn: &mut PgConnection,
    c: &Caller,
    types: &[String],
    f: NewFolder<'_>,
) -> anyhow::Result<Value> {
    let group_id: Option<Uuid> = match f.group {
        None => None,
        Some(g) => {
            let found: Option<Uuid> = match Uuid::parse_str(g) {
                Ok(id) => {
                    sqlx::query_scalar(
                        "SELECT id FROM groups WHERE id = $1 AND ($2 OR domain_name = $3)",
                    )
                    .bind(id)
                    .bind(c.is_superadmin())
                    .bind(&c.domain_name)
                    .fetch_optional(&mut *conn)
                    .await?
                }
                Err(_) => {
                    sqlx::query_scalar("SELECT id FROM groups WHERE domain_name = $1 AND name = $2")
                        .bind(&c.domain_name)
                        .bind(g)
                        .fetch_optional(&mut *conn)
                        .await?
                }
            };
            match found {
                Some(id) => Some(id),
                None => return Ok(rejected(404, "group-not-found", "No such user group.")),
            }
        }
    };
    let ownership = if group_id.is_some() { "group" } else { "user" };
    if !types.iter().any(|t| t == ownership) {
        return Ok(invalid(format!(
            "{ownership}-type virtual folder is not allowed."
        )));
    }
    if group_id.is_some() && !c.is_admin {
        return Ok(rejected(
            403,
            "generic-forbidden",
            "Only administrators can create group vfolders.",
        ));
    }
    if f.unmanaged_path.is_none() {
        let hosts = vf::allowed_hosts(conn, c, group_id).await?;
        if !hosts.iter().any(|h| h == f.host) {
            return Ok(invalid("You are not allowed to use this vfolder host."));
        }
    }
    let max: Option<i32> = sqlx::query_scalar(
        "SELECT max_vfolder_count FROM keypair_resource_policies WHERE name = $1",
    )
    .bind(&c.resource_policy)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(max) = max.filter(|m| *m > 0) {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM vfolders WHERE \"user\" = $1")
            .bind(c.user_uuid)
            .fetch_one(&mut *conn)
            .await?;
        if count >= max as i64 {
            return Ok(invalid("You cannot create more vfolders."));
        }
    }
    let existing = vf::accessible(conn, c, types, Some(f.name)).await?;
    if existing
        .iter()
        .any(|e| f.unmanaged_path.is_some() || e.host == f.host)
    {
        return Ok(rejected(
            400,
            "vfolder-already-exists",
            "The virtual folder already exists with the same name.",
        ));
    }
    let user = group_id.is_none().then_some(c.user_uuid);
    sqlx::query(
        "INSERT INTO vfolders (id, name, host, usage_mode, permission, last_used, creator, \
         unmanaged_path, ownership_type, \"user\", \"group\", cloneable) \
         VALUES ($1, $2, $3, $4::vfolderusagemode, $5::vfolderpermission, NULL, $6, $7, \
         $8::vfolderownershiptype, $9, $10, $11)",
    )
    .bind(f.id)
    .bind(f.name)
    .bind(if f.unmanaged_path.is_some() {
        ""
    } else {
        f.host
    })
    .bind(f.usage_mode)
    .bind(f.permission)
    .bind(&c.email)
    .bind(f.unmanaged_path)
    .bind(ownership)
    .bind(user)
    .bind(group_id)
    .bind(f.cloneable)
    .execute(&mut *conn)
    .await?;
    let mut resp = json!({
        "id": f.id.simple().to_string(),
        "name": f.name,
        "host": f.host,
        "usage_mode": f.usage_mode,
        "permission": f.permission,
        "creator": c.email,
        "ownership_type": ownership,
        "user": user.map(|u| u.to_string()),
        "group": group_id.map(|g| g.to_string()),
        "cloneable": f.cloneable,
    });
    if let Some(p) = f.unmanaged_path {
        resp["unmanaged_path"] = json!(p);
    }
    Ok(ok(resp))
}

async fn delete_row(conn: &mut PgConnection, id: Uuid, host: &str) -> anyhow::Result<Value> {
    sqlx::query("DELETE FROM vfolders WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(ok(json!({ "id": id, "host": host })))
}

async fn invite(
    conn: &mut PgConnection,
    c: &Caller,
    name: &str,
    permission: &str,
    emails: &[String],
) -> anyhow::Result<Value> {
    if name.starts_with('.') {
        return Ok(rejected(
            403,
            "generic-forbidden",
            "Cannot share private dot-prefixed vfolders.",
        ));
    }
    let vfid: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM vfolders WHERE \"user\" = $1 AND name = $2")
            .bind(c.user_uuid)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(vfid) = vfid else {
        return Ok(not_found_vf("No such vfolder."));
    };
    let invitees: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT uuid, email FROM users WHERE email = ANY($1) AND status = 'active' AND uuid <> $2 \
         ORDER BY email",
    )
    .bind(emails)
    .bind(c.user_uuid)
    .fetch_all(&mut *conn)
    .await?;
    if invitees.is_empty() {
        return Ok(rejected(
            404,
            "generic-not-found",
            "No such user to invite.",
        ));
    }
    for (uuid, _) in &invitees {
        let clash: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM vfolders v LEFT JOIN vfolder_permissions p ON p.vfolder = v.id \
             WHERE v.name = $1 AND (v.\"user\" = $2 OR p.\"user\" = $2)",
        )
        .bind(name)
        .bind(uuid)
        .fetch_one(&mut *conn)
        .await?;
        if clash > 0 {
            return Ok(rejected(
                400,
                "vfolder-already-exists",
                "The virtual folder already exists with the same name.",
            ));
        }
    }
    let mut invited = Vec::new();
    for (_, email) in &invitees {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM vfolder_invitations WHERE inviter = $1 AND invitee = $2 \
             AND vfolder = $3 AND state = 'pending'",
        )
        .bind(&c.email)
        .bind(email)
        .bind(vfid)
        .fetch_one(&mut *conn)
        .await?;
        if pending > 0 {
            continue;
        }
        sqlx::query(
            "INSERT INTO vfolder_invitations (id, permission, vfolder, inviter, invitee, state) \
             VALUES (uuid_generate_v4(), $1::vfolderpermission, $2, $3, $4, 'pending')",
        )
        .bind(permission)
        .bind(vfid)
        .bind(&c.email)
        .bind(email)
        .execute(&mut *conn)
        .await?;
        invited.push(email.clone());
    }
    Ok(ok(json!({ "invited_ids": invited })))
}

async fn accept(conn: &mut PgConnection, c: &Caller, inv_id: Uuid) -> anyhow::Result<Value> {
    // Only the invitee may accept (the original did not check; anyone knowing the id could).
    let inv: Option<(Uuid, Option<String>)> = sqlx::query_as(
        "SELECT vfolder, permission::text FROM vfolder_invitations \
         WHERE id = $1 AND state = 'pending' AND invitee = $2",
    )
    .bind(inv_id)
    .bind(&c.email)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((vfid, perm)) = inv else {
        return Ok(rejected(
            404,
            "generic-not-found",
            "No such vfolder invitation",
        ));
    };
    let name: Option<String> = sqlx::query_scalar("SELECT name FROM vfolders WHERE id = $1")
        .bind(vfid)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(name) = name else {
        return Ok(not_found_vf("No such vfolder."));
    };
    let clash: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM vfolders v LEFT JOIN vfolder_permissions p ON p.vfolder = v.id \
         WHERE v.name = $1 AND (v.\"user\" = $2 OR p.\"user\" = $2)",
    )
    .bind(&name)
    .bind(c.user_uuid)
    .fetch_one(&mut *conn)
    .await?;
    if clash > 0 {
        return Ok(rejected(
            400,
            "vfolder-already-exists",
            "The virtual folder already exists with the same name.",
        ));
    }
    sqlx::query(
        "INSERT INTO vfolder_permissions (permission, vfolder, \"user\") \
         VALUES (COALESCE($1::vfolderpermission, 'rw'), $2, $3)",
    )
    .bind(perm)
    .bind(vfid)
    .bind(c.user_uuid)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE vfolder_invitations SET state = 'accepted', modified_at = now() WHERE id = $1",
    )
    .bind(inv_id)
    .execute(&mut *conn)
    .await?;
    Ok(ok(json!({})))
}

async fn share(
    conn: &mut PgConnection,
    c: &Caller,
    types: &[String],
    name: &str,
    permission: &str,
    emails: &[String],
) -> anyhow::Result<Value> {
    let Some(e) = vf::find_with_perm(conn, c, types, name, Perm::Ro).await? else {
        return Ok(denied());
    };
    if e.ownership_type != "group" {
        return Ok(not_found_vf("Only project folders are directly sharable."));
    }
    let users: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT u.uuid, u.email FROM users u JOIN association_groups_users a ON a.user_id = u.uuid \
         WHERE u.email = ANY($1) AND u.status = 'active' AND a.group_id = $2 ORDER BY u.email",
    )
    .bind(emails)
    .bind(e.group)
    .fetch_all(&mut *conn)
    .await?;
    if users.is_empty() {
        return Ok(rejected(404, "generic-not-found", "No such user to share."));
    }
    let mut wanted: Vec<&String> = emails.iter().collect();
    wanted.sort();
    wanted.dedup();
    if users.len() < wanted.len() {
        let missing: Vec<&String> = wanted
            .into_iter()
            .filter(|w| !users.iter().any(|u| &u.1 == *w))
            .collect();
        return Ok(rejected(
            404,
            "generic-not-found",
            format!("Some users do not belong to folder's group: {missing:?}"),
        ));
    }
    for (uuid, _) in &users {
        // Re-sharing updates the permission (no unique key on the table: update, else insert).
        let updated = sqlx::query(
            "UPDATE vfolder_permissions SET permission = $3::vfolderpermission \
             WHERE vfolder = $1 AND \"user\" = $2",
        )
        .bind(e.id)
        .bind(uuid)
        .bind(permission)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if updated == 0 {
            sqlx::query(
                "INSERT INTO vfolder_permissions (permission, vfolder, \"user\") \
                 VALUES ($1::vfolderpermission, $2, $3)",
            )
            .bind(permission)
            .bind(e.id)
            .bind(uuid)
            .execute(&mut *conn)
            .await?;
        }
    }
    let emails: Vec<String> = users.into_iter().map(|u| u.1).collect();
    Ok(ok(json!({ "shared_emails": emails })))
}

/// The agent-side mounts of a session: `kernels.mounts` rows (`[name, host, id hex, perm,
/// unmanaged_path]`) with each folder's host path from its proxy (`POST /folder/mount`).
/// A proxy that cannot answer is transient: the start is retried.
pub async fn resolve_mounts(
    ctx: &Arc<WorkerContext>,
    raw: Option<&Value>,
) -> Result<Vec<bai_agent_proto::messages::Mount>, HandlerError> {
    let rows: Vec<Vec<String>> = raw
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let etcd = ctx
        .etcd
        .clone()
        .ok_or_else(|| HandlerError::Permanent(anyhow::anyhow!("vfolder mounts need etcd")))?;
    let store = proxies(&etcd);
    let mut out = Vec::new();
    for r in rows {
        let field = |i: usize| r.get(i).cloned().unwrap_or_default();
        let (name, host, id, perm, unmanaged) = (field(0), field(1), field(2), field(3), field(4));
        let host_path = if !unmanaged.is_empty() {
            unmanaged.clone()
        } else {
            let vfid = Uuid::parse_str(&id).map_err(|e| {
                HandlerError::Permanent(anyhow::anyhow!("bad vfolder id {id} in mounts: {e}"))
            })?;
            let (p, volume) = store
                .for_host(&host)
                .await
                .map_err(|e| HandlerError::Transient(e.into()))?;
            p.client()
                .mount_path(&volume, vfid)
                .await
                .map_err(|e| HandlerError::Transient(e.into()))?
        };
        out.push(bai_agent_proto::messages::Mount {
            name,
            host,
            host_path,
            perm,
            unmanaged_path: (!unmanaged.is_empty()).then_some(unmanaged),
        });
    }
    Ok(out)
}
