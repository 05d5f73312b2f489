//! Handlers of [`RestCommand`]s (issue 11): templates, dotfiles, bootstrap scripts, error
//! logs, account operations and scheduler operations.
//!
//! Every database effect runs in one SERIALIZABLE transaction through
//! [`crate::idempotency::run_once`]; a refusal is recorded too (a redelivery answers the
//! same refusal) and is returned as `{"__rest_error": {code, msg}}` for the API to map.
//! Read-modify-write of a dotfile list happens inside that transaction, so concurrent
//! writers of one owner serialise (one of them is retried) instead of losing an update.

use std::sync::Arc;

use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use bai_events::rest::{
    pack_dotfiles, unpack_dotfiles, DotfileAction, DotfileOwner, RestCommand, RestOp, MAX_DOTFILES,
    MAX_DOTFILE_BYTES, REST_ERROR_KEY,
};
use bai_events::{Command, CommandReply, Envelope};

use crate::idempotency::run_once;
use crate::runtime::{HandlerError, WorkerContext};

/// A refusal payload; `code` names the API error (see `bai_api::routes::rest_common`).
fn refuse(code: &str, msg: impl Into<String>) -> Value {
    json!({ REST_ERROR_KEY: { "code": code, "msg": msg.into() } })
}

pub async fn handle(
    ctx: &Arc<WorkerContext>,
    env: &Envelope<Command>,
    cmd: &RestCommand,
) -> Result<CommandReply, HandlerError> {
    tracing::info!(op = cmd.op.name(), caller = %cmd.caller.email, "rest command");
    // Key generation is CPU work (RSA-2048): done before the transaction, off the async
    // threads, so a retried transaction does not pay for it again.
    let ssh = match &cmd.op {
        RestOp::RegenerateSshKeypair { .. } => Some(
            tokio::task::spawn_blocking(crate::sshkey::generate_rsa_keypair)
                .await
                .map_err(|e| HandlerError::Permanent(e.into()))?
                .map_err(HandlerError::Permanent)?,
        ),
        _ => None,
    };
    let op = Arc::new(cmd.op.clone());
    let ssh = Arc::new(ssh);
    let result = run_once(&ctx.db, env.id, "rest", move |txn| {
        let op = op.clone();
        let ssh = ssh.clone();
        Box::pin(async move { apply(txn, &op, ssh.as_ref().as_ref()).await })
    })
    .await
    .map_err(HandlerError::from_txn)?
    .into_value();
    if let RestOp::SetAgentsSchedulable {
        schedulable: true,
        agents,
    } = &cmd.op
    {
        if result.get(REST_ERROR_KEY).is_none() {
            request_passes(ctx, agents).await;
        }
    }
    Ok(CommandReply::Ok { result })
}

/// Included agents may take pending sessions now: ask for a pass of their scaling groups.
async fn request_passes(ctx: &Arc<WorkerContext>, agents: &[String]) {
    let groups: Vec<String> = match sqlx::query_scalar(
        "SELECT DISTINCT scaling_group FROM agents WHERE id = ANY($1) AND scaling_group IS NOT NULL",
    )
    .bind(agents)
    .fetch_all(ctx.db.pool())
    .await
    {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the scaling groups of included agents");
            return;
        }
    };
    for sg in groups {
        if let Err(e) = ctx.bus.request_schedule(&sg).await {
            tracing::warn!(error = %e, scaling_group = %sg, "cannot request a scheduling pass");
        }
    }
}

