//! The manager's side of the agent protocol (docs/AGENT_PROTOCOL.md):
//!
//! * [`ingest`]: consumes the agent events exchange's two queues with manual acks —
//!   heartbeats ([`registry`]) and lifecycle events ([`kernels`] transitions);
//! * [`liveness`]: marks agents LOST when their heartbeats stop, once per period across
//!   the whole fleet, and terminates their kernels;
//! * [`kernels`]: idempotent kernel/agent state transitions in the database, exposed for
//!   the scheduler and the session handlers;
//! * [`slots`]: ResourceSlot sums for occupancy recalculation.
//!
//! Hot-path rule (DESIGN.md rule 7): a heartbeat that changes nothing costs one Redis
//! `ZADD` and no database write. The database is written when an agent appears, changes
//! (slots, address, scaling group, region, version, compute plugins) or comes back from
//! LOST/TERMINATED.

pub mod ingest;
pub mod kernels;
pub mod liveness;
pub mod registry;
pub mod slots;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use bai_core::redis::RedisPool;
use bai_core::Config;
use bai_events::Event;

use crate::runtime::WorkerContext;

pub use kernels::{
    check_session_terminated, mark_agent_down, mark_kernel_creating, mark_kernel_preparing,
    mark_kernel_pulling, mark_kernel_started, mark_kernel_terminated, recalc_agent_occupancy,
    recalc_concurrency_used, set_session_result, AgentDown, KernelTransition,
};
pub use registry::HeartbeatOutcome;

/// Tunables of the ingest consumer and the liveness monitor.
#[derive(Clone, Debug)]
pub struct AgentIngestOptions {
    pub amqp_url: String,
    /// `rabbitmq.prefix`: names of the agent queues and exchanges.
    pub prefix: String,
    /// Prefix of this component's Redis keys: empty for the default `bai` prefix,
    /// `"{prefix}:"` otherwise (tests and side-by-side deployments isolate with it).
    pub redis_prefix: String,
    /// `manager.heartbeat-timeout`: silence after which an agent is LOST.
    pub heartbeat_timeout: Duration,
    /// How often the fleet checks for lost agents (the original: every 1 s).
    pub liveness_period: Duration,
    /// How often the liveness holder re-adds ALIVE agents missing from Redis (e.g. after a
    /// Redis flush), so they are still detected if they never heartbeat again.
    pub reconcile_period: Duration,
    /// Unacked heartbeats in flight per worker (they are handled concurrently).
    pub heartbeat_prefetch: u16,
    /// Unacked lifecycle events per worker.
    pub lifecycle_prefetch: u16,
    /// Lifecycle events are handled in this many ordered lanes, by hash of the agent id:
    /// one agent's events are applied in order, different agents' in parallel.
    pub lifecycle_lanes: usize,
    /// How long a cached "agent row matches its heartbeat" verdict is trusted before the
    /// row is read again (reads only; writes happen only on change).
    pub cache_ttl: Duration,
    /// Identifies this process in the liveness lock and in connection names.
    pub instance: String,
}

impl AgentIngestOptions {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            amqp_url: cfg.rabbitmq.url.clone(),
            prefix: cfg.rabbitmq.prefix.clone(),
            // The default deployment keeps the original's key names; any other prefix
            // gets its own keys, so deployments sharing a Redis never judge each other's
            // agents.
            redis_prefix: if cfg.rabbitmq.prefix == "bai" {
                String::new()
            } else {
                format!("{}:", cfg.rabbitmq.prefix)
            },
            heartbeat_timeout: Duration::from_secs_f64(cfg.manager.heartbeat_timeout.max(1.0)),
            liveness_period: Duration::from_secs(1),
            reconcile_period: Duration::from_secs(30),
            heartbeat_prefetch: 256,
            lifecycle_prefetch: 64,
            lifecycle_lanes: 16,
            cache_ttl: Duration::from_secs(600),
            instance: format!("{}-{}", cfg.manager.id, Uuid::new_v4().simple()),
        }
    }
}

