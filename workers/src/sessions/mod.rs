//! Compute sessions in the worker fleet: enqueue, destroy, start (agent RPC) and the
//! scheduler (see [`scheduler`]).
//!
//! Every state change is one SERIALIZABLE transaction; occupancy is recomputed from the
//! kernels after the status change (never adjusted by subtraction); agent RPCs run after
//! the commit, never while a lock is held; events carry ids derived from the session id so
//! a redelivered command publishes nothing twice.

pub mod restart;
pub mod scheduler;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use bai_events::session::SessionSpec;
use bai_events::{Command, CommandReply, Envelope, Event};

use crate::agents::derived_id;
use crate::agents::kernels::{
    check_session_terminated, recalc_agent_occupancy, recalc_concurrency_used,
};
use crate::idempotency::run_once;
use crate::runtime::{HandlerError, WorkerContext};

pub use scheduler::SessionScheduler;

/// Why a finished batch session is destroyed (the original's `handle_batch_result`); it
/// ends up as the kernels' `status_info`.
pub const BATCH_FINISHED_REASON: &str = "task-finished";

const KERNEL_INSERT: &str = "INSERT INTO kernels (\
    id, session_id, session_creation_id, session_name, session_type, cluster_mode, cluster_size, \
    cluster_role, cluster_idx, cluster_hostname, scaling_group, domain_name, group_id, user_uuid, \
    access_key, image, registry, tag, occupied_slots, occupied_shares, environ, mounts, mount_map, \
    resource_opts, bootstrap_script, repl_in_port, repl_out_port, stdin_port, stdout_port, \
    preopen_ports, starts_at, status, status_changed, startup_command, internal_data) \
    VALUES ($1, $2, $3, $4, $5::sessiontypes, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
    $18, $19, '{}'::jsonb, $20, \
    COALESCE((SELECT array_agg(ARRAY(SELECT jsonb_array_elements_text(m))) FROM jsonb_array_elements($21::jsonb) m), '{}'), \
    $22, $23, $24, 0, 0, 0, 0, $25, $26, 'PENDING', now(), $27, $28)";

fn rejected(status: u16, slug: &str, title: &str, msg: Option<String>) -> CommandReply {
    CommandReply::Rejected {
        http_status: status,
        error_type: slug.into(),
        title: title.into(),
        msg,
        data: None,
    }
}

