//! Background tasks (21.03 #392, #394): long jobs that run in a worker and report
//! progress to anyone watching `GET /events/background-task?task_id=`.
//!
//! ## Life of a task
//! 1. The API publishes `start_background_task` with the task id as the command id
//!    (JetStream deduplicates a retried request) and waits for the early reply.
//! 2. A worker takes it ([`run`]): it writes the status hash `bgtask.{id}` (`status =
//!    started`, TTL 24 h) and answers the API right away, then runs the task to completion
//!    *inside the command handler*. The runtime keeps the command in progress on JetStream
//!    while it runs (`AckKind::Progress`), so no other worker gets it; if this worker dies,
//!    the command is redelivered and the task runs again from the start (tasks are written
//!    to be re-runnable: recalculation and rescans are idempotent). The original kept tasks
//!    in one process's memory and lost them with it.
//! 3. [`Progress::update`] writes the hash and publishes `bgtask_updated`.
//! 4. The outcome — `done` (the task's message), `failed` (the error) or `cancelled` — is
//!    written to the hash *before* the terminal `bgtask_*` event is published (ids derived
//!    from the task id, so a re-run cannot announce twice). A subscriber that reads the
//!    hash after subscribing can therefore never miss the end.
//!
//! ## Cancellation
//! `cancel_background_task` (any worker) sets the hash field `cancel_requested`; the
//! worker running the task polls it every [`CANCEL_POLL`] and drops the task's future,
//! which rolls back its open transaction, and reports `cancelled`.
//!
//! ## Kinds
//! * `recalculate_usage` — [`crate::usage::recalculate`];
//! * `rescan_images` — [`rescan`] (registries of type `local`);
//! * `vfolder_clone` — [`vfclone`] (a folder copy through its storage proxy);
//! * `probe` — progress steps with an optional failure, for operators and tests.

pub mod rescan;
pub mod vfclone;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use bai_core::redis::{redis, RedisPool};
use bai_events::{bgtask, keys, Command, CommandReply, Envelope, Event};

use crate::agents::derived_id;
use crate::runtime::{HandlerError, WorkerContext};

/// How often a running task checks whether it was asked to stop.
pub const CANCEL_POLL: Duration = Duration::from_millis(250);

fn now_secs() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

fn redis_of(ctx: &WorkerContext) -> Result<RedisPool, HandlerError> {
    ctx.redis.clone().ok_or_else(|| {
        HandlerError::Permanent(anyhow::anyhow!(
            "background tasks need Redis (worker context without a Redis pool)"
        ))
    })
}

async fn read_hash(redis: &RedisPool, task_id: Uuid) -> anyhow::Result<HashMap<String, String>> {
    let mut conn = redis.get().await?;
    Ok(redis::cmd("HGETALL")
        .arg(keys::bgtask_key(task_id))
        .query_async(&mut *conn)
        .await?)
}

/// Writes `fields` into the task's hash and refreshes its TTL, atomically.
async fn write_hash(
    redis: &RedisPool,
    task_id: Uuid,
    fields: &[(&str, String)],
) -> anyhow::Result<()> {
    let key = keys::bgtask_key(task_id);
    let mut conn = redis.get().await?;
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut hset = redis::cmd("HSET");
    hset.arg(&key);
    for (k, v) in fields {
        hset.arg(*k).arg(v);
    }
    pipe.add_command(hset).ignore();
    pipe.cmd("EXPIRE").arg(&key).arg(bgtask::TTL_SECS).ignore();
    let _: () = pipe.query_async(&mut *conn).await?;
    Ok(())
}

/// The reporter a task is given: progress goes to the hash and to `bgtask_updated`.
pub struct Progress {
    ctx: Arc<WorkerContext>,
    redis: RedisPool,
    task_id: Uuid,
    current: f64,
    total: f64,
}

impl Progress {
    pub fn task_id(&self) -> Uuid {
        self.task_id
    }

    pub fn current(&self) -> f64 {
        self.current
    }

    pub fn total(&self) -> f64 {
        self.total
    }

    /// Sets the expected total (reported with the next update).
    pub fn set_total(&mut self, total: f64) {
        self.total = total;
    }