async fn apply(
    conn: &mut PgConnection,
    op: &RestOp,
    ssh: Option<&(String, String)>,
) -> anyhow::Result<Value> {
    match op {
        RestOp::CreateTemplate {
            id,
            kind,
            domain_name,
            group_id,
            user_uuid,
            name,
            template,
        } => {
            sqlx::query(
                "INSERT INTO session_templates (id, domain_name, group_id, user_uuid, name, \
                 template, type) VALUES ($1, $2, $3, $4, $5, $6, $7::templatetype)",
            )
            .bind(id)
            .bind(domain_name)
            .bind(group_id)
            .bind(user_uuid)
            .bind(name)
            .bind(template)
            .bind(kind.as_sql())
            .execute(&mut *conn)
            .await?;
            Ok(json!({ "id": id.simple().to_string(), "user": user_uuid.simple().to_string() }))
        }
        RestOp::UpdateTemplate {
            id,
            kind,
            name,
            template,
        } => {
            let n = sqlx::query(
                "UPDATE session_templates SET template = $2, name = $3 \
                 WHERE id = $1 AND is_active AND type = $4::templatetype",
            )
            .bind(id)
            .bind(template)
            .bind(name)
            .bind(kind.as_sql())
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if n == 0 {
                return Ok(refuse("template-not-found", "No such template."));
            }
            Ok(json!({ "success": true }))
        }
        RestOp::DeleteTemplate { id, kind } => {
            let n = sqlx::query(
                "UPDATE session_templates SET is_active = false \
                 WHERE id = $1 AND is_active AND type = $2::templatetype",
            )
            .bind(id)
            .bind(kind.as_sql())
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if n == 0 {
                return Ok(refuse("template-not-found", "No such template."));
            }
            Ok(json!({ "success": true }))
        }
        RestOp::Dotfile { owner, action } => dotfile(conn, owner, action).await,
        RestOp::SetBootstrapScript { access_key, script } => {
            sqlx::query("UPDATE keypairs SET bootstrap_script = $2 WHERE access_key = $1")
                .bind(access_key)
                .bind(script)
                .execute(&mut *conn)
                .await?;
            Ok(json!({}))
        }
        RestOp::PostErrorLog {
            id,
            user,
            severity,
            source,
            message,
            context_lang,
            context_env,
            request_url,
            request_status,
            traceback,
        } => {
            sqlx::query(
                "INSERT INTO error_logs (id, severity, source, \"user\", message, context_lang, \
                 context_env, request_url, request_status, traceback) \
                 VALUES ($1, $2::errorlog_severity, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(id)
            .bind(severity)
            .bind(source)
            .bind(user)
            .bind(message)
            .bind(context_lang)
            .bind(context_env)
            .bind(request_url)
            .bind(request_status)
            .bind(traceback)
            .execute(&mut *conn)
            .await?;
            Ok(json!({ "success": true }))
        }
        RestOp::MarkErrorLogsRead { ids } => {
            sqlx::query("UPDATE error_logs SET is_read = true WHERE id = ANY($1) AND NOT is_read")
                .bind(ids)
                .execute(&mut *conn)
                .await?;
            Ok(json!({ "success": true }))
        }
        RestOp::ClearErrorLog { id } => {
            let n = sqlx::query("UPDATE error_logs SET is_cleared = true WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if n == 0 {
                return Ok(refuse("not-found", "No such error log."));
            }
            Ok(json!({ "success": true }))
        }
        RestOp::Signup {
            domain,
            email,
            username,
            password_hash,
            full_name,
            description,
            access_key,
            secret_key,
            group,
        } => {
            let exists: Option<Uuid> = sqlx::query_scalar(
                "SELECT uuid FROM users WHERE email = $1 OR username = $2 LIMIT 1",
            )
            .bind(email)
            .bind(username)
            .fetch_optional(&mut *conn)
            .await?;
            if exists.is_some() {
                return Ok(refuse("bad-request", "Email already exists"));
            }
            let domain_ok: Option<String> =
                sqlx::query_scalar("SELECT name FROM domains WHERE name = $1 AND is_active")
                    .bind(domain)
                    .fetch_optional(&mut *conn)
                    .await?;
            if domain_ok.is_none() {
                return Ok(refuse("bad-request", "Invalid domain"));
            }
            let uuid: Uuid = sqlx::query_scalar(
                "INSERT INTO users (username, email, password, need_password_change, full_name, \
                 description, status, status_info, domain_name, role) \
                 VALUES ($1, $2, $3, false, $4, $5, 'active', 'user-signup', $6, 'user') RETURNING uuid",
            )
            .bind(username)
            .bind(email)
            .bind(password_hash)
            .bind(full_name)
            .bind(description)
            .bind(domain)
            .fetch_one(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO keypairs (user_id, access_key, secret_key, is_active, is_admin, \
                 resource_policy, rate_limit, num_queries, \"user\", concurrency_used) \
                 VALUES ($1, $2, $3, true, false, 'default', 1000, 0, $4, 0)",
            )
            .bind(email)
            .bind(access_key)
            .bind(secret_key)
            .bind(uuid)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO association_groups_users (user_id, group_id) \
                 SELECT $1, id FROM groups WHERE domain_name = $2 AND name = $3 \
                 ON CONFLICT DO NOTHING",
            )
            .bind(uuid)
            .bind(domain)
            .bind(group)
            .execute(&mut *conn)
            .await?;
            Ok(json!({ "access_key": access_key, "secret_key": secret_key }))
        }
        RestOp::Signout { user_uuid, email } => {
            sqlx::query(
                "UPDATE users SET status = 'inactive', modified_at = now() WHERE uuid = $1",
            )
            .bind(user_uuid)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE keypairs SET is_active = false, modified_at = now() \
                 WHERE \"user\" = $1 OR user_id = $2",
            )
            .bind(user_uuid)
            .bind(email)
            .execute(&mut *conn)
            .await?;
            Ok(json!({}))
        }
        RestOp::UpdatePassword {
            user_uuid,
            password_hash,
        } => {
            sqlx::query(
                "UPDATE users SET password = $2, need_password_change = false, \
                 modified_at = now() WHERE uuid = $1",
            )
            .bind(user_uuid)
            .bind(password_hash)
            .execute(&mut *conn)
            .await?;
            Ok(json!({}))
        }
        RestOp::RegenerateSshKeypair { access_key } => {
            let Some((public, private)) = ssh else {
                anyhow::bail!("no generated key");
            };
            sqlx::query(
                "UPDATE keypairs SET ssh_public_key = $2, ssh_private_key = $3, \
                 modified_at = now() WHERE access_key = $1",
            )
            .bind(access_key)
            .bind(public)
            .bind(private)
            .execute(&mut *conn)
            .await?;
            // The private key stays out of the stored result and the reply: the API reads
            // it back from the keypair row.
            Ok(json!({ "ssh_public_key": public }))
        }
        RestOp::SetAgentsSchedulable {
            agents,
            schedulable,
        } => {
            // All or nothing, as the original's single transaction: check every id first.
            let known: Vec<String> = sqlx::query_scalar("SELECT id FROM agents WHERE id = ANY($1)")
                .bind(agents)
                .fetch_all(&mut *conn)
                .await?;
            if let Some(missing) = agents.iter().find(|a| !known.contains(a)) {
                return Ok(refuse("instance-not-found", missing.clone()));
            }
            sqlx::query("UPDATE agents SET schedulable = $2 WHERE id = ANY($1)")
                .bind(agents)
                .bind(schedulable)
                .execute(&mut *conn)
                .await?;
            Ok(json!({}))
        }
    }
}

