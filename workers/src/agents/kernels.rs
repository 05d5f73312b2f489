//! Kernel and agent state transitions driven by agents, for use inside a
//! [`bai_core::Db::transact`] closure (each function takes the transaction's connection).
//!
//! Every transition is idempotent: it locks the row (`FOR UPDATE`), checks the current
//! status and does nothing when the transition does not apply, so redelivered or
//! reordered agent events are harmless. Occupancy (`agents.occupied_slots`,
//! `keypairs.concurrency_used`) is *recomputed* from the kernels' status groups
//! (schema-graphql.md §1.3) after the status change, in the same transaction, never
//! adjusted by subtraction, so it cannot drift.

use std::collections::BTreeSet;

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::slots;

/// Statuses whose kernels hold agent resources (every status except PENDING, TERMINATED
/// and CANCELLED).
pub const AGENT_RESOURCE_OCCUPYING: &[&str] = &[
    "SCHEDULED",
    "PREPARING",
    "BUILDING",
    "PULLING",
    "RUNNING",
    "RESTARTING",
    "RESIZING",
    "SUSPENDED",
    "TERMINATING",
    "ERROR",
];

/// Statuses counted in `keypairs.concurrency_used` (the agent set minus TERMINATING).
pub const USER_RESOURCE_OCCUPYING: &[&str] = &[
    "SCHEDULED",
    "PREPARING",
    "BUILDING",
    "PULLING",
    "RUNNING",
    "RESTARTING",
    "RESIZING",
    "SUSPENDED",
    "ERROR",
];

pub const DEAD: &[&str] = &["CANCELLED", "TERMINATED"];

fn strs(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// What a kernel transition saw and did.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTransition {
    pub kernel_id: Uuid,
    pub session_id: Uuid,
    pub access_key: Option<String>,
    pub agent: Option<String>,
    pub scaling_group: Option<String>,
    /// Status before the call.
    pub from: String,
    /// Whether the row changed status.
    pub changed: bool,
    /// Set by [`mark_kernel_terminated`]: every kernel of the session is now TERMINATED
    /// and this call is the one that noticed (emit SessionTerminated exactly once).
    pub session_terminated: bool,
}

#[derive(sqlx::FromRow)]
struct KernelRow {
    status: String,
    session_id: Uuid,
    access_key: Option<String>,
    agent: Option<String>,
    scaling_group: Option<String>,
    status_data: Option<Value>,
}

async fn lock_kernel(conn: &mut PgConnection, kernel_id: Uuid) -> sqlx::Result<Option<KernelRow>> {
    sqlx::query_as(
        "SELECT status::text AS status, session_id, access_key, agent, scaling_group, status_data \
         FROM kernels WHERE id = $1 FOR UPDATE",
    )
    .bind(kernel_id)
    .fetch_optional(conn)
    .await
}

fn transition(kernel_id: Uuid, row: &KernelRow, changed: bool) -> KernelTransition {
    KernelTransition {
        kernel_id,
        session_id: row.session_id,
        access_key: row.access_key.clone(),
        agent: row.agent.clone(),
        scaling_group: row.scaling_group.clone(),
        from: row.status.clone(),
        changed,
        session_terminated: false,
    }
}

/// Moves a kernel to `to` (with `status_info`) when its status is one of `from`.
async fn simple_transition(
    conn: &mut PgConnection,
    kernel_id: Uuid,
    from: &[&str],
    to: &str,
    status_info: Option<&str>,
) -> anyhow::Result<Option<KernelTransition>> {
    let Some(row) = lock_kernel(conn, kernel_id).await? else {
        return Ok(None);
    };
    if !from.contains(&row.status.as_str()) {
        return Ok(Some(transition(kernel_id, &row, false)));
    }
    sqlx::query(
        "UPDATE kernels SET status = $2::kernelstatus, status_changed = now(), \
         status_info = COALESCE($3, status_info) WHERE id = $1",
    )
    .bind(kernel_id)
    .bind(to)
    .bind(status_info)
    .execute(conn)
    .await?;
    Ok(Some(transition(kernel_id, &row, true)))
}

