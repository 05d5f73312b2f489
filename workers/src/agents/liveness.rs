//! Lost-agent detection.
//!
//! Every worker runs the loop, but each period only one of them does the work: it takes a
//! Redis lock (`SET NX PX <period>`) that is never released early, so the check runs at
//! most once per period across the fleet (the original ran it in every process every
//! second and emitted duplicate events until one was handled).
//!
//! A pass: agents whose last heartbeat (`agent.last_seen` sorted-set score) is older than
//! `heartbeat-timeout` are taken out of the set one by one with an atomic "remove if still
//! stale" script — a heartbeat that arrived meanwhile wins — and marked LOST in one
//! SERIALIZABLE transaction each ([`mark_agent_down`]): their live kernels go to
//! TERMINATED (`agent-lost`), slots and concurrency are recomputed. After the commit the
//! agent is removed from the set once more (a heartbeat racing with the transaction may
//! have re-added it believing the row ALIVE; its next heartbeat now re-reads the row and
//! revives it), events are published and the scaling group is rescheduled.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use bai_core::redis::redis;
use bai_events::Event;

use super::kernels::mark_agent_down;
use super::registry::now_secs;
use super::{derived_id, AgentsRuntime};

/// Removes `ARGV[1]` from the set only while its score is still at most `ARGV[2]`.
const REMOVE_IF_STALE: &str = r#"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"#;

/// Runs liveness passes every `liveness_period` until `shutdown`.
pub async fn run_liveness(rt: Arc<AgentsRuntime>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(rt.opts.liveness_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_reconcile: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match liveness_pass(&rt).await {
            Ok(Some(_)) => {
                if last_reconcile.is_none_or(|t| t.elapsed() >= rt.opts.reconcile_period) {
                    last_reconcile = Some(Instant::now());
                    if let Err(e) = reconcile(&rt).await {
                        tracing::warn!(error = %format!("{e:#}"), "liveness reconcile failed");
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "liveness pass failed"),
        }
    }
}

/// One pass. `Ok(None)` when another worker holds this period's lock; otherwise the ids
/// of the agents marked LOST.
pub async fn liveness_pass(rt: &AgentsRuntime) -> anyhow::Result<Option<Vec<String>>> {
    let mut conn = rt.redis.get().await?;
    let period_ms = rt.opts.liveness_period.as_millis().max(10) as u64;
    // Slightly shorter than the period, so the next tick of whichever worker finds it free.
    let ttl_ms = (period_ms * 9 / 10).max(5);
    let got: Option<String> = redis::cmd("SET")
        .arg(rt.keys.liveness_lock())
        .arg(&rt.opts.instance)
        .arg("NX")
        .arg("PX")
        .arg(ttl_ms)
        .query_async(&mut *conn)
        .await?;
    if got.is_none() {
        return Ok(None);
    }
    rt.metrics.liveness_passes.fetch_add(1, Ordering::Relaxed);
    let threshold = now_secs() - rt.opts.heartbeat_timeout.as_secs_f64();
    let stale: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
        .arg(rt.keys.last_seen())
        .arg("-inf")
        .arg(threshold)
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(1000)
        .query_async(&mut *conn)
        .await?;
    let script = redis::Script::new(REMOVE_IF_STALE);
    let mut lost = Vec::new();
    for (agent_id, score) in stale {
        let removed: i64 = script
            .key(rt.keys.last_seen())
            .arg(&agent_id)
            .arg(threshold)
            .invoke_async(&mut *conn)
            .await?;
        if removed == 0 {
            continue; // it heartbeated in the meantime
        }
        match agent_lost(rt, &agent_id, "agent-lost").await {
            Ok(true) => lost.push(agent_id.clone()),
            Ok(false) => {}
            Err(e) => {
                // Put it back with its old score so the next pass retries.
                tracing::warn!(agent_id, error = %format!("{e:#}"), "cannot mark an agent LOST; will retry");
                let _: i64 = redis::cmd("ZADD")
                    .arg(rt.keys.last_seen())
                    .arg("NX")
                    .arg(score)
                    .arg(&agent_id)
                    .query_async(&mut *conn)
                    .await?;
                continue;
            }
        }
        let _: i64 = redis::cmd("ZREM")
            .arg(rt.keys.last_seen())
            .arg(&agent_id)
            .query_async(&mut *conn)
            .await?;
    }
    Ok(Some(lost))
}

/// Marks one agent LOST (or TERMINATED for a clean shutdown) and announces it.
/// Returns whether the agent was alive before.
pub async fn agent_lost(rt: &AgentsRuntime, agent_id: &str, reason: &str) -> anyhow::Result<bool> {
    let (status, kernel_reason) = if reason == "agent-lost" {
        ("LOST", "agent-lost")
    } else {
        ("TERMINATED", "agent-terminated")
    };
    let id = agent_id.to_string();
    let down = rt
        .ctx
        .db
        .transact(move |txn| {
            let id = id.clone();
            Box::pin(async move { mark_agent_down(txn, &id, status, kernel_reason).await })
        })
        .await?;
    rt.cache.forget(agent_id);
    let Some(down) = down else {
        return Ok(false);
    };
    if status == "LOST" {
        tracing::warn!(
            agent_id,
            kernels = down.kernels.len(),
            "agent lost: no heartbeat within the timeout"
        );
        rt.metrics.agents_lost.fetch_add(1, Ordering::Relaxed);
    } else {
        tracing::info!(
            agent_id,
            kernels = down.kernels.len(),
            reason,
            "agent terminated"
        );
    }
    for (kernel_id, session_id) in &down.kernels {
        rt.publish(
            derived_id(*kernel_id, "kernel_terminated"),
            Event::KernelTerminated {
                kernel_id: *kernel_id,
                session_id: *session_id,
                reason: kernel_reason.into(),
                exit_code: -1,
            },
        )
        .await;
    }
    for session_id in &down.sessions_terminated {
        rt.publish(
            derived_id(*session_id, "session_terminated"),
            Event::SessionTerminated {
                session_id: *session_id,
                reason: kernel_reason.into(),
            },
        )
        .await;
    }
    rt.publish(
        uuid::Uuid::new_v4(),
        Event::AgentTerminated {
            agent_id: agent_id.to_string(),
            reason: reason.to_string(),
        },
    )
    .await;
    rt.request_schedule(&down.scaling_group).await;
    Ok(true)
}

/// Adds ALIVE agents missing from the liveness set (Redis flushed, manager moved), with
/// the current time, so an agent that never heartbeats again is still declared LOST.
async fn reconcile(rt: &AgentsRuntime) -> anyhow::Result<()> {
    let ids: Vec<String> = {
        let mut tx = rt.ctx.db.begin_readonly().await?;
        let ids = sqlx::query_scalar("SELECT id FROM agents WHERE status = 'ALIVE'")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        ids
    };
    if ids.is_empty() {
        return Ok(());
    }
    let mut conn = rt.redis.get().await?;
    let now = now_secs();
    for chunk in ids.chunks(500) {
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(rt.keys.last_seen()).arg("NX");
        for id in chunk {
            cmd.arg(now).arg(id);
        }
        let added: i64 = cmd.query_async(&mut *conn).await?;
        if added > 0 {
            tracing::info!(
                added,
                "liveness: tracking ALIVE agents that had no heartbeat record"
            );
        }
    }
    Ok(())
}
