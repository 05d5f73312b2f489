//! The worker runtime: pulls commands from the shared durable consumer, runs handlers with
//! bounded concurrency, and acks only after the handler's transaction has committed.
//!
//! Failure policy:
//! * transient error → `nak` with a delay growing with the delivery count;
//! * after `max_deliver` deliveries, or on a permanent error → `term`, an error log, a
//!   `command_failed` event and a `Failed` reply: never silently dropped;
//! * undecodable message → `term` + `command_failed` (it can never succeed);
//! * crash (even `kill -9`) before the ack → JetStream redelivers after `ack_wait`, and the
//!   idempotency layer makes the second run a no-op if the first one committed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use bai_core::metrics::prometheus::{HistogramVec, IntCounterVec};
use bai_core::{Db, TxnError};
use bai_events::{Bus, Command, CommandReply, Envelope, Event};

use crate::handlers;

/// Everything a handler may touch.
pub struct WorkerContext {
    pub db: Db,
    pub bus: Bus,
    /// Shared config (manager status, images, scheduler plugin options...).
    pub etcd: Option<bai_core::etcd::Etcd>,
    /// Counters, liveness, live stats.
    pub redis: Option<bai_core::redis::RedisPool>,
    /// Manager → agent RPC over RabbitMQ (session start/destroy).
    pub agent_rpc: Option<Arc<bai_agent_proto::AgentRpcClient>>,
    pub metrics: Arc<WorkerMetrics>,
}

/// A worker's counters. The plain atomics are for tests and benchmarks; the labelled
/// Prometheus series (by command kind, by scaling group) are for `/metrics`, registered
/// with [`WorkerMetrics::register`].
pub struct WorkerMetrics {
    pub handled: AtomicU64,
    pub redelivered: AtomicU64,
    pub nacked: AtomicU64,
    pub failed: AtomicU64,
    pub passes: AtomicU64,
    pub triggers: AtomicU64,
    /// Commands by kind and outcome: `handled` (acked after commit), `nacked` (retried
    /// later), `failed` (terminated), `redelivered` (a delivery after the first).
    pub commands: IntCounterVec,
    /// Handler duration by kind (settled deliveries, failures included).
    pub command_seconds: HistogramVec,
    /// Scheduling pass duration by scaling group.
    pub pass_seconds: HistogramVec,
    /// Sessions placed (PENDING → SCHEDULED) by scaling group.
    pub placements: IntCounterVec,
    /// Scheduling passes that failed, by scaling group.
    pub pass_errors: IntCounterVec,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        use bai_core::metrics::{counter_vec, histogram_vec, latency_buckets};
        Self {
            handled: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            triggers: AtomicU64::new(0),
            commands: counter_vec(
                "bai_worker_commands_total",
                "Commands seen by this worker by kind and outcome (handled, nacked, failed, redelivered)",
                &["kind", "outcome"],
            ),
            command_seconds: histogram_vec(
                "bai_worker_command_duration_seconds",
                "Time spent handling a command, by kind",
                &["kind"],
                latency_buckets(),
            ),
            pass_seconds: histogram_vec(
                "bai_scheduler_pass_duration_seconds",
                "Duration of one scheduling pass (schedule + prepare) by scaling group",
                &["scaling_group"],
                latency_buckets(),
            ),
            placements: counter_vec(
                "bai_scheduler_placements_total",
                "Sessions placed on agents (PENDING -> SCHEDULED) by scaling group",
                &["scaling_group"],
            ),
            pass_errors: counter_vec(
                "bai_scheduler_pass_errors_total",
                "Scheduling passes that failed, by scaling group",
                &["scaling_group"],
            ),
        }
    }
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics")
            .field("handled", &self.handled)
            .field("redelivered", &self.redelivered)
            .field("nacked", &self.nacked)
            .field("failed", &self.failed)
            .field("passes", &self.passes)
            .field("triggers", &self.triggers)
            .finish_non_exhaustive()
    }
}

impl WorkerMetrics {
    pub fn register(&self, registry: &bai_core::metrics::prometheus::Registry) {
        use bai_core::metrics::register;
        register(registry, self.commands.clone());
        register(registry, self.command_seconds.clone());
        register(registry, self.pass_seconds.clone());
        register(registry, self.placements.clone());
        register(registry, self.pass_errors.clone());
    }