/// `kernel_preparing`: SCHEDULED → PREPARING (the prepare loop usually got there first,
/// then this is a no-op). `None` when the kernel does not exist.
pub async fn mark_kernel_preparing(
    conn: &mut PgConnection,
    kernel_id: Uuid,
) -> anyhow::Result<Option<KernelTransition>> {
    simple_transition(conn, kernel_id, &["SCHEDULED"], "PREPARING", None).await
}

/// `kernel_pulling`: SCHEDULED/PREPARING → PULLING with `status_info` = the image.
pub async fn mark_kernel_pulling(
    conn: &mut PgConnection,
    kernel_id: Uuid,
    image: &str,
) -> anyhow::Result<Option<KernelTransition>> {
    simple_transition(
        conn,
        kernel_id,
        &["SCHEDULED", "PREPARING"],
        "PULLING",
        Some(image),
    )
    .await
}

/// `kernel_creating`: PULLING → PREPARING (orchestration.md §1.2 row 9).
pub async fn mark_kernel_creating(
    conn: &mut PgConnection,
    kernel_id: Uuid,
) -> anyhow::Result<Option<KernelTransition>> {
    simple_transition(conn, kernel_id, &["PULLING"], "PREPARING", Some("")).await
}

/// `kernel_started`: SCHEDULED/PREPARING/PULLING/RESTARTING → RUNNING, recording the
/// container id, host and service ports the agent reported. Any other status (notably a
/// kernel already TERMINATED because its start raced with a destroy) is left alone.
pub async fn mark_kernel_started(
    conn: &mut PgConnection,
    kernel_id: Uuid,
    container_id: Option<&str>,
    kernel_host: Option<&str>,
    service_ports: Option<&Value>,
) -> anyhow::Result<Option<KernelTransition>> {
    let Some(row) = lock_kernel(conn, kernel_id).await? else {
        return Ok(None);
    };
    if !["SCHEDULED", "PREPARING", "PULLING", "RESTARTING"].contains(&row.status.as_str()) {
        return Ok(Some(transition(kernel_id, &row, false)));
    }
    sqlx::query(
        "UPDATE kernels SET status = 'RUNNING', status_changed = now(), \
         container_id = COALESCE($2, container_id), kernel_host = COALESCE($3, kernel_host), \
         service_ports = COALESCE($4, service_ports) WHERE id = $1",
    )
    .bind(kernel_id)
    .bind(container_id)
    .bind(kernel_host)
    .bind(service_ports)
    .execute(conn)
    .await?;
    Ok(Some(transition(kernel_id, &row, true)))
}

/// `kernel_terminated`: any live status → TERMINATED with `status_info = reason`,
/// `terminated_at`, and `status_data.kernel.exit_code`; then the agent's occupancy and the
/// keypair's `concurrency_used` are recomputed and the session is checked for completion
/// ([`check_session_terminated`]), all in the caller's transaction.
///
/// Skipped for CANCELLED and RESTARTING kernels (a restart's old process reports its exit)
/// and for TERMINATED ones — except that a TERMINATED row without an exit code (terminated
/// by the lost-agent path, or by a forced destroy) gets the agent's real exit code filled
/// in, since events of different agents can be handled out of order across workers.
pub async fn mark_kernel_terminated(
    conn: &mut PgConnection,
    kernel_id: Uuid,
    reason: &str,
    exit_code: Option<i32>,
) -> anyhow::Result<Option<KernelTransition>> {
    let Some(row) = lock_kernel(conn, kernel_id).await? else {
        return Ok(None);
    };
    match row.status.as_str() {
        "CANCELLED" | "RESTARTING" | "PENDING" => {
            return Ok(Some(transition(kernel_id, &row, false)))
        }
        "TERMINATED" => {
            let known = row
                .status_data
                .as_ref()
                .and_then(|d| d.pointer("/kernel/exit_code"))
                .is_some_and(|c| !c.is_null());
            if let (Some(code), false) = (exit_code, known) {
                sqlx::query(
                    "UPDATE kernels SET status_data = jsonb_set(COALESCE(status_data, '{}'::jsonb), \
                     '{kernel}', jsonb_build_object('exit_code', $2::int)) WHERE id = $1",
                )
                .bind(kernel_id)
                .bind(code)
                .execute(&mut *conn)
                .await?;
            }
            return Ok(Some(transition(kernel_id, &row, false)));
        }
        _ => {}
    }
    sqlx::query(
        "UPDATE kernels SET status = 'TERMINATED', status_info = $2, status_changed = now(), \
         terminated_at = now(), \
         status_data = jsonb_set(COALESCE(status_data, '{}'::jsonb), '{kernel}', \
                                 jsonb_build_object('exit_code', $3::int)) \
         WHERE id = $1",
    )
    .bind(kernel_id)
    .bind(reason)
    .bind(exit_code)
    .execute(&mut *conn)
    .await?;
    if let Some(agent) = &row.agent {
        recalc_agent_occupancy(conn, agent).await?;
    }
    if let Some(ak) = &row.access_key {
        recalc_concurrency_used(conn, ak).await?;
    }
    let mut t = transition(kernel_id, &row, true);
    t.session_terminated = check_session_terminated(conn, row.session_id).await?;
    Ok(Some(t))
}

