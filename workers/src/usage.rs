//! Resource accounting in the worker fleet:
//!
//! * [`recalculate`]: the `recalculate_usage` background task (`POST
//!   /resource/recalculate-usage`): every ALIVE agent's `occupied_slots` and every
//!   keypair's `concurrency_used` recomputed from the kernels, in small SERIALIZABLE
//!   transactions (a batch of rows each), reporting progress. The original did it in one
//!   transaction and left LOST/TERMINATED agents untouched (so does this).
//! * [`run_stat_sync`]: copies a kernel's last live statistics from Redis (where the
//!   agent ingest keeps them, TTL 120 s) into `kernels.last_stat` when the kernel
//!   terminates, so usage reports have them after the Redis key expires. It is a durable
//!   consumer of `kernel_terminated` events shared by all workers (each event handled by
//!   one worker; redelivered if that worker dies), so every termination path — agent
//!   event, forced destroy, lost agent — is covered without touching those paths.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::AckKind;
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use bai_core::redis::redis;
use bai_events::{Envelope, Event};

use crate::agents::kernels::{recalc_agent_occupancy, recalc_concurrency_used};
use crate::agents::RedisKeys;
use crate::bgtask::Progress;
use crate::runtime::WorkerContext;

/// Rows recalculated per transaction.
pub const RECALC_BATCH: usize = 50;

/// The `recalculate_usage` task.
pub async fn recalculate(
    ctx: &Arc<WorkerContext>,
    progress: &mut Progress,
) -> anyhow::Result<String> {
    let mut txn = ctx.db.begin_readonly().await?;
    let agents: Vec<String> =
        sqlx::query_scalar("SELECT id FROM agents WHERE status = 'ALIVE' ORDER BY id")
            .fetch_all(&mut *txn)
            .await?;
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT access_key FROM keypairs ORDER BY access_key")
            .fetch_all(&mut *txn)
            .await?;
    txn.commit().await?;
    progress.set_total((agents.len() + keys.len()) as f64);
    for chunk in agents.chunks(RECALC_BATCH) {
        let chunk: Arc<Vec<String>> = Arc::new(chunk.to_vec());
        let c = chunk.clone();
        ctx.db
            .transact(move |txn| {
                let c = c.clone();
                Box::pin(async move {
                    for a in c.iter() {
                        recalc_agent_occupancy(txn, a).await?;
                    }
                    Ok(())
                })
            })
            .await?;
        progress
            .update(
                chunk.len() as f64,
                Some(format!("Recalculated {} agent(s)", chunk.len())),
            )
            .await;
    }
    for chunk in keys.chunks(RECALC_BATCH) {
        let chunk: Arc<Vec<String>> = Arc::new(chunk.to_vec());
        let c = chunk.clone();
        ctx.db
            .transact(move |txn| {
                let c = c.clone();
                Box::pin(async move {
                    for k in c.iter() {
                        recalc_concurrency_used(txn, k).await?;
                    }
                    Ok(())
                })
            })
            .await?;
        progress
            .update(
                chunk.len() as f64,
                Some(format!("Recalculated {} keypair(s)", chunk.len())),
            )
            .await;
    }
    Ok(format!(
        "Recalculated the occupancy of {} agent(s) and the concurrency of {} keypair(s)",
        agents.len(),
        keys.len()
    ))
}

/// Name of the durable consumer of the last-stat copier (shared by all workers).
pub const STAT_SYNC_CONSUMER: &str = "stat-sync";

/// Tunables of [`run_stat_sync`].
#[derive(Clone, Debug, Default)]
pub struct StatSyncOptions {
    /// Prefix of the live-stat keys (the agent ingest's `redis_prefix`; empty in production).
    pub redis_prefix: String,
}

