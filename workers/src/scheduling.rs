//! Consumption of coalesced scheduling triggers, and the periodic safety tick.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use bai_events::Bus;

use crate::runtime::WorkerMetrics;

/// One scheduling pass over one scaling group. Implementations take the group's advisory
/// lock inside their transaction, so passes for one group serialise across the fleet
/// while different groups run in parallel.
pub trait PassRunner: Send + Sync + 'static {
    fn run_pass<'a>(&'a self, scaling_group: &'a str) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// Pulls triggers and runs passes until `shutdown`.
///
/// The trigger is acknowledged — and, with `double_ack`, confirmed removed from the stream —
/// *before* the pass reads any state. A request arriving during the pass therefore finds
/// the subject empty, queues a new trigger, and causes exactly one more pass: no lost
/// wake-ups, and no more than one queued pass per group however long the burst.
pub async fn run_trigger_loop(
    bus: Bus,
    runner: Arc<dyn PassRunner>,
    concurrency: usize,
    metrics: Arc<WorkerMetrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Bounded so one worker cannot take every group's trigger while it is busy; the rest
    // stay in the stream for other workers.
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    'outer: while !shutdown.is_cancelled() {
        let consumer = match bus.trigger_consumer().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the trigger consumer; retrying");
                pause(&shutdown).await;
                continue;
            }
        };
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(concurrency.clamp(1, 64))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull triggers; retrying");
                pause(&shutdown).await;
                continue;
            }
        };
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                p = permits.clone().acquire_owned() => p?,
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                m = messages.next() => m,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "trigger stream interrupted; reconnecting");
                    break;
                }
                None => break,
            };
            metrics.triggers.fetch_add(1, Ordering::Relaxed);
            let Some(group) = bus.subjects().trigger_group(&msg.subject) else {
                let _ = msg.ack().await;
                continue;
            };
            if let Err(e) = msg.double_ack().await {
                // Not confirmed removed: leave it for redelivery rather than risk a pass
                // that a concurrent request would not re-trigger.
                tracing::warn!(error = %e, group, "could not ack a trigger; it will be redelivered");
                continue;
            }
            let runner = runner.clone();
            let metrics = metrics.clone();
            tasks.spawn(async move {
                metrics.passes.fetch_add(1, Ordering::Relaxed);
                let started = std::time::Instant::now();
                let res = runner.run_pass(&group).await;
                metrics
                    .pass_seconds
                    .with_label_values(&[group.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                if let Err(e) = res {
                    metrics
                        .pass_errors
                        .with_label_values(&[group.as_str()])
                        .inc();
                    tracing::error!(error = %format!("{e:#}"), group, "scheduling pass failed");
                }
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        pause(&shutdown).await;
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Safety net: every `interval`, request a pass for each listed group. Every worker may run
/// this; the coalescer folds the duplicates into one pending trigger per group.
pub async fn run_tick_loop<F>(bus: Bus, interval: Duration, groups: F, shutdown: CancellationToken)
where
    F: Fn() -> BoxFuture<'static, anyhow::Result<Vec<String>>> + Send + Sync + 'static,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match groups().await {
            Ok(list) => {
                for g in list {
                    if let Err(e) = bus.request_schedule(&g).await {
                        tracing::warn!(error = %e, group = %g, "tick could not request a pass");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "tick could not list scaling groups")
            }
        }
    }
}

async fn pause(shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {},
        _ = tokio::time::sleep(Duration::from_millis(500)) => {},
    }
}