/// Counters for tests, benchmarks and operators.
#[derive(Default, Debug)]
pub struct AgentIngestMetrics {
    /// Heartbeats handled (counted when done, before the ack).
    pub heartbeats: AtomicU64,
    /// Heartbeats that needed a database read (cache miss or agent new to Redis).
    pub heartbeat_db_reads: AtomicU64,
    /// Heartbeats that wrote the `agents` table (insert, change, revive).
    pub heartbeat_db_writes: AtomicU64,
    pub lifecycle_events: AtomicU64,
    /// Malformed or unprocessable messages rejected without requeue.
    pub rejected: AtomicU64,
    /// Deliveries requeued after a transient failure.
    pub requeued: AtomicU64,
    pub liveness_passes: AtomicU64,
    pub agents_lost: AtomicU64,
}

impl AgentIngestMetrics {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Redis keys of this component.
#[derive(Clone, Debug)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// Sorted set: member = agent id, score = Unix time (s) of its last heartbeat. The
    /// original used a hash; a sorted set answers "who is silent since T" in O(log n).
    pub fn last_seen(&self) -> String {
        format!("{}agent.last_seen", self.prefix)
    }

    /// Held for one liveness period by the worker that runs the fleet-wide check.
    pub fn liveness_lock(&self) -> String {
        format!("{}agent.liveness.lock", self.prefix)
    }

    /// Live statistics of one kernel (JSON, TTL 120 s): the original's key is the kernel id.
    pub fn kernel_stat(&self, kernel_id: Uuid) -> String {
        format!("{}{kernel_id}", self.prefix)
    }
}

/// Everything the agent loops share.
pub struct AgentsRuntime {
    pub ctx: Arc<WorkerContext>,
    pub redis: RedisPool,
    pub opts: AgentIngestOptions,
    pub metrics: Arc<AgentIngestMetrics>,
    pub keys: RedisKeys,
    pub(crate) cache: registry::HeartbeatCache,
}

impl AgentsRuntime {
    /// Fails when the worker context has no Redis pool (liveness lives in Redis).
    pub fn new(ctx: Arc<WorkerContext>, opts: AgentIngestOptions) -> anyhow::Result<Arc<Self>> {
        let redis = ctx.redis.clone().ok_or_else(|| {
            anyhow::anyhow!("the agent ingest needs Redis (worker context without a Redis pool)")
        })?;
        Ok(Arc::new(Self {
            keys: RedisKeys::new(&opts.redis_prefix),
            cache: registry::HeartbeatCache::new(opts.cache_ttl),
            redis,
            opts,
            ctx,
            metrics: Arc::default(),
        }))
    }

    /// Publishes a domain event with an idempotent id, retrying briefly: the database
    /// change it announces is already committed, so it must not be dropped on a blip.
    pub async fn publish(&self, id: Uuid, event: Event) {
        let mut wait = Duration::from_millis(50);
        for attempt in 1..=5 {
            match self.ctx.bus.publish_event_with_id(id, event.clone()).await {
                Ok(_) => return,
                Err(e) if attempt == 5 => {
                    tracing::error!(error = %e, event = ?event, "could not publish an agent event");
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }

    pub async fn request_schedule(&self, scaling_group: &str) {
        if let Err(e) = self.ctx.bus.request_schedule(scaling_group).await {
            tracing::warn!(error = %e, scaling_group, "could not request a scheduling pass");
        }
    }
}

/// Derives a stable event id (JetStream deduplicates repeats within its window).
pub fn derived_id(base: Uuid, what: &str) -> Uuid {
    Uuid::new_v5(&base, what.as_bytes())
}

/// Runs the ingest consumer and the liveness monitor until `shutdown`.
pub async fn run(rt: Arc<AgentsRuntime>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ingest = tokio::spawn(ingest::run_ingest(rt.clone(), shutdown.clone()));
    let liveness = tokio::spawn(liveness::run_liveness(rt.clone(), shutdown.clone()));
    let (a, b) = tokio::join!(ingest, liveness);
    a??;
    b?;
    Ok(())
}