/// Recomputes `agents.occupied_slots` as the sum of `occupied_slots` of the agent's
/// kernels in AGENT_RESOURCE_OCCUPYING statuses.
pub async fn recalc_agent_occupancy(
    conn: &mut PgConnection,
    agent_id: &str,
) -> anyhow::Result<Value> {
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT occupied_slots FROM kernels WHERE agent = $1 AND status::text = ANY($2)",
    )
    .bind(agent_id)
    .bind(strs(AGENT_RESOURCE_OCCUPYING))
    .fetch_all(&mut *conn)
    .await?;
    let total = slots::sum(rows.iter());
    sqlx::query("UPDATE agents SET occupied_slots = $2 WHERE id = $1")
        .bind(agent_id)
        .bind(&total)
        .execute(conn)
        .await?;
    Ok(total)
}

/// Recomputes `keypairs.concurrency_used` = the keypair's *sessions* (main kernels) in
/// USER_RESOURCE_OCCUPYING statuses. The original counted kernels here while incrementing
/// per session; the scheduler's `max_concurrent_sessions` predicate counts sessions, and so
/// does this, so increment, check and recalculation agree.
pub async fn recalc_concurrency_used(
    conn: &mut PgConnection,
    access_key: &str,
) -> anyhow::Result<i64> {
    let n: i64 = sqlx::query_scalar(
        "WITH c AS (SELECT count(*) AS n FROM kernels WHERE access_key = $1 AND cluster_role = 'main' \
         AND status::text = ANY($2)) \
         UPDATE keypairs SET concurrency_used = (SELECT n FROM c) WHERE access_key = $1 \
         RETURNING concurrency_used::bigint",
    )
    .bind(access_key)
    .bind(strs(USER_RESOURCE_OCCUPYING))
    .fetch_optional(conn)
    .await?
    .unwrap_or(0);
    Ok(n)
}

/// The #430 rule: locks every kernel of the session; if all are TERMINATED and the session
/// was not marked yet, marks `status_data.session.status = "terminated"` on every row and
/// returns `true` — the caller then publishes SessionTerminated, exactly once per session.
pub async fn check_session_terminated(
    conn: &mut PgConnection,
    session_id: Uuid,
) -> anyhow::Result<bool> {
    let rows: Vec<(String, Option<Value>)> = sqlx::query_as(
        "SELECT status::text, status_data FROM kernels WHERE session_id = $1 ORDER BY id FOR UPDATE",
    )
    .bind(session_id)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(false);
    }
    let already = rows.iter().any(|(_, d)| {
        d.as_ref()
            .and_then(|d| d.pointer("/session/status"))
            .and_then(Value::as_str)
            == Some("terminated")
    });
    if already || !rows.iter().all(|(s, _)| s == "TERMINATED") {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE kernels SET status_data = jsonb_set(COALESCE(status_data, '{}'::jsonb), '{session}', \
         '{\"status\": \"terminated\"}'::jsonb) WHERE session_id = $1",
    )
    .bind(session_id)
    .execute(conn)
    .await?;
    Ok(true)
}

