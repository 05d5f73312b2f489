//! The agent-event consumer: two durable queues, manual acks.
//!
//! * **Heartbeats** (`{prefix}.agent.heartbeats`) are handled concurrently (bounded by the
//!   prefetch) and always acked once handled: a failed heartbeat is replaced 3 s later.
//! * **Lifecycle events** (`{prefix}.agent.lifecycle`) are handled in ordered lanes — one
//!   agent's events in the order they were queued, different agents in parallel — and
//!   acked only after their transaction committed. A transient failure (database or Redis
//!   away, serialization retries exhausted) requeues the message after a pause; anything
//!   else is rejected without requeue and lands in `{prefix}.agent.rejected`.
//! * **Malformed messages** (not JSON, unknown event, wrong protocol version) are rejected
//!   without requeue and logged; the consumer carries on.
//!
//! Several workers can consume the same queues (competing consumers). If a worker dies,
//! the broker redelivers its unacked messages to the others; every handler is idempotent.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use bai_agent_proto::amqp;
use bai_agent_proto::{decode, AgentEvent, AgentMessage, Names};
use bai_core::redis::redis;
use bai_events::{Command, Envelope, Event};

use super::kernels::{self, KernelTransition};
use super::liveness::agent_lost;
use super::registry::handle_heartbeat;
use super::{derived_id, AgentsRuntime};

/// How long a transiently failed lifecycle event waits before it is requeued.
const REQUEUE_DELAY: Duration = Duration::from_secs(1);
/// TTL of a kernel's live statistics in Redis (the original's 120 s).
const STAT_TTL_SECS: u64 = 120;