async fn dotfile(
    conn: &mut PgConnection,
    owner: &DotfileOwner,
    action: &DotfileAction,
) -> anyhow::Result<Value> {
    let (select, update, key): (&str, &str, Bound) = match owner {
        DotfileOwner::User { access_key, .. } => (
            "SELECT dotfiles FROM keypairs WHERE access_key = $1",
            "UPDATE keypairs SET dotfiles = $2 WHERE access_key = $1",
            Bound::Text(access_key.clone()),
        ),
        DotfileOwner::Domain { name } => (
            "SELECT dotfiles FROM domains WHERE name = $1",
            "UPDATE domains SET dotfiles = $2 WHERE name = $1",
            Bound::Text(name.clone()),
        ),
        DotfileOwner::Group { id } => (
            "SELECT dotfiles FROM groups WHERE id = $1",
            "UPDATE groups SET dotfiles = $2 WHERE id = $1",
            Bound::Uuid(*id),
        ),
    };
    let q = sqlx::query_scalar::<_, Vec<u8>>(select);
    let raw = match &key {
        Bound::Text(t) => q.bind(t.clone()),
        Bound::Uuid(u) => q.bind(*u),
    }
    .fetch_optional(&mut *conn)
    .await?;
    let Some(raw) = raw else {
        return Ok(refuse("owner-not-found", "No such dotfile owner."));
    };
    let mut files = unpack_dotfiles(&raw);
    match action {
        DotfileAction::Create(f) => {
            if raw.len() >= MAX_DOTFILE_BYTES {
                return Ok(refuse(
                    "dotfile-creation-failed",
                    "No leftover space for dotfile storage",
                ));
            }
            if files.len() >= MAX_DOTFILES {
                return Ok(refuse(
                    "dotfile-creation-failed",
                    "Dotfile creation limit reached",
                ));
            }
            let clash: Option<Uuid> = match owner {
                DotfileOwner::User { user_uuid, .. } => {
                    sqlx::query_scalar(
                        "SELECT v.id FROM vfolders v WHERE v.name = $1 AND (v.\"user\" = $2 \
                         OR v.\"group\" IN (SELECT group_id FROM association_groups_users \
                         WHERE user_id = $2) OR v.id IN (SELECT vfolder FROM vfolder_permissions \
                         WHERE \"user\" = $2)) LIMIT 1",
                    )
                    .bind(&f.path)
                    .bind(user_uuid)
                    .fetch_optional(&mut *conn)
                    .await?
                }
                DotfileOwner::Group { id } => {
                    sqlx::query_scalar(
                        "SELECT id FROM vfolders WHERE name = $1 AND \"group\" = $2 LIMIT 1",
                    )
                    .bind(&f.path)
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?
                }
                DotfileOwner::Domain { .. } => None,
            };
            if clash.is_some() {
                return Ok(refuse(
                    "invalid-api-params",
                    "dotfile path conflicts with your dot-prefixed vfolder",
                ));
            }
            if files.iter().any(|x| x.path == f.path) {
                return Ok(refuse("dotfile-already-exists", "Dotfile already exists."));
            }
            files.push(f.clone());
        }
        DotfileAction::Update(f) => {
            let Some(slot) = files.iter_mut().find(|x| x.path == f.path) else {
                return Ok(refuse("dotfile-not-found", "Requested Dotfile not found."));
            };
            *slot = f.clone();
        }
        DotfileAction::Delete { path } => {
            let before = files.len();
            files.retain(|x| &x.path != path);
            if files.len() == before {
                return Ok(refuse("dotfile-not-found", "Requested Dotfile not found."));
            }
        }
    }
    let packed = pack_dotfiles(&files);
    if packed.len() > MAX_DOTFILE_BYTES {
        return Ok(refuse(
            "dotfile-creation-failed",
            "No leftover space for dotfile storage",
        ));
    }
    let q = sqlx::query(update);
    match key {
        Bound::Text(t) => q.bind(t),
        Bound::Uuid(u) => q.bind(u),
    }
    .bind(packed)
    .execute(&mut *conn)
    .await?;
    Ok(match action {
        DotfileAction::Delete { .. } => json!({ "success": true }),
        _ => json!({}),
    })
}

enum Bound {
    Text(String),
    Uuid(Uuid),
}