/// `session_success` / `session_failure` of a batch session: sets `kernels.result` on the
/// main kernel and keeps the exit code in `status_data.batch.exit_code` (the original
/// dropped it). Returns false when the session has no main kernel.
pub async fn set_session_result(
    conn: &mut PgConnection,
    session_id: Uuid,
    success: bool,
    exit_code: i32,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE kernels SET result = $2::sessionresult, \
         status_data = jsonb_set(COALESCE(status_data, '{}'::jsonb), '{batch}', jsonb_build_object('exit_code', $3::int)) \
         WHERE session_id = $1 AND cluster_role = 'main'",
    )
    .bind(session_id)
    .bind(if success { "SUCCESS" } else { "FAILURE" })
    .bind(exit_code)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// What [`mark_agent_down`] changed.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentDown {
    pub agent_id: String,
    pub scaling_group: String,
    /// (kernel id, session id) of every kernel moved to TERMINATED.
    pub kernels: Vec<(Uuid, Uuid)>,
    /// Sessions whose last kernel this terminated.
    pub sessions_terminated: Vec<Uuid>,
}

/// Marks an ALIVE (or RESTARTING) agent `status` (`LOST` or `TERMINATED`), sets
/// `status_changed` and `lost_at`, and moves its live kernels to TERMINATED with
/// `status_info = kernel_reason`, `terminated_at` and an unknown exit code. The original
/// left such kernels RUNNING forever (orchestration.md §1.4); here they end, their slots
/// are released (the agent's `occupied_slots` is recomputed, as is `concurrency_used` of
/// every affected keypair) and finished sessions are detected. `None` when the agent is
/// unknown or not alive (idempotent).
pub async fn mark_agent_down(
    conn: &mut PgConnection,
    agent_id: &str,
    status: &str,
    kernel_reason: &str,
) -> anyhow::Result<Option<AgentDown>> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT status::text, scaling_group FROM agents WHERE id = $1 FOR UPDATE")
            .bind(agent_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((current, scaling_group)) = row else {
        return Ok(None);
    };
    if current != "ALIVE" && current != "RESTARTING" {
        return Ok(None);
    }
    sqlx::query(
        "UPDATE agents SET status = $2::agentstatus, status_changed = now(), lost_at = now() WHERE id = $1",
    )
    .bind(agent_id)
    .bind(status)
    .execute(&mut *conn)
    .await?;
    let killed: Vec<(Uuid, Uuid, Option<String>)> = sqlx::query_as(
        "UPDATE kernels SET status = 'TERMINATED', status_info = $2, status_changed = now(), \
         terminated_at = now(), \
         status_data = jsonb_set(COALESCE(status_data, '{}'::jsonb), '{kernel}', '{\"exit_code\": null}'::jsonb) \
         WHERE agent = $1 AND status::text = ANY($3) \
         RETURNING id, session_id, access_key",
    )
    .bind(agent_id)
    .bind(kernel_reason)
    .bind(strs(AGENT_RESOURCE_OCCUPYING))
    .fetch_all(&mut *conn)
    .await?;
    recalc_agent_occupancy(conn, agent_id).await?;
    let keys: BTreeSet<&String> = killed.iter().filter_map(|(_, _, k)| k.as_ref()).collect();
    for ak in keys {
        recalc_concurrency_used(conn, ak).await?;
    }
    let sessions: BTreeSet<Uuid> = killed.iter().map(|(_, s, _)| *s).collect();
    let mut sessions_terminated = Vec::new();
    for s in sessions {
        if check_session_terminated(conn, s).await? {
            sessions_terminated.push(s);
        }
    }
    Ok(Some(AgentDown {
        agent_id: agent_id.to_string(),
        scaling_group,
        kernels: killed.into_iter().map(|(k, s, _)| (k, s)).collect(),
        sessions_terminated,
    }))
}

/// `status_data.kernel.exit_code` of a terminated kernel, for tests and tools.
pub fn exit_code_of(status_data: &Option<Value>) -> Option<i64> {
    status_data.as_ref()?.pointer("/kernel/exit_code")?.as_i64()
}