/// `create_session`: inserts every kernel of the session in one transaction (the original
/// inserted them one by one and raced with the scheduler), then announces it.
pub async fn create(
    ctx: &Arc<WorkerContext>,
    env: &Envelope<Command>,
    spec: &SessionSpec,
) -> Result<CommandReply, HandlerError> {
    let s = Arc::new(spec.clone());
    let s2 = s.clone();
    let res = run_once(&ctx.db, env.id, "create_session", move |txn| {
        let s = s2.clone();
        Box::pin(async move {
            let mounts = Value::Array(s.mounts.iter().map(|m| json!(m)).collect());
            for k in &s.kernels {
                sqlx::query(KERNEL_INSERT)
                    .bind(k.id)
                    .bind(s.session_id)
                    .bind(&s.creation_id)
                    .bind(&s.name)
                    .bind(&s.session_type)
                    .bind(&s.cluster_mode)
                    .bind(s.cluster_size)
                    .bind(&k.cluster_role)
                    .bind(k.cluster_idx)
                    .bind(&k.cluster_hostname)
                    .bind(&s.scaling_group)
                    .bind(&s.domain_name)
                    .bind(s.group_id)
                    .bind(s.user_uuid)
                    .bind(&s.access_key)
                    .bind(k.image.as_ref().unwrap_or(&s.image))
                    .bind(k.registry.as_ref().unwrap_or(&s.registry))
                    .bind(&s.tag)
                    .bind(&k.occupied_slots)
                    .bind(k.environ.as_ref().unwrap_or(&s.environ))
                    .bind(&mounts)
                    .bind(&s.mount_map)
                    .bind(&s.resource_opts)
                    .bind(k.bootstrap_script.as_ref().or(s.bootstrap_script.as_ref()))
                    .bind(&s.preopen_ports)
                    .bind(s.starts_at)
                    .bind(k.startup_command.as_ref().or(s.startup_command.as_ref()))
                    .bind(&s.internal_data)
                    .execute(&mut **txn)
                    .await?;
            }
            for dep in &s.dependencies {
                sqlx::query(
                    "INSERT INTO session_dependencies (session_id, depends_on) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(s.session_id)
                .bind(dep)
                .execute(&mut **txn)
                .await?;
            }
            Ok(json!({"sessionId": s.session_id, "sessionName": s.name, "status": "PENDING"}))
        })
    })
    .await;
    let value = match res {
        Ok(v) => v.into_value(),
        Err(bai_core::TxnError::Database(e))
            if e.as_database_error()
                .and_then(|d| d.constraint())
                .is_some_and(|c| c == "ix_kernels_unique_sess_token") =>
        {
            let existing: Option<Uuid> = sqlx::query_scalar(
                "SELECT session_id FROM kernels WHERE access_key = $1 AND session_name = $2 \
                 AND cluster_role = 'main' AND status NOT IN ('TERMINATED', 'CANCELLED')",
            )
            .bind(&spec.access_key)
            .bind(&spec.name)
            .fetch_optional(ctx.db.pool())
            .await
            .map_err(|e| HandlerError::Transient(e.into()))?;
            let mut r = rejected(
                400,
                "session-already-exists",
                "The session already exists but you requested not to reuse existing one.",
                None,
            );
            if let (CommandReply::Rejected { data, .. }, Some(id)) = (&mut r, existing) {
                *data = Some(json!({"existingSessionId": id}));
            }
            return Ok(r);
        }
        Err(e) => return Err(HandlerError::from_txn(e)),
    };
    // After the commit (also on a redelivery, hence derived ids): announce and wake the
    // scheduler of the session's scaling group.
    let ev = Event::SessionEnqueued {
        session_id: spec.session_id,
        creation_id: spec.creation_id.clone(),
        reason: String::new(),
    };
    publish(ctx, derived_id(spec.session_id, "session_enqueued"), ev).await;
    if let Err(e) = ctx.bus.request_schedule(&spec.scaling_group).await {
        tracing::warn!(error = %e, "could not request a scheduling pass; the tick will");
    }
    Ok(CommandReply::Ok { result: value })
}

pub(crate) async fn publish(ctx: &WorkerContext, id: Uuid, ev: Event) {
    if let Err(e) = ctx.bus.publish_event_with_id(id, ev).await {
        tracing::warn!(error = %e, "could not publish an event");
    }
}

/// (kernel id, status, agent, access key, creation id) of each kernel being destroyed.
type DestroyRow = (Uuid, String, Option<String>, Option<String>, String);

#[derive(Debug, Default)]
struct DestroyPlan {
    /// (kernel id, agent) to send destroy_kernel to, after the commit.
    rpc: Vec<(Uuid, String)>,
    cancelled: Vec<Uuid>,
    terminating: Vec<Uuid>,
    terminated: Vec<Uuid>,
    session_cancelled: bool,
    session_terminated: bool,
    creation_id: String,
}

/// `destroy_session` (`DELETE /session/{id}`), with the original's status rules (§1.2 rows
/// 6, 13-15) but setting `terminated_at` on forced termination (the original did not).
pub async fn destroy(
    ctx: &Arc<WorkerContext>,
    session_id: Uuid,
    forced: bool,
    reason: &str,
) -> Result<CommandReply, HandlerError> {
    let reason_owned = reason.to_string();
    let outcome = ctx
        .db
        .transact(move |txn| {
            let reason = reason_owned.clone();
            Box::pin(async move {
                let rows: Vec<DestroyRow> = sqlx::query_as(
                    "SELECT id, status::text, agent, access_key, COALESCE(session_creation_id, '') \
                     FROM kernels WHERE session_id = $1 ORDER BY cluster_idx FOR UPDATE",
                )
                .bind(session_id)
                .fetch_all(&mut **txn)
                .await?;
                if rows.iter().all(|r| r.1 == "TERMINATED" || r.1 == "CANCELLED") {
                    return Ok(Err(rejected(404, "session-not-found", "No such session.", None)));
                }
                for (_, status, ..) in &rows {
                    let blocked = match status.as_str() {
                        "PULLING" => true,
                        "SCHEDULED" | "PREPARING" | "TERMINATING" | "ERROR" => !forced,
                        _ => false,
                    };
                    if blocked {
                        return Ok(Err(rejected(
                            403,
                            "generic-forbidden",
                            "Forbidden operation.",
                            Some(format!("Cannot destroy kernels in {} status", status.to_lowercase())),
                        )));
                    }
                }
                let mut plan = DestroyPlan {
                    creation_id: rows.first().map(|r| r.4.clone()).unwrap_or_default(),
                    ..Default::default()
                };
                let mut agents = std::collections::BTreeSet::new();
                let mut keys = std::collections::BTreeSet::new();
                for (id, status, agent, ak, _) in &rows {
                    if let Some(a) = agent {
                        agents.insert(a.clone());
                    }
                    if let Some(k) = ak {
                        keys.insert(k.clone());
                    }
                    match status.as_str() {
                        "TERMINATED" | "CANCELLED" => {}
                        "PENDING" => {
                            sqlx::query(
                                "UPDATE kernels SET status = 'CANCELLED', status_info = $2, \
                                 status_changed = now(), terminated_at = now() WHERE id = $1",
                            )
                            .bind(id)
                            .bind(&reason)
                            .execute(&mut **txn)
                            .await?;
                            plan.cancelled.push(*id);
                        }
                        "SCHEDULED" | "PREPARING" | "TERMINATING" | "ERROR" => {
                            sqlx::query(
                                "UPDATE kernels SET status = 'TERMINATED', status_info = 'force-terminated', \
                                 status_changed = now(), terminated_at = now() WHERE id = $1",
                            )
                            .bind(id)
                            .execute(&mut **txn)
                            .await?;
                            plan.terminated.push(*id);
                            if let Some(a) = agent {
                                plan.rpc.push((*id, a.clone()));
                            }
                        }
                        _ => {
                            sqlx::query(
                                "UPDATE kernels SET status = 'TERMINATING', status_info = $2, status_changed = now(), \
                                 status_data = COALESCE(status_data, '{}'::jsonb) || \
                                 '{\"kernel\": {\"exit_code\": null}, \"session\": {\"status\": \"terminating\"}}'::jsonb \
                                 WHERE id = $1",
                            )
                            .bind(id)
                            .bind(&reason)
                            .execute(&mut **txn)
                            .await?;
                            plan.terminating.push(*id);
                            if let Some(a) = agent {
                                plan.rpc.push((*id, a.clone()));
                            }
                        }
                    }
                }
                // Recompute after the status change, in the same transaction.
                for a in &agents {
                    recalc_agent_occupancy(txn, a).await?;
                }
                for k in &keys {
                    recalc_concurrency_used(txn, k).await?;
                }
                let statuses: Vec<String> =
                    sqlx::query_scalar("SELECT status::text FROM kernels WHERE session_id = $1")
                        .bind(session_id)
                        .fetch_all(&mut **txn)
                        .await?;
                plan.session_cancelled = statuses.iter().all(|s| s == "CANCELLED") && !plan.cancelled.is_empty();
                plan.session_terminated = check_session_terminated(txn, session_id).await?;
                Ok(Ok(plan))
            })
        })
        .await
        .map_err(HandlerError::from_txn)?;
    let plan = match outcome {
        Ok(p) => p,
        Err(reply) => return Ok(reply),
    };
    for k in &plan.cancelled {
        let ev = Event::KernelCancelled {
            kernel_id: *k,
            session_id,
            creation_id: plan.creation_id.clone(),
            reason: reason.to_string(),
        };
        publish(ctx, derived_id(*k, "kernel_cancelled"), ev).await;
    }
    for k in &plan.terminating {
        let ev = Event::KernelTerminating {
            kernel_id: *k,
            session_id,
            reason: reason.to_string(),
            exit_code: -1,
        };
        publish(ctx, derived_id(*k, "kernel_terminating"), ev).await;
    }
    for k in &plan.terminated {
        let ev = Event::KernelTerminated {
            kernel_id: *k,
            session_id,
            reason: "force-terminated".into(),
            exit_code: -1,
        };
        publish(ctx, derived_id(*k, "kernel_terminated"), ev).await;
    }
    if plan.session_cancelled {
        let ev = Event::SessionCancelled {
            session_id,
            creation_id: plan.creation_id.clone(),
            reason: reason.to_string(),
        };
        publish(ctx, derived_id(session_id, "session_cancelled"), ev).await;
    }
    if plan.session_terminated {
        let ev = Event::SessionTerminated {
            session_id,
            reason: "force-terminated".into(),
        };
        publish(ctx, derived_id(session_id, "session_terminated"), ev).await;
    }
    // The agents answer with kernel_terminated events, which finish the job; a dead agent
    // is handled by the liveness monitor, so RPC errors are only logged.
    if let Some(rpc) = &ctx.agent_rpc {
        // The agent reports the kernel's end with this reason, which becomes its
        // `status_info` (`user-requested`, `idle-timeout`, `task-finished`, ...).
        let calls = plan.rpc.iter().map(|(kid, agent)| {
            let rpc = rpc.clone();
            async move {
                if let Err(e) = rpc.destroy_kernel(agent, *kid, Some(reason), false).await {
                    tracing::warn!(error = %e, kernel = %kid, agent, "destroy_kernel failed");
                }
            }
        });
        futures::future::join_all(calls).await;
    }
    let status = if plan.session_cancelled {
        "cancelled"
    } else {
        "terminated"
    };
    Ok(CommandReply::Ok {
        result: json!({"stats": {"status": status}}),
    })
}

#[derive(sqlx::FromRow, Clone, Debug)]
struct StartRow {
    id: Uuid,
    status: String,
    agent: Option<String>,
    session_name: Option<String>,
    session_creation_id: Option<String>,
    session_type: String,
    cluster_mode: String,
    cluster_size: i32,
    cluster_role: String,
    cluster_idx: i32,
    cluster_hostname: String,
    image: Option<String>,
    occupied_slots: Value,
    resource_opts: Option<Value>,
    environ: Option<Vec<String>>,
    mount_map: Option<Value>,
    bootstrap_script: Option<String>,
    startup_command: Option<String>,
    internal_data: Option<Value>,
    preopen_ports: Option<Vec<i32>>,
    /// `kernels.mounts` (a 2-D text array) as JSON.
    mounts_json: Option<Value>,
}

/// `start_session`: create the PREPARING kernels on their agents (one RPC per agent, all
/// agents concurrently), then mark them RUNNING; any failure cancels the whole session
/// with `failed-to-start`, releases its slots and never blocks other sessions (#388).
pub async fn start(
    ctx: &Arc<WorkerContext>,
    session_id: Uuid,
) -> Result<CommandReply, HandlerError> {
    let rows: Vec<StartRow> = sqlx::query_as(
        "SELECT id, status::text AS status, agent, session_name, session_creation_id, \
         session_type::text AS session_type, cluster_mode, cluster_size, cluster_role, cluster_idx, \
         cluster_hostname, image, occupied_slots, resource_opts, environ, mount_map, bootstrap_script, \
         startup_command, internal_data, preopen_ports, to_jsonb(mounts) AS mounts_json \
         FROM kernels WHERE session_id = $1 ORDER BY created_at, cluster_idx",
    )
    .bind(session_id)
    .fetch_all(ctx.db.pool())
    .await
    .map_err(|e| HandlerError::Transient(e.into()))?;
    if rows.is_empty()
        || !rows
            .iter()
            .any(|r| r.status == "PREPARING" || r.status == "PULLING")
    {
        // Already started, cancelled or gone: a redelivery, nothing to do.
        return Ok(CommandReply::Ok {
            result: json!({"skipped": true}),
        });
    }
    let Some(rpc) = ctx.agent_rpc.clone() else {
        return Err(HandlerError::Transient(anyhow::anyhow!(
            "this worker has no agent RPC client"
        )));
    };
    // Host paths of the session's vfolders, from their storage proxies.
    let mounts =
        crate::handlers::vfolder::resolve_mounts(ctx, rows[0].mounts_json.as_ref()).await?;
    let creation_id = rows[0].session_creation_id.clone().unwrap_or_default();
    let mut replicas: BTreeMap<String, u32> = BTreeMap::new();
    for r in &rows {
        *replicas.entry(r.cluster_role.clone()).or_default() += 1;
    }
    let cluster_info = bai_agent_proto::messages::ClusterInfo {
        mode: rows[0].cluster_mode.clone(),
        size: rows[0].cluster_size.max(1) as u32,
        replicas,
        hosts: rows.iter().map(|r| r.cluster_hostname.clone()).collect(),
        network_name: None,
        ssh_keypair: None,
    };
    let mut per_agent: BTreeMap<String, Vec<bai_agent_proto::messages::KernelConfig>> =
        BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.status == "PREPARING" || r.status == "PULLING")
    {
        let Some(agent) = r.agent.clone() else {
            continue;
        };
        let environ = r
            .environ
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let resource_slots = r
            .occupied_slots
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        per_agent
            .entry(agent)
            .or_default()
            .push(bai_agent_proto::messages::KernelConfig {
                kernel_id: r.id,
                image: bai_agent_proto::messages::ImageRef {
                    canonical: r.image.clone().unwrap_or_default(),
                    registry: None,
                    digest: None,
                    labels: BTreeMap::new(),
                },
                session_type: r.session_type.to_lowercase(),
                cluster_role: r.cluster_role.clone(),
                cluster_idx: r.cluster_idx.max(0) as u32,
                cluster_hostname: Some(r.cluster_hostname.clone()),
                resource_slots,
                resource_opts: r.resource_opts.clone().unwrap_or(Value::Null),
                environ,
                mounts: mounts.clone(),
                mount_map: r.mount_map.clone().unwrap_or(Value::Null),
                bootstrap_script: r.bootstrap_script.clone(),
                startup_command: r.startup_command.clone(),
                internal_data: r.internal_data.clone().unwrap_or(Value::Null),
                preopen_ports: r
                    .preopen_ports
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| u16::try_from(p).ok())
                    .collect(),
                idle_timeout: None,
            });
    }
    let session_name = rows[0].session_name.clone();
    let calls = per_agent.into_iter().map(|(agent, kernels)| {
        let rpc = rpc.clone();
        let req = bai_agent_proto::messages::CreateKernels {
            creation_id: creation_id.clone(),
            session_id,
            session_name: session_name.clone(),
            kernels,
            cluster_info: cluster_info.clone(),
        };
        async move {
            let res = rpc.create_kernels(&agent, req).await;
            (agent, res)
        }
    });
    let results = futures::future::join_all(calls).await;
    let mut created = Vec::new();
    let mut errors = Vec::new();
    for (agent, res) in results {
        match res {
            Ok(list) => created.extend(list.into_iter().map(|k| (agent.clone(), k))),
            Err(e) => errors.push((agent, e.to_string())),
        }
    }
    if errors.is_empty() {
        let created2 = Arc::new(created.clone());
        let all_running = ctx
            .db
            .transact(move |txn| {
                let created = created2.clone();
                Box::pin(async move {
                    for (_, k) in created.iter() {
                        sqlx::query(
                            "UPDATE kernels SET status = 'RUNNING', status_changed = now(), status_info = '', \
                             container_id = $2, kernel_host = $3, repl_in_port = $4, repl_out_port = $5, \
                             stdin_port = $6, stdout_port = $7, service_ports = $8, \
                             attached_devices = COALESCE($9, '{}'::jsonb) \
                             WHERE id = $1 AND status IN ('SCHEDULED', 'PREPARING', 'PULLING', 'RUNNING')",
                        )
                        .bind(k.id)
                        .bind(&k.container_id)
                        .bind(&k.kernel_host)
                        .bind(k.repl_in_port as i32)
                        .bind(k.repl_out_port as i32)
                        .bind(k.stdin_port as i32)
                        .bind(k.stdout_port as i32)
                        .bind(Value::Array(k.service_ports.clone()))
                        .bind(if k.attached_devices.is_null() { None } else { Some(&k.attached_devices) })
                        .execute(&mut **txn)
                        .await?;
                    }
                    let live: Vec<String> = sqlx::query_scalar("SELECT status::text FROM kernels WHERE session_id = $1")
                        .bind(session_id)
                        .fetch_all(&mut **txn)
                        .await?;
                    Ok(live.iter().all(|s| s == "RUNNING"))
                })
            })
            .await
            .map_err(HandlerError::from_txn)?;
        for (_, k) in &created {
            let ev = Event::KernelStarted {
                kernel_id: k.id,
                session_id,
                creation_id: creation_id.clone(),
                reason: String::new(),
            };
            publish(ctx, derived_id(k.id, "kernel_started_mgr"), ev).await;
        }
        if all_running {
            let ev = Event::SessionStarted {
                session_id,
                creation_id: creation_id.clone(),
                reason: String::new(),
            };
            publish(ctx, derived_id(session_id, "session_started"), ev).await;
        }
        return Ok(CommandReply::Ok {
            result: json!({"started": created.len()}),
        });
    }
    // Failure: cancel the whole session, release its slots (recomputed after the status
    // change), and clean up kernels that did start elsewhere.
    let error = json!({"error": {"src": "agent", "name": "AgentError",
        "repr": errors.iter().map(|(a, e)| format!("{a}: {e}")).collect::<Vec<_>>().join("; ")}});
    tracing::warn!(%session_id, error = %error, "session failed to start");
    ctx.db
        .transact(move |txn| {
            let error = error.clone();
            Box::pin(async move {
                let rows: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
                    "UPDATE kernels SET status = 'CANCELLED', status_info = 'failed-to-start', status_data = $2, \
                     status_changed = now(), terminated_at = now() \
                     WHERE session_id = $1 AND status NOT IN ('TERMINATED', 'CANCELLED') \
                     RETURNING agent, access_key",
                )
                .bind(session_id)
                .bind(&error)
                .fetch_all(&mut **txn)
                .await?;
                let agents: std::collections::BTreeSet<String> = rows.iter().filter_map(|r| r.0.clone()).collect();
                let keys: std::collections::BTreeSet<String> = rows.iter().filter_map(|r| r.1.clone()).collect();
                for a in &agents {
                    recalc_agent_occupancy(txn, a).await?;
                }
                for k in &keys {
                    recalc_concurrency_used(txn, k).await?;
                }
                Ok(())
            })
        })
        .await
        .map_err(HandlerError::from_txn)?;
    let ev = Event::SessionCancelled {
        session_id,
        creation_id: creation_id.clone(),
        reason: "failed-to-start".into(),
    };
    publish(ctx, derived_id(session_id, "session_cancelled"), ev).await;
    for (agent, k) in &created {
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            rpc.destroy_kernel(agent, k.id, Some("failed-to-start"), true),
        )
        .await;
    }
    Ok(CommandReply::Ok {
        result: json!({"cancelled": "failed-to-start"}),
    })
}
