//! `restart_session` (`PATCH /session/{id}`): every RUNNING kernel of the session is
//! restarted in place by its agent.
//!
//! Three steps, never holding a transaction across an agent RPC:
//! 1. *claim*: RUNNING → RESTARTING in one transaction, recorded once per command id
//!    ([`run_once`]), so a redelivered command neither claims again nor restarts kernels
//!    that have already come back;
//! 2. `restart_kernel` on each claimed kernel that is still RESTARTING, in parallel;
//! 3. *settle*: RESTARTING → RUNNING with the new container id and ports (the agent's
//!    `kernel_started(restarted)` event may have got there first; both paths agree), or
//!    → ERROR with `status_info = restart-failed` when the agent could not bring the
//!    kernel back. Occupancy does not change: both statuses occupy the same slots.

use std::sync::Arc;

use serde_json::{json, Value};
use uuid::Uuid;

use bai_events::{Command, CommandReply, Envelope};

use crate::idempotency::run_once;
use crate::runtime::{HandlerError, WorkerContext};

fn rejected(status: u16, slug: &str, title: &str, msg: Option<String>) -> CommandReply {
    CommandReply::Rejected {
        http_status: status,
        error_type: slug.into(),
        title: title.into(),
        msg,
        data: None,
    }
}

pub async fn restart(
    ctx: &Arc<WorkerContext>,
    env: &Envelope<Command>,
    session_id: Uuid,
) -> Result<CommandReply, HandlerError> {
    let Some(rpc) = ctx.agent_rpc.clone() else {
        return Err(HandlerError::Transient(anyhow::anyhow!(
            "this worker has no agent RPC client"
        )));
    };
    let claim = run_once(&ctx.db, env.id, "restart_session", move |txn| {
        Box::pin(async move {
            let claimed: Vec<Uuid> = sqlx::query_scalar(
                "UPDATE kernels SET status = 'RESTARTING', status_changed = now(), status_info = 'restarting' \
                 WHERE session_id = $1 AND status = 'RUNNING' RETURNING id",
            )
            .bind(session_id)
            .fetch_all(&mut **txn)
            .await?;
            if !claimed.is_empty() {
                return Ok(json!({ "kernels": claimed }));
            }
            let live: Vec<String> = sqlx::query_scalar(
                "SELECT status::text FROM kernels WHERE session_id = $1 \
                 AND status NOT IN ('TERMINATED', 'CANCELLED') ORDER BY cluster_role <> 'main', cluster_idx",
            )
            .bind(session_id)
            .fetch_all(&mut **txn)
            .await?;
            Ok(match live.first() {
                None => json!({ "error": "not-found" }),
                Some(status) => json!({ "error": "not-running", "status": status }),
            })
        })
    })
    .await
    .map_err(HandlerError::from_txn)?
    .into_value();
    match claim.get("error").and_then(Value::as_str) {
        Some("not-found") => {
            return Ok(rejected(404, "session-not-found", "No such session.", None))
        }
        Some(_) => {
            let status = claim
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_lowercase();
            return Ok(rejected(
                403,
                "generic-forbidden",
                "Forbidden operation.",
                Some(format!("Cannot restart a session in {status} status")),
            ));
        }
        None => {}
    }
    let claimed: Vec<Uuid> = claim
        .get("kernels")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok()))
                .collect()
        })
        .unwrap_or_default();
    // Only kernels still RESTARTING: after a crash between steps 2 and 3, the ones that
    // came back are RUNNING again and are not restarted a second time.
    let rows: Vec<(Uuid, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT id, agent, session_creation_id FROM kernels WHERE id = ANY($1) AND status = 'RESTARTING'",
    )
    .bind(&claimed)
    .fetch_all(ctx.db.pool())
    .await
    .map_err(|e| HandlerError::Transient(e.into()))?;
    let calls = rows.into_iter().map(|(kid, agent, creation_id)| {
        let rpc = rpc.clone();
        async move {
            let Some(agent) = agent else {
                return (kid, Err(format!("kernel {kid} has no agent")));
            };
            let res = rpc
                .restart_kernel(
                    &agent,
                    creation_id.as_deref().unwrap_or(""),
                    session_id,
                    kid,
                    json!({}),
                )
                .await
                .map_err(|e| e.to_string());
            (kid, res)
        }
    });
    let results = Arc::new(futures::future::join_all(calls).await);
    let settled = results.clone();
    ctx.db
        .transact(move |txn| {
            let results = settled.clone();
            Box::pin(async move {
                for (kid, res) in results.iter() {
                    match res {
                        Ok(k) => {
                            sqlx::query(
                                "UPDATE kernels SET status = 'RUNNING', status_changed = now(), status_info = '', \
                                 container_id = $2, repl_in_port = $3, repl_out_port = $4, stdin_port = $5, \
                                 stdout_port = $6, service_ports = $7 \
                                 WHERE id = $1 AND status IN ('RESTARTING', 'RUNNING')",
                            )
                            .bind(kid)
                            .bind(&k.container_id)
                            .bind(i32::from(k.repl_in_port))
                            .bind(i32::from(k.repl_out_port))
                            .bind(i32::from(k.stdin_port))
                            .bind(i32::from(k.stdout_port))
                            .bind(Value::Array(k.service_ports.clone()))
                            .execute(&mut **txn)
                            .await?;
                        }
                        Err(e) => {
                            sqlx::query(
                                "UPDATE kernels SET status = 'ERROR', status_changed = now(), \
                                 status_info = 'restart-failed', status_data = $2 \
                                 WHERE id = $1 AND status = 'RESTARTING'",
                            )
                            .bind(kid)
                            .bind(json!({"error": {"src": "agent", "name": "RestartFailed", "repr": e}}))
                            .execute(&mut **txn)
                            .await?;
                        }
                    }
                }
                Ok(())
            })
        })
        .await
        .map_err(HandlerError::from_txn)?;
    let errors: Vec<String> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err().cloned())
        .collect();
    if !errors.is_empty() {
        tracing::warn!(%session_id, errors = ?errors, "session restart failed");
        return Ok(rejected(
            500,
            "kernel-restart-failed",
            "Kernel restart has failed.",
            Some(errors.join("; ")),
        ));
    }
    Ok(CommandReply::Ok {
        result: json!({ "restarted": results.len() }),
    })
}
