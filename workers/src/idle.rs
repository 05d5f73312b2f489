//! The idle-timeout checker (21.03 #387, #404; orchestration.md §6.1).
//!
//! ## Once per period across the fleet
//! Every worker runs the loop; each period exactly one of them does the work: the one
//! whose `SET <prefix>idle.check.lock <instance> NX PX <0.9 × period>` succeeds. The lock
//! is never released early and simply expires, so a holder that dies mid-pass costs one
//! missed period, never a stuck lock, and two workers never check in the same period.
//! (A PostgreSQL advisory lock would need a dedicated connection held between passes for
//! the session-level variant, or would only cover one transaction for the `xact` variant
//! — not "once per period". The agents' liveness monitor uses the same Redis pattern.)
//!
//! ## A pass
//! 1. Only if etcd `config/idle/enabled` lists `timeout` (read every pass, so it can be
//!    switched without a restart).
//! 2. One read-only query: RUNNING **interactive** sessions (main kernels; batch sessions
//!    are exempt, as 21.03 #460 later made them) whose keypair's resource policy has a
//!    non-zero `idle_timeout` (seconds; 0 = never; negative = the etcd fallback
//!    `config/idle/checkers/timeout/threshold`, default `10m`), with the time the session
//!    became RUNNING — a session's start counts as an access.
//! 3. The last accesses in Redis (`session.{id}.last_access`, [`bai_events::keys`]) with
//!    `MGET`, in batches. A value of `0` means "busy" (never idle).
//! 4. Idle = `now − max(last access, start) > timeout`: a `terminate_session` command with
//!    reason `idle-timeout` is queued per session. Its id is derived from the session id,
//!    so the repeats of the next passes (while the termination is under way) are dropped
//!    by JetStream's duplicate window instead of piling up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use bai_core::redis::redis;
use bai_events::{keys, Command, Envelope};

use crate::runtime::WorkerContext;

/// The termination reason (the original's `DoTerminateSessionEvent(..., 'idle-timeout')`).
pub const IDLE_REASON: &str = "idle-timeout";
/// Fallback threshold when a policy's `idle_timeout` is negative and etcd says nothing.
pub const DEFAULT_THRESHOLD: Duration = Duration::from_secs(600);
/// Last-access keys read per `MGET`.
const MGET_BATCH: usize = 500;

#[derive(Clone, Debug)]
pub struct IdleOptions {
    /// How often the fleet checks (the original: 10 s).
    pub period: Duration,
    /// Prefix of the lock key (tests isolate with it; empty in production).
    pub redis_prefix: String,
    /// Identifies this worker in the lock.
    pub instance: String,
}

impl IdleOptions {
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            period: Duration::from_secs(10),
            redis_prefix: String::new(),
            instance: instance.into(),
        }
    }

    pub fn lock_key(&self) -> String {
        format!("{}idle.check.lock", self.redis_prefix)
    }
}

