//! Operator view of the bus: stream depths, consumer lag, redeliveries.

use serde::Serialize;

use crate::bus::{Bus, SCHEDULER_CONSUMER, WORKERS_CONSUMER};

#[derive(Debug, Serialize)]
pub struct StreamStats {
    pub stream: String,
    pub messages: u64,
    pub bytes: u64,
    pub consumers: Vec<ConsumerStats>,
}

#[derive(Debug, Serialize)]
pub struct ConsumerStats {
    pub name: String,
    /// Messages not yet delivered to any worker.
    pub pending: u64,
    /// Delivered but not yet acknowledged (in flight).
    pub ack_pending: usize,
    /// Messages currently being redelivered.
    pub redelivered: usize,
}

pub async fn bus_stats(bus: &Bus) -> anyhow::Result<Vec<StreamStats>> {
    let s = bus.subjects();
    let mut out = Vec::new();
    for (name, consumers) in [
        (s.cmd_stream(), vec![WORKERS_CONSUMER]),
        (s.events_stream(), vec![]),
        (s.trigger_stream(), vec![SCHEDULER_CONSUMER]),
    ] {
        let mut stream = bus.jetstream().get_stream(&name).await?;
        let info = stream.info().await?.clone();
        let mut cs = Vec::new();
        for c in consumers {
            if let Ok(ci) = stream.consumer_info(c).await {
                cs.push(ConsumerStats {
                    name: c.to_string(),
                    pending: ci.num_pending,
                    ack_pending: ci.num_ack_pending,
                    redelivered: ci.num_redelivered,
                });
            }
        }
        out.push(StreamStats {
            stream: name,
            messages: info.state.messages,
            bytes: info.state.bytes,
            consumers: cs,
        });
    }
    Ok(out)
}

/// Stream depths and consumer lag, sampled from JetStream on every scrape (a few
/// `STREAM.INFO`/`CONSUMER.INFO` requests; cheaper than keeping them live).
pub fn stream_depth_sampler(
    bus: Bus,
    registry: &bai_core::metrics::prometheus::Registry,
) -> bai_core::metrics::Sampler {
    use bai_core::metrics::{gauge_vec, register};
    let messages = gauge_vec(
        "bai_stream_messages",
        "Messages stored in a JetStream stream (sampled on scrape)",
        &["stream"],
    );
    let bytes = gauge_vec(
        "bai_stream_bytes",
        "Bytes stored in a JetStream stream (sampled on scrape)",
        &["stream"],
    );
    let pending = gauge_vec(
        "bai_consumer_pending",
        "Messages not yet delivered to a durable consumer (sampled on scrape)",
        &["stream", "consumer"],
    );
    let ack_pending = gauge_vec(
        "bai_consumer_ack_pending",
        "Messages delivered but not yet acknowledged (sampled on scrape)",
        &["stream", "consumer"],
    );
    let redelivered = gauge_vec(
        "bai_consumer_redelivered",
        "Messages being redelivered (sampled on scrape)",
        &["stream", "consumer"],
    );
    for g in [&messages, &bytes, &pending, &ack_pending, &redelivered] {
        register(registry, g.clone());
    }
    std::sync::Arc::new(move || {
        let (bus, messages, bytes, pending, ack_pending, redelivered) = (
            bus.clone(),
            messages.clone(),
            bytes.clone(),
            pending.clone(),
            ack_pending.clone(),
            redelivered.clone(),
        );
        Box::pin(async move {
            let stats = match bus_stats(&bus).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "stream depths not sampled");
                    return;
                }
            };
            for s in stats {
                let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                messages
                    .with_label_values(&[s.stream.as_str()])
                    .set(to_i64(s.messages));
                bytes
                    .with_label_values(&[s.stream.as_str()])
                    .set(to_i64(s.bytes));
                for c in s.consumers {
                    let l = [s.stream.as_str(), c.name.as_str()];
                    pending.with_label_values(&l).set(to_i64(c.pending));
                    ack_pending
                        .with_label_values(&l)
                        .set(to_i64(c.ack_pending as u64));
                    redelivered
                        .with_label_values(&l)
                        .set(to_i64(c.redelivered as u64));
                }
            }
        })
    })
}