    /// Advances by `increment` and reports. Reporting is best effort: a Redis or NATS
    /// blip is logged and does not fail the task (the outcome write is what counts).
    pub async fn update(&mut self, increment: f64, message: Option<String>) {
        self.current += increment;
        let fields = [
            ("current", bgtask::progress_text(self.current)),
            ("total", bgtask::progress_text(self.total)),
            ("msg", message.clone().unwrap_or_default()),
            ("last_update", now_secs().to_string()),
        ];
        if let Err(e) = write_hash(&self.redis, self.task_id, &fields).await {
            tracing::warn!(task_id = %self.task_id, error = %format!("{e:#}"), "cannot record task progress");
        }
        let ev = Event::BgtaskUpdated {
            task_id: self.task_id,
            current_progress: self.current,
            total_progress: self.total,
            message,
        };
        if let Err(e) = self.ctx.bus.publish_event(ev).await {
            tracing::warn!(task_id = %self.task_id, error = %e, "cannot publish task progress");
        }
    }
}

/// `start_background_task`: registers the task, answers the API, runs it to the end.
pub async fn run(
    ctx: &Arc<WorkerContext>,
    env: &Envelope<Command>,
    task_id: Uuid,
    kind: &str,
    params: &Value,
) -> Result<CommandReply, HandlerError> {
    let redis = redis_of(ctx)?;
    let state = read_hash(&redis, task_id)
        .await
        .map_err(HandlerError::Transient)?;
    if let Some(status) = state.get("status").filter(|s| bgtask::is_terminal(s)) {
        // A redelivery after the task finished: nothing to do.
        return Ok(CommandReply::Ok {
            result: json!({"task_id": task_id, "status": status, "msg": state.get("msg")}),
        });
    }
    let now = now_secs().to_string();
    let started_at = state
        .get("started_at")
        .cloned()
        .unwrap_or_else(|| now.clone());
    write_hash(
        &redis,
        task_id,
        &[
            ("status", bgtask::STATUS_STARTED.to_string()),
            ("current", "0".into()),
            ("total", "0".into()),
            ("msg", String::new()),
            ("started_at", started_at),
            ("last_update", now),
        ],
    )
    .await
    .map_err(HandlerError::Transient)?;
    // The API waits only for the registration, not for the whole task.
    if let Some(to) = &env.reply_to {
        let early = CommandReply::Ok {
            result: json!({"task_id": task_id, "status": bgtask::STATUS_STARTED}),
        };
        if let Err(e) = ctx.bus.reply(to, &early).await {
            tracing::debug!(error = %e, "could not answer the task's starter");
        }
    }
    tracing::info!(%task_id, kind, "background task started");

    let cancel = CancellationToken::new();
    // Aborted however this future ends (also when the runtime drops it on shutdown).
    let watcher = AbortOnDrop(tokio::spawn(watch_cancel(
        redis.clone(),
        task_id,
        cancel.clone(),
    )));
    let mut progress = Progress {
        ctx: ctx.clone(),
        redis: redis.clone(),
        task_id,
        current: 0.0,
        total: 0.0,
    };
    let (status, msg) = tokio::select! {
        r = run_kind(ctx, &mut progress, kind, params) => match r {
            Ok(msg) => (bgtask::STATUS_DONE, msg),
            Err(e) => (bgtask::STATUS_FAILED, format!("{e:#}")),
        },
        _ = cancel.cancelled() => (bgtask::STATUS_CANCELLED, String::new()),
    };
    drop(watcher);
    tracing::info!(%task_id, kind, status, msg, "background task ended");
    finish(ctx, &redis, &progress, status, msg).await
}