/// Counters for tests and operators.
#[derive(Debug, Default)]
pub struct IdleMetrics {
    pub passes: AtomicU64,
    pub terminations: AtomicU64,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct IdleReport {
    /// Sessions examined.
    pub checked: usize,
    /// Sessions found idle (a termination was queued for each).
    pub idle: Vec<Uuid>,
}

/// Runs idle passes every `period` until `shutdown`.
pub async fn run_idle_checker(
    ctx: Arc<WorkerContext>,
    opts: IdleOptions,
    metrics: Arc<IdleMetrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(opts.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match idle_pass(&ctx, &opts).await {
            Ok(Some(report)) => {
                metrics.passes.fetch_add(1, Ordering::Relaxed);
                metrics
                    .terminations
                    .fetch_add(report.idle.len() as u64, Ordering::Relaxed);
                if !report.idle.is_empty() {
                    tracing::info!(
                        checked = report.checked,
                        idle = report.idle.len(),
                        "idle sessions terminated"
                    );
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "idle check failed"),
        }
    }
}

/// Takes this period's lock; `false` if another worker has it.
async fn take_lock(ctx: &WorkerContext, opts: &IdleOptions) -> anyhow::Result<bool> {
    let redis = ctx
        .redis
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the idle checker needs Redis"))?;
    let mut conn = redis.get().await?;
    let ttl_ms = (opts.period.as_millis() as u64 * 9 / 10).max(5);
    let got: Option<String> = redis::cmd("SET")
        .arg(opts.lock_key())
        .arg(&opts.instance)
        .arg("NX")
        .arg("PX")
        .arg(ttl_ms)
        .query_async(&mut *conn)
        .await?;
    Ok(got.is_some())
}

/// `10m`, `600`, `1h30m`, `45s`, `2d` → a duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    if let Ok(secs) = t.parse::<f64>() {
        return (secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let mut total = 0f64;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        total += n * match c {
            'w' => 604_800.0,
            'd' => 86_400.0,
            'h' => 3600.0,
            'm' => 60.0,
            's' => 1.0,
            _ => return None,
        };
    }
    if !num.is_empty() {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

/// The idle checker's etcd settings: whether it is enabled, and the fallback threshold.
async fn settings(ctx: &WorkerContext) -> anyhow::Result<(bool, Duration)> {
    let Some(etcd) = &ctx.etcd else {
        return Ok((false, DEFAULT_THRESHOLD));
    };
    let enabled = etcd
        .get("config/idle/enabled")
        .await?
        .unwrap_or_default()
        .split(',')
        .any(|c| c.trim() == "timeout");
    let threshold = etcd
        .get("config/idle/checkers/timeout/threshold")
        .await?
        .and_then(|t| parse_duration(&t))
        .unwrap_or(DEFAULT_THRESHOLD);
    Ok((enabled, threshold))
}

#[derive(sqlx::FromRow)]
struct Candidate {
    session_id: Uuid,
    started: DateTime<Utc>,
    idle_timeout: i64,
}

/// One pass; `None` when another worker holds this period's lock.
pub async fn idle_pass(
    ctx: &WorkerContext,
    opts: &IdleOptions,
) -> anyhow::Result<Option<IdleReport>> {
    if !take_lock(ctx, opts).await? {
        return Ok(None);
    }
    let (enabled, threshold) = settings(ctx).await?;
    if !enabled {
        return Ok(Some(IdleReport::default()));
    }
    let mut txn = ctx.db.begin_readonly().await?;
    let rows: Vec<Candidate> = sqlx::query_as(
        "SELECT k.session_id, COALESCE(k.status_changed, k.created_at, now()) AS started, \
                p.idle_timeout \
         FROM kernels k \
         JOIN keypairs kp ON kp.access_key = k.access_key \
         JOIN keypair_resource_policies p ON p.name = kp.resource_policy \
         WHERE k.cluster_role = 'main' AND k.status = 'RUNNING' \
           AND k.session_type = 'INTERACTIVE' AND p.idle_timeout <> 0",
    )
    .fetch_all(&mut *txn)
    .await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *txn)
        .await?;
    txn.commit().await?;
    let mut report = IdleReport {
        checked: rows.len(),
        ..Default::default()
    };
    if rows.is_empty() {
        return Ok(Some(report));
    }
    let redis = ctx
        .redis
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the idle checker needs Redis"))?;
    let mut conn = redis.get().await?;
    for batch in rows.chunks(MGET_BATCH) {
        let keys: Vec<String> = batch
            .iter()
            .map(|r| keys::last_access_key(r.session_id))
            .collect();
        let accesses: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut *conn)
            .await?;
        for (row, access) in batch.iter().zip(accesses) {
            let last = match access.as_deref().map(str::trim) {
                Some("0") => continue, // busy (an execution in progress)
                Some(v) => v.parse::<f64>().ok(),
                None => None,
            };
            let started = row.started.timestamp_micros() as f64 / 1e6;
            let last = last.map_or(started, |l| l.max(started));
            let timeout = if row.idle_timeout > 0 {
                row.idle_timeout as f64
            } else {
                threshold.as_secs_f64()
            };
            let idle_for = now.timestamp_micros() as f64 / 1e6 - last;
            if idle_for > timeout {
                report.idle.push(row.session_id);
            }
        }
    }
    drop(conn);
    for sid in &report.idle {
        let cmd = Command::TerminateSession {
            session_id: *sid,
            reason: IDLE_REASON.into(),
        };
        let env = Envelope::new(
            Uuid::new_v5(sid, IDLE_REASON.as_bytes()),
            ctx.bus.originator(),
            cmd,
        );
        if let Err(e) = ctx.bus.enqueue_command(&env).await {
            tracing::warn!(session_id = %sid, error = %e, "cannot queue an idle session's termination");
        }
    }
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("600"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("5m3"), None);
    }
}