    fn command(&self, kind: &str, outcome: &str) {
        self.commands.with_label_values(&[kind, outcome]).inc();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth another delivery (DB away, serialization retries exhausted, RPC timeout...).
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// Can never succeed; terminate now.
    #[error("permanent: {0:#}")]
    Permanent(anyhow::Error),
}

impl HandlerError {
    pub fn from_txn(e: TxnError) -> Self {
        // Any database failure may be a blip; the delivery bound keeps this finite.
        HandlerError::Transient(e.into())
    }
}

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Commands handled at once by this worker.
    pub concurrency: usize,
    /// How long to wait for in-flight handlers on shutdown before leaving them to
    /// redelivery.
    pub shutdown_grace: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            concurrency: 64,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Runs the command loop until `shutdown` fires; then stops pulling, waits for in-flight
/// handlers (bounded by the grace period) and returns.
pub async fn run_command_loop(
    ctx: Arc<WorkerContext>,
    opts: WorkerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // A semaphore bounds in-flight handlers; a permit is taken *before* pulling the next
    // message so the worker never holds more unacked commands than it can run.
    let permits = Arc::new(Semaphore::new(opts.concurrency));
    let mut tasks = JoinSet::new();
    let mut backoff_ms = 100u64;
    'outer: while !shutdown.is_cancelled() {
        let consumer = match ctx.bus.command_consumer().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the command consumer; retrying");
                sleep_or_cancel(&shutdown, &mut backoff_ms).await;
                continue;
            }
        };
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(opts.concurrency.clamp(1, 256))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull commands; retrying");
                sleep_or_cancel(&shutdown, &mut backoff_ms).await;
                continue;
            }
        };
        backoff_ms = 100;
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                p = permits.clone().acquire_owned() => p?,
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                m = messages.next() => m,
            };
            match next {
                Some(Ok(msg)) => {
                    let ctx = ctx.clone();
                    tasks.spawn(async move {
                        process(&ctx, msg).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    // Missed heartbeats, NATS restarts...: rebuild the pull stream.
                    tracing::warn!(error = %e, "command stream interrupted; reconnecting");
                    break;
                }
                None => break,
            }
            while tasks.try_join_next().is_some() {}
        }
        sleep_or_cancel(&shutdown, &mut backoff_ms).await;
    }
    tracing::info!(
        in_flight = tasks.len(),
        "worker stopping: waiting for in-flight commands"
    );
    let drained = tokio::time::timeout(opts.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "grace period over; unfinished commands will be redelivered"
        );
        tasks.abort_all();
    }
    Ok(())
}

async fn sleep_or_cancel(shutdown: &CancellationToken, backoff_ms: &mut u64) {
    tokio::select! {
        _ = shutdown.cancelled() => {},
        _ = tokio::time::sleep(Duration::from_millis(*backoff_ms)) => {},
    }
    *backoff_ms = (*backoff_ms * 2).min(5_000);
}

/// Handles one delivery and settles it (ack / nak / term) exactly once.
async fn process(ctx: &Arc<WorkerContext>, msg: async_nats::jetstream::Message) {
    let deliveries = msg.info().map(|i| i.delivered as u64).unwrap_or(1);
    let max_deliver = ctx.bus.options().max_deliver.max(1) as u64;
    // The subject ends with the kind, so even an undecodable command is counted by kind.
    let subject_kind = msg
        .subject
        .rsplit('.')
        .next()
        .unwrap_or("unknown")
        .to_string();
    if deliveries > 1 {
        ctx.metrics.redelivered.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.command(&subject_kind, "redelivered");
    }
    if deliveries > max_deliver {
        // Earlier deliveries died without settling (worker crashes, hangs past ack_wait):
        // give up loudly instead of looping forever.
        let id = command_id_header(&msg).unwrap_or_else(Uuid::nil);
        tracing::error!(subject = %msg.subject, deliveries, "command exceeded its delivery bound; terminating it");
        settle(&msg, AckKind::Term).await;
        ctx.metrics.failed.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.command(&subject_kind, "failed");
        fail_event(
            ctx,
            id,
            msg.subject.as_str(),
            "exceeded the maximum number of deliveries",
            deliveries,
        )
        .await;
        return;
    }
    let env = match Envelope::<Command>::from_slice(&msg.payload) {
        Ok(env) => env,
        Err(e) => {
            let id = command_id_header(&msg).unwrap_or_else(Uuid::nil);
            tracing::error!(subject = %msg.subject, error = %e, "undecodable command; terminating it");
            settle(&msg, AckKind::Term).await;
            ctx.metrics.command(&subject_kind, "failed");
            fail_event(ctx, id, "undecodable", &e.to_string(), deliveries).await;
            return;
        }
    };
    let span = tracing::info_span!("command", id = %env.id, kind = %env.kind, request_id = env.request_id.as_deref().unwrap_or(""));
    let started = std::time::Instant::now();
    // The request id also scopes the handler's agent RPCs, so the agent logs it too.
    let outcome = bai_agent_proto::request_id::scope(
        env.request_id.clone(),
        async {
            if env.body.is_long_running() {
                with_progress_acks(ctx, &msg, handlers::dispatch(ctx, &env)).await
            } else {
                handlers::dispatch(ctx, &env).await
            }
        }
        .instrument(span.clone()),
    )
    .await;
    settle_outcome(ctx, &msg, &env, outcome, deliveries, max_deliver, started)
        .instrument(span)
        .await;
}