/// Copies `{prefix}{kernel_id}` (the live statistics) into `kernels.last_stat`, and the
/// kernel's execute count (`kernel.{id}.num_queries`, counted by the API) into
/// `kernels.num_queries` (never lowering it). Returns whether there was anything to copy.
/// Idempotent.
pub async fn sync_last_stat(
    ctx: &WorkerContext,
    keys: &RedisKeys,
    kernel_id: Uuid,
) -> anyhow::Result<bool> {
    let redis = ctx
        .redis
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no Redis pool"))?;
    let (raw, queries): (Option<Vec<u8>>, Option<i64>) = {
        let mut conn = redis.get().await?;
        redis::pipe()
            .cmd("GET")
            .arg(keys.kernel_stat(kernel_id))
            .cmd("GET")
            .arg(bai_events::keys::kernel_num_queries_key(kernel_id))
            .query_async(&mut *conn)
            .await?
    };
    let stat = match raw {
        None => None,
        Some(raw) => match serde_json::from_slice::<Value>(&raw) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(%kernel_id, "unreadable live statistics; not copied");
                None
            }
        },
    };
    if stat.is_none() && queries.is_none() {
        return Ok(false);
    }
    let stat = Arc::new(stat);
    ctx.db
        .transact(move |txn| {
            let stat = stat.clone();
            Box::pin(async move {
                if let Some(stat) = &*stat {
                    sqlx::query("UPDATE kernels SET last_stat = $2 WHERE id = $1")
                        .bind(kernel_id)
                        .bind(stat)
                        .execute(&mut **txn)
                        .await?;
                }
                if let Some(n) = queries {
                    sqlx::query(
                        "UPDATE kernels SET num_queries = GREATEST(COALESCE(num_queries, 0), $2) \
                         WHERE id = $1 AND COALESCE(num_queries, 0) < $2",
                    )
                    .bind(kernel_id)
                    .bind(n)
                    .execute(&mut **txn)
                    .await?;
                }
                Ok(())
            })
        })
        .await?;
    Ok(true)
}

/// Runs the last-stat copier until `shutdown`.
pub async fn run_stat_sync(
    ctx: Arc<WorkerContext>,
    opts: StatSyncOptions,
    shutdown: CancellationToken,
) {
    let keys = RedisKeys::new(&opts.redis_prefix);
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match stat_sync_pass(&ctx, &keys, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "last-stat copier interrupted; restarting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn stat_sync_pass(
    ctx: &Arc<WorkerContext>,
    keys: &RedisKeys,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let subjects = ctx.bus.subjects();
    let stream = ctx
        .bus
        .jetstream()
        .get_stream(subjects.events_stream())
        .await?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            STAT_SYNC_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(STAT_SYNC_CONSUMER.into()),
                filter_subject: format!("{}.evt.kernel_terminated.*", subjects.prefix()),
                deliver_policy: DeliverPolicy::New,
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                // Live statistics expire 120 s after the kernel's last report, so retrying
                // much longer than that cannot help.
                max_deliver: 10,
                max_ack_pending: 256,
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(64)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await?;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = messages.next() => match m {
                Some(m) => m.map_err(|e| anyhow::anyhow!("{e}"))?,
                None => anyhow::bail!("the event stream ended"),
            },
        };
        let kernel = Envelope::<Event>::from_slice(&msg.payload)
            .ok()
            .and_then(|env| match env.body {
                Event::KernelTerminated { kernel_id, .. } => Some(kernel_id),
                _ => None,
            });
        let ack = match kernel {
            None => AckKind::Ack,
            Some(k) => match sync_last_stat(ctx, keys, k).await {
                Ok(_) => AckKind::Ack,
                Err(e) => {
                    tracing::warn!(kernel_id = %k, error = %format!("{e:#}"), "cannot copy last statistics; will retry");
                    AckKind::Nak(Some(Duration::from_secs(1)))
                }
            },
        };
        if let Err(e) = msg.ack_with(ack).await {
            tracing::debug!(error = %e, "could not settle a kernel_terminated event");
        }
    }
}