/// Consumes until `shutdown`, reconnecting with backoff when the broker goes away.
pub async fn run_ingest(rt: Arc<AgentsRuntime>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut wait = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match consume(&rt, &shutdown).await {
            Ok(()) if shutdown.is_cancelled() => break,
            Ok(()) => tracing::warn!("agent event consumers ended; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "agent event ingest failed; reconnecting")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    Ok(())
}

async fn consume(rt: &Arc<AgentsRuntime>, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let names = Names::new(&rt.opts.prefix);
    let conn = amqp::connect(
        &rt.opts.amqp_url,
        &format!("ingest:{}", rt.opts.instance),
        Duration::from_secs(10),
    )
    .await?;
    let hb_channel = conn.create_channel().await?;
    amqp::declare_topology(&hb_channel, &names).await?;
    hb_channel
        .basic_qos(rt.opts.heartbeat_prefetch, BasicQosOptions::default())
        .await?;
    let ev_channel = conn.create_channel().await?;
    ev_channel
        .basic_qos(rt.opts.lifecycle_prefetch, BasicQosOptions::default())
        .await?;
    let mut heartbeats = hb_channel
        .basic_consume(
            &names.heartbeat_queue(),
            &format!("hb:{}", rt.opts.instance),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut lifecycle = ev_channel
        .basic_consume(
            &names.lifecycle_queue(),
            &format!("ev:{}", rt.opts.instance),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(prefix = %names.prefix(), "consuming agent events");

    let mut tasks = JoinSet::new();
    let hb_permits = Arc::new(Semaphore::new(rt.opts.heartbeat_prefetch.max(1) as usize));
    let lanes: Vec<mpsc::UnboundedSender<(Delivery, AgentMessage)>> =
        (0..rt.opts.lifecycle_lanes.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::unbounded_channel::<(Delivery, AgentMessage)>();
                let rt = rt.clone();
                tasks.spawn(async move {
                    while let Some((delivery, msg)) = rx.recv().await {
                        process_lifecycle(&rt, delivery, msg).await;
                    }
                });
                tx
            })
            .collect();

    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            d = heartbeats.next() => match d {
                None => break Ok(()),
                Some(Err(e)) => break Err(anyhow::anyhow!("heartbeat consumer: {e}")),
                Some(Ok(delivery)) => {
                    let permit = hb_permits.clone().acquire_owned().await?;
                    let rt = rt.clone();
                    tasks.spawn(async move {
                        process_heartbeat(&rt, delivery).await;
                        drop(permit);
                    });
                }
            },
            d = lifecycle.next() => match d {
                None => break Ok(()),
                Some(Err(e)) => break Err(anyhow::anyhow!("lifecycle consumer: {e}")),
                Some(Ok(delivery)) => {
                    match decode::<AgentMessage>(&delivery.data) {
                        Ok(msg) => {
                            let lane = lane_of(&msg.agent_id, lanes.len());
                            if let Err(mpsc::error::SendError((d, _))) = lanes[lane].send((delivery, msg)) {
                                settle(&d, Settle::Requeue).await;
                            }
                        }
                        Err(e) => reject(rt, &delivery, &e.to_string(), "lifecycle").await,
                    }
                }
            },
        }
        while tasks.try_join_next().is_some() {}
    };
    // Stop taking messages; let what we hold finish (unacked ones are redelivered to other
    // workers when the connection closes).
    drop(lanes);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    let _ = conn.close(200, "ingest stopping").await;
    result
}

fn lane_of(agent_id: &str, lanes: usize) -> usize {
    let mut h = DefaultHasher::new();
    agent_id.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

enum Settle {
    Ack,
    Requeue,
    Reject,
}

async fn settle(d: &Delivery, how: Settle) {
    let res = match how {
        Settle::Ack => d.ack(BasicAckOptions::default()).await,
        Settle::Requeue => {
            d.nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
        }
        Settle::Reject => {
            d.nack(BasicNackOptions {
                requeue: false,
                ..Default::default()
            })
            .await
        }
    };
    if let Err(e) = res {
        // A lost ack only means a redelivery, which the idempotent handlers absorb.
        tracing::warn!(error = %e, "could not settle an agent message");
    }
}

async fn reject(rt: &AgentsRuntime, d: &Delivery, why: &str, queue: &str) {
    rt.metrics.rejected.fetch_add(1, Ordering::Relaxed);
    let preview: String = String::from_utf8_lossy(&d.data).chars().take(200).collect();
    tracing::warn!(queue, routing_key = %d.routing_key, error = why, payload = %preview, "rejected a malformed agent message");
    settle(d, Settle::Reject).await;
}

async fn process_heartbeat(rt: &AgentsRuntime, delivery: Delivery) {
    let msg = match decode::<AgentMessage>(&delivery.data) {
        Ok(m) => m,
        Err(e) => return reject(rt, &delivery, &e.to_string(), "heartbeat").await,
    };
    let AgentEvent::Heartbeat(info) = &msg.body else {
        return reject(rt, &delivery, "not a heartbeat", "heartbeat").await;
    };
    if let Err(e) = handle_heartbeat(rt, &msg.agent_id, info, msg.ts).await {
        tracing::warn!(agent_id = %msg.agent_id, error = %format!("{e:#}"), "heartbeat not processed (the next one will be)");
    }
    rt.metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
    settle(&delivery, Settle::Ack).await;
}

async fn process_lifecycle(rt: &AgentsRuntime, delivery: Delivery, msg: AgentMessage) {
    rt.metrics.lifecycle_events.fetch_add(1, Ordering::Relaxed);
    match handle_lifecycle(rt, &msg).await {
        Ok(()) => settle(&delivery, Settle::Ack).await,
        Err(e) if is_transient(&e) => {
            rt.metrics.requeued.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(agent_id = %msg.agent_id, event = msg.body.name(), error = %format!("{e:#}"), "agent event failed; requeueing");
            tokio::time::sleep(REQUEUE_DELAY).await;
            settle(&delivery, Settle::Requeue).await;
        }
        Err(e) => {
            rt.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::error!(agent_id = %msg.agent_id, event = msg.body.name(), error = %format!("{e:#}"), "agent event cannot be applied; dead-lettered");
            settle(&delivery, Settle::Reject).await;
        }
    }
}

/// Connection-level failures (database, Redis, bus) are worth another delivery; data
/// errors are not.
fn is_transient(e: &anyhow::Error) -> bool {
    for c in e.chain() {
        if let Some(t) = c.downcast_ref::<bai_core::TxnError>() {
            return match t {
                bai_core::TxnError::Database(d) => !is_data_error(d),
                _ => true,
            };
        }
        if let Some(d) = c.downcast_ref::<sqlx::Error>() {
            return !is_data_error(d);
        }
        if c.downcast_ref::<redis::RedisError>().is_some() {
            return true;
        }
    }
    false
}

fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("42")),
        sqlx::Error::Decode(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::TypeNotFound { .. } => true,
        _ => false,
    }
}