/// Records and announces the outcome. A failure to record it is transient: the command is
/// redelivered and the (re-runnable) task runs again.
async fn finish(
    ctx: &Arc<WorkerContext>,
    redis: &RedisPool,
    progress: &Progress,
    status: &str,
    msg: String,
) -> Result<CommandReply, HandlerError> {
    let task_id = progress.task_id;
    write_hash(
        redis,
        task_id,
        &[
            ("status", status.to_string()),
            ("msg", msg.clone()),
            ("current", bgtask::progress_text(progress.current)),
            ("total", bgtask::progress_text(progress.total)),
            ("last_update", now_secs().to_string()),
        ],
    )
    .await
    .map_err(HandlerError::Transient)?;
    let message = Some(msg.clone());
    let ev = match status {
        bgtask::STATUS_DONE => Event::BgtaskDone { task_id, message },
        bgtask::STATUS_FAILED => Event::BgtaskFailed { task_id, message },
        _ => Event::BgtaskCancelled { task_id, message },
    };
    let id = derived_id(task_id, &format!("bgtask_{status}"));
    let mut wait = Duration::from_millis(50);
    for attempt in 1..=5 {
        match ctx.bus.publish_event_with_id(id, ev.clone()).await {
            Ok(_) => break,
            Err(e) if attempt == 5 => {
                // The hash holds the outcome; late subscribers still get it.
                tracing::error!(%task_id, error = %e, "cannot publish the task's outcome");
            }
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
    Ok(CommandReply::Ok {
        result: json!({"task_id": task_id, "status": status, "msg": msg}),
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Cancels `cancel` once the task's hash carries the cancellation flag.
async fn watch_cancel(redis: RedisPool, task_id: Uuid, cancel: CancellationToken) {
    let key = keys::bgtask_key(task_id);
    loop {
        let flag: Option<String> = async {
            let mut conn = redis.get().await.ok()?;
            redis::cmd("HGET")
                .arg(&key)
                .arg(bgtask::CANCEL_FIELD)
                .query_async(&mut *conn)
                .await
                .ok()?
        }
        .await;
        if flag.as_deref() == Some("1") {
            cancel.cancel();
            return;
        }
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

async fn run_kind(
    ctx: &Arc<WorkerContext>,
    progress: &mut Progress,
    kind: &str,
    params: &Value,
) -> anyhow::Result<String> {
    match kind {
        bgtask::KIND_RECALCULATE_USAGE => crate::usage::recalculate(ctx, progress).await,
        bgtask::KIND_RESCAN_IMAGES => {
            let registry = params.get("registry").and_then(Value::as_str);
            rescan::rescan_images(ctx, progress, registry).await
        }
        bgtask::KIND_PROBE => probe(progress, params).await,
        bai_events::vfolder::KIND_CLONE => vfclone::clone(ctx, progress, params).await,
        other => anyhow::bail!("unknown background task kind: {other}"),
    }
}

/// `probe`: `steps` updates `step_ms` apart; fails at step `fail_at` with `message`.
async fn probe(progress: &mut Progress, params: &Value) -> anyhow::Result<String> {
    let steps = params.get("steps").and_then(Value::as_u64).unwrap_or(3);
    let step = Duration::from_millis(params.get("step_ms").and_then(Value::as_u64).unwrap_or(10));
    let fail_at = params.get("fail_at").and_then(Value::as_u64);
    let message = params
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("probe failed")
        .to_string();
    progress.set_total(steps as f64);
    for i in 1..=steps {
        tokio::time::sleep(step).await;
        if fail_at == Some(i) {
            anyhow::bail!("{message}");
        }
        progress
            .update(1.0, Some(format!("step {i} of {steps}")))
            .await;
    }
    Ok(format!("{steps} steps done"))
}

/// `cancel_background_task`: flags a running task; 404 when unknown.
pub async fn cancel(ctx: &Arc<WorkerContext>, task_id: Uuid) -> Result<CommandReply, HandlerError> {
    let redis = redis_of(ctx)?;
    let state = read_hash(&redis, task_id)
        .await
        .map_err(HandlerError::Transient)?;
    let Some(status) = state.get("status") else {
        return Ok(CommandReply::Rejected {
            http_status: 404,
            error_type: "generic-not-found".into(),
            title: "Unknown URL path.".into(),
            msg: Some("No such background task.".into()),
            data: None,
        });
    };
    if bgtask::is_terminal(status) {
        return Ok(CommandReply::Ok {
            result: json!({"task_id": task_id, "status": status}),
        });
    }
    write_hash(&redis, task_id, &[(bgtask::CANCEL_FIELD, "1".into())])
        .await
        .map_err(HandlerError::Transient)?;
    Ok(CommandReply::Ok {
        result: json!({"task_id": task_id, "status": status, "cancel_requested": true}),
    })
}