/// Settles a decoded command after its handler ran, counts it, and replies.
async fn settle_outcome(
    ctx: &Arc<WorkerContext>,
    msg: &async_nats::jetstream::Message,
    env: &Envelope<Command>,
    outcome: Result<CommandReply, HandlerError>,
    deliveries: u64,
    max_deliver: u64,
    started: std::time::Instant,
) {
    ctx.metrics
        .command_seconds
        .with_label_values(&[env.kind.as_str()])
        .observe(started.elapsed().as_secs_f64());
    match outcome {
        Ok(reply) => {
            settle(msg, AckKind::Ack).await;
            ctx.metrics.handled.fetch_add(1, Ordering::Relaxed);
            ctx.metrics.command(&env.kind, "handled");
            // One line per command, in the span carrying the API's request id.
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                deliveries,
                "command handled"
            );
            send_reply(ctx, env, &reply).await;
        }
        Err(HandlerError::Transient(e)) if deliveries < max_deliver => {
            // Back off 0.5 s, 1 s, 2 s ... (capped) before the next delivery.
            let delay = Duration::from_millis(500u64.saturating_mul(1 << (deliveries - 1).min(6)));
            tracing::warn!(error = %format!("{e:#}"), deliveries, "command failed; will retry");
            ctx.metrics.nacked.fetch_add(1, Ordering::Relaxed);
            ctx.metrics.command(&env.kind, "nacked");
            settle(msg, AckKind::Nak(Some(delay.min(Duration::from_secs(30))))).await;
        }
        Err(e) => {
            tracing::error!(error = %e, deliveries, "command failed for good; terminating it");
            settle(msg, AckKind::Term).await;
            ctx.metrics.failed.fetch_add(1, Ordering::Relaxed);
            ctx.metrics.command(&env.kind, "failed");
            fail_event(ctx, env.id, &env.kind, &e.to_string(), deliveries).await;
            send_reply(
                ctx,
                env,
                &CommandReply::Failed {
                    error: e.to_string(),
                },
            )
            .await;
        }
    }
}

/// Runs a long handler (a background task) while telling JetStream every third of
/// `ack_wait` that the command is still being worked on, so it is not redelivered to a
/// second worker meanwhile. If this worker dies, the progress acks stop and the command is
/// redelivered after `ack_wait`: the task runs again elsewhere instead of being lost.
async fn with_progress_acks<F>(
    ctx: &Arc<WorkerContext>,
    msg: &async_nats::jetstream::Message,
    handler: F,
) -> Result<CommandReply, HandlerError>
where
    F: std::future::Future<Output = Result<CommandReply, HandlerError>>,
{
    let every = (ctx.bus.options().ack_wait / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(handler);
    loop {
        tokio::select! {
            out = &mut handler => return out,
            _ = tick.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::warn!(error = %e, "could not extend a long-running command");
                }
            }
        }
    }
}

fn command_id_header(msg: &async_nats::jetstream::Message) -> Option<Uuid> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .and_then(|v| Uuid::parse_str(v.as_str()).ok())
}

async fn settle(msg: &async_nats::jetstream::Message, kind: AckKind) {
    // A lost ack only means a redelivery, which the idempotency layer absorbs.
    if let Err(e) = msg.ack_with(kind).await {
        tracing::warn!(error = %e, "could not settle a command message");
    }
}

async fn send_reply(ctx: &Arc<WorkerContext>, env: &Envelope<Command>, reply: &CommandReply) {
    if let Some(to) = &env.reply_to {
        if let Err(e) = ctx.bus.reply(to, reply).await {
            tracing::debug!(error = %e, "could not send a command reply");
        }
    }
}

async fn fail_event(ctx: &Arc<WorkerContext>, id: Uuid, kind: &str, error: &str, deliveries: u64) {
    let ev = Event::CommandFailed {
        command_id: id,
        kind: kind.to_string(),
        error: error.to_string(),
        deliveries,
    };
    // Derived id: a second termination of the same command publishes no second event.
    let ev_id = Uuid::new_v5(&id, b"command_failed");
    if let Err(e) = ctx.bus.publish_event_with_id(ev_id, ev).await {
        tracing::error!(error = %e, command_id = %id, "could not publish command_failed");
    }
}