/// Applies one lifecycle event (idempotently) and publishes what it announces.
pub async fn handle_lifecycle(rt: &AgentsRuntime, msg: &AgentMessage) -> anyhow::Result<()> {
    let agent_id = msg.agent_id.as_str();
    match &msg.body {
        AgentEvent::Heartbeat(info) => {
            handle_heartbeat(rt, agent_id, info, msg.ts).await?;
        }
        AgentEvent::AgentStarted { reason } => {
            rt.publish(
                derived_id(msg.id, "agent_started"),
                Event::AgentStarted {
                    agent_id: agent_id.to_string(),
                    reason: reason.clone(),
                },
            )
            .await;
        }
        AgentEvent::AgentTerminated { reason } => {
            agent_lost(rt, agent_id, reason).await?;
            let mut conn = rt.redis.get().await?;
            let _: i64 = redis::cmd("ZREM")
                .arg(rt.keys.last_seen())
                .arg(agent_id)
                .query_async(&mut *conn)
                .await?;
        }
        AgentEvent::KernelPreparing(lc) => {
            let t = in_txn(rt, lc.kernel_id, |c, k| {
                Box::pin(kernels::mark_kernel_preparing(c, k))
            })
            .await?;
            if let Some(t) = live(t) {
                rt.publish(
                    derived_id(msg.id, "kernel_preparing"),
                    Event::KernelPreparing {
                        kernel_id: lc.kernel_id,
                        session_id: t.session_id,
                        creation_id: lc.creation_id.clone(),
                        reason: lc.reason.clone(),
                    },
                )
                .await;
            }
        }
        AgentEvent::KernelPulling(lc) => {
            let image = lc.reason.clone();
            let t = in_txn(rt, lc.kernel_id, move |c, k| {
                let image = image.clone();
                Box::pin(async move { kernels::mark_kernel_pulling(c, k, &image).await })
            })
            .await?;
            if let Some(t) = live(t) {
                rt.publish(
                    derived_id(msg.id, "kernel_pulling"),
                    Event::KernelPulling {
                        kernel_id: lc.kernel_id,
                        session_id: t.session_id,
                        creation_id: lc.creation_id.clone(),
                        reason: lc.reason.clone(),
                    },
                )
                .await;
            }
        }
        AgentEvent::KernelCreating(lc) => {
            let t = in_txn(rt, lc.kernel_id, |c, k| {
                Box::pin(kernels::mark_kernel_creating(c, k))
            })
            .await?;
            if let Some(t) = live(t) {
                rt.publish(
                    derived_id(msg.id, "kernel_creating"),
                    Event::KernelCreating {
                        kernel_id: lc.kernel_id,
                        session_id: t.session_id,
                        creation_id: lc.creation_id.clone(),
                        reason: lc.reason.clone(),
                    },
                )
                .await;
            }
        }
        AgentEvent::KernelStarted(ks) => {
            let (container_id, host, ports) = (
                ks.container_id.clone(),
                ks.kernel_host.clone(),
                serde_json::to_value(&ks.service_ports)?,
            );
            let t = in_txn(rt, ks.kernel_id, move |c, k| {
                let (container_id, host, ports) =
                    (container_id.clone(), host.clone(), ports.clone());
                Box::pin(async move {
                    kernels::mark_kernel_started(
                        c,
                        k,
                        container_id.as_deref(),
                        host.as_deref(),
                        Some(&ports),
                    )
                    .await
                })
            })
            .await?;
            if let Some(t) = t.filter(|t| t.changed) {
                rt.publish(
                    derived_id(msg.id, "kernel_started"),
                    Event::KernelStarted {
                        kernel_id: ks.kernel_id,
                        session_id: t.session_id,
                        creation_id: ks.creation_id.clone(),
                        reason: ks.reason.clone(),
                    },
                )
                .await;
            }
        }
        AgentEvent::KernelTerminated {
            kernel_id,
            reason,
            exit_code,
            ..
        } => {
            let (r, code) = (reason.clone(), *exit_code);
            let t = in_txn(rt, *kernel_id, move |c, k| {
                let r = r.clone();
                Box::pin(async move { kernels::mark_kernel_terminated(c, k, &r, Some(code)).await })
            })
            .await?;
            if let Some(t) = t.filter(|t| t.changed || t.from == "TERMINATED") {
                announce_terminated(rt, &t, reason, *exit_code).await;
            }
        }
        AgentEvent::SessionSuccess {
            session_id,
            reason,
            exit_code,
            ..
        }
        | AgentEvent::SessionFailure {
            session_id,
            reason,
            exit_code,
            ..
        } => {
            let success = matches!(msg.body, AgentEvent::SessionSuccess { .. });
            let (sid, code) = (*session_id, *exit_code);
            let found = rt
                .ctx
                .db
                .transact(move |txn| {
                    Box::pin(
                        async move { kernels::set_session_result(txn, sid, success, code).await },
                    )
                })
                .await?;
            if found {
                let event = if success {
                    Event::SessionSuccess {
                        session_id: sid,
                        reason: reason.clone(),
                        exit_code: code,
                    }
                } else {
                    Event::SessionFailure {
                        session_id: sid,
                        reason: reason.clone(),
                        exit_code: code,
                    }
                };
                rt.publish(derived_id(sid, "session_result"), event).await;
                // The original's `handle_batch_result`: a finished batch session is
                // destroyed (reason `task-finished`). Through a durable command whose id
                // is derived from the session, so a redelivered result queues it once
                // (JetStream de-duplication) and a worker crash cannot lose it.
                let cmd = Command::TerminateSession {
                    session_id: sid,
                    reason: crate::sessions::BATCH_FINISHED_REASON.into(),
                };
                let env = Envelope::new(
                    derived_id(sid, crate::sessions::BATCH_FINISHED_REASON),
                    rt.ctx.bus.originator(),
                    cmd,
                );
                if let Err(e) = rt.ctx.bus.enqueue_command(&env).await {
                    tracing::warn!(session_id = %sid, error = %e, "cannot queue a finished batch session's termination");
                    return Err(e.into());
                }
            }
        }
        AgentEvent::KernelStats { stats } => {
            // Live statistics go to Redis only (the original wrote them to the database
            // every 5 s per agent).
            let mut conn = rt.redis.get().await?;
            let mut pipe = redis::pipe();
            for (kernel_id, stat) in stats {
                pipe.cmd("SET")
                    .arg(rt.keys.kernel_stat(*kernel_id))
                    .arg(serde_json::to_vec(stat)?)
                    .arg("EX")
                    .arg(STAT_TTL_SECS)
                    .ignore();
            }
            let _: () = pipe.query_async(&mut *conn).await?;
        }
    }
    Ok(())
}

