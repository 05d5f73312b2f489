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
