//! Connecting to RabbitMQ and declaring the protocol's topology.
//!
//! Both sides declare the shared topology (exchange, ingest queues, dead letters) with
//! identical arguments: declarations are idempotent, so whichever side starts first
//! creates it and no agent event is published into an exchange with no queue bound.

use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::names::Names;

/// Heartbeats older than this are dropped by the broker (`x-message-ttl` of the heartbeat
/// queue): a backlog can never make a dead agent look alive for longer than this.
pub const HEARTBEAT_TTL_MS: u32 = 15_000;
/// The rejected-message queue keeps at most this many messages (oldest dropped first).
pub const REJECTED_MAX_LENGTH: i64 = 10_000;

/// Opens a connection on the current tokio runtime, retrying with backoff for up to
/// `timeout` so a broker that is still starting does not fail the caller.
pub async fn connect(url: &str, name: &str, timeout: Duration) -> anyhow::Result<Arc<Connection>> {
    let mut policy = backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(Duration::from_millis(200))
        .with_max_interval(Duration::from_secs(2))
        .with_max_elapsed_time(Some(timeout))
        .build();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(name.to_string()))
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current());
        match Connection::connect(url, props).await {
            Ok(c) => return Ok(Arc::new(c)),
            Err(e) => match policy.next_backoff() {
                Some(wait) => {
                    tracing::warn!(error = %e, "RabbitMQ not reachable yet; retrying");
                    tokio::time::sleep(wait).await;
                }
                None => {
                    anyhow::bail!(
                        "cannot reach RabbitMQ at {} after {attempts} attempts: {e}",
                        redact(url)
                    )
                }
            },
        }
    }
}

/// The URL without its password, for error messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Arguments of the heartbeat queue (must be identical wherever it is declared).
pub fn heartbeat_queue_args() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        ShortString::from("x-message-ttl"),
        AMQPValue::LongUInt(HEARTBEAT_TTL_MS),
    );
    t
}

/// Arguments of the lifecycle queue: rejected messages go to the dead-letter exchange.
pub fn lifecycle_queue_args(names: &Names) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from(names.dead_letter_exchange())),
    );
    t
}

fn rejected_queue_args() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        ShortString::from("x-max-length"),
        AMQPValue::LongLongInt(REJECTED_MAX_LENGTH),
    );
    t
}

/// Declares the events exchange, both ingest queues, their bindings and the dead-letter
/// exchange and queue. Idempotent.
pub async fn declare_topology(ch: &Channel, names: &Names) -> lapin::Result<()> {
    ch.exchange_declare(
        &names.events_exchange(),
        ExchangeKind::Topic,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        &names.dead_letter_exchange(),
        ExchangeKind::Fanout,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        &names.rejected_queue(),
        durable_queue(),
        rejected_queue_args(),
    )
    .await?;
    ch.queue_bind(
        &names.rejected_queue(),
        &names.dead_letter_exchange(),
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        &names.heartbeat_queue(),
        durable_queue(),
        heartbeat_queue_args(),
    )
    .await?;
    ch.queue_bind(
        &names.heartbeat_queue(),
        &names.events_exchange(),
        Names::HEARTBEAT_BINDING,
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        &names.lifecycle_queue(),
        durable_queue(),
        lifecycle_queue_args(names),
    )
    .await?;
    ch.queue_bind(
        &names.lifecycle_queue(),
        &names.events_exchange(),
        Names::LIFECYCLE_BINDING,
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Declares an agent's durable RPC queue (no arguments: the deadline travels per message).
pub async fn declare_rpc_queue(ch: &Channel, names: &Names, agent_id: &str) -> lapin::Result<()> {
    ch.queue_declare(
        &names.rpc_queue(agent_id),
        durable_queue(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Deletes the shared topology and the RPC queues of `agent_ids` (tests, benchmarks,
/// decommissioning a prefix). Missing objects are not an error.
pub async fn delete_topology(
    conn: &Connection,
    names: &Names,
    agent_ids: &[String],
) -> anyhow::Result<()> {
    let mut queues = vec![
        names.heartbeat_queue(),
        names.lifecycle_queue(),
        names.rejected_queue(),
    ];
    queues.extend(agent_ids.iter().map(|a| names.rpc_queue(a)));
    for q in queues {
        // A failed delete (e.g. 404 on RabbitMQ versions that report it) closes the
        // channel, so each delete gets a fresh one.
        let ch = conn.create_channel().await?;
        let _ = ch.queue_delete(&q, QueueDeleteOptions::default()).await;
        let _ = ch.close(200, "bye").await;
    }
    for ex in [names.events_exchange(), names.dead_letter_exchange()] {
        let ch = conn.create_channel().await?;
        let _ = ch
            .exchange_delete(&ex, ExchangeDeleteOptions::default())
            .await;
        let _ = ch.close(200, "bye").await;
    }
    Ok(())
}

/// Message and consumer counts of a queue, or `None` when it does not exist.
pub async fn queue_counts(conn: &Connection, queue: &str) -> anyhow::Result<Option<(u32, u32)>> {
    let ch = conn.create_channel().await?;
    let res = ch
        .queue_declare(
            queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match res {
        Ok(q) => {
            let _ = ch.close(200, "bye").await;
            Ok(Some((q.message_count(), q.consumer_count())))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// True for the broker's 404 NOT_FOUND channel error (passive declare of a missing queue).
pub fn is_not_found(e: &lapin::Error) -> bool {
    let s = format!("{e:?} {e}");
    s.contains("NOT_FOUND") || s.contains("NotFound") || s.contains("404")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts() {
        assert_eq!(
            super::redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(super::redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