fn live(t: Option<KernelTransition>) -> Option<KernelTransition> {
    t.filter(|t| !kernels::DEAD.contains(&t.from.as_str()))
}

type TransitionFn = dyn for<'c> Fn(
        &'c mut sqlx::PgConnection,
        Uuid,
    ) -> futures::future::BoxFuture<'c, anyhow::Result<Option<KernelTransition>>>
    + Send
    + Sync;

/// Runs one kernel transition in a SERIALIZABLE transaction (retried on conflicts).
async fn in_txn<F>(
    rt: &AgentsRuntime,
    kernel_id: Uuid,
    f: F,
) -> anyhow::Result<Option<KernelTransition>>
where
    F: for<'c> Fn(
            &'c mut sqlx::PgConnection,
            Uuid,
        )
            -> futures::future::BoxFuture<'c, anyhow::Result<Option<KernelTransition>>>
        + Send
        + Sync
        + 'static,
{
    let f: Arc<TransitionFn> = Arc::new(f);
    let out = rt
        .ctx
        .db
        .transact(move |txn| {
            let f = f.clone();
            Box::pin(async move { f(txn, kernel_id).await })
        })
        .await?;
    Ok(out)
}

async fn announce_terminated(
    rt: &AgentsRuntime,
    t: &KernelTransition,
    reason: &str,
    exit_code: i32,
) {
    // Kernel-derived id: whichever path reports this kernel's end first (agent event,
    // lost-agent monitor, redelivery), JetStream keeps one event.
    rt.publish(
        derived_id(t.kernel_id, "kernel_terminated"),
        Event::KernelTerminated {
            kernel_id: t.kernel_id,
            session_id: t.session_id,
            reason: reason.to_string(),
            exit_code,
        },
    )
    .await;
    if t.session_terminated {
        rt.publish(
            derived_id(t.session_id, "session_terminated"),
            Event::SessionTerminated {
                session_id: t.session_id,
                reason: reason.to_string(),
            },
        )
        .await;
    }
    if let Some(sg) = &t.scaling_group {
        rt.request_schedule(sg).await;
    }
}
