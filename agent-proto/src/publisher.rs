//! The agent's side of events: publishing heartbeats and lifecycle events.
//!
//! Two channels: heartbeats go out fire-and-forget on a plain channel (a lost heartbeat is
//! replaced 3 s later), lifecycle events on a channel in confirm mode, and
//! [`EventPublisher::publish`] returns only once the broker has taken responsibility for
//! the message (persistent, on a durable queue). One publisher can serve many agents
//! (the simulator shares one across the whole fleet).

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection};

use crate::amqp;
use crate::messages::{AgentEvent, AgentMessage};
use crate::names::Names;

#[derive(Clone)]
pub struct EventPublisher {
    names: Names,
    exchange: String,
    heartbeats: Channel,
    events: Channel,
}

impl EventPublisher {
    /// Opens the two channels and declares the shared topology.
    pub async fn open(conn: &Connection, names: &Names) -> lapin::Result<Self> {
        let heartbeats = conn.create_channel().await?;
        amqp::declare_topology(&heartbeats, names).await?;
        let events = conn.create_channel().await?;
        events
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            names: names.clone(),
            exchange: names.events_exchange(),
            heartbeats,
            events,
        })
    }

    pub fn is_connected(&self) -> bool {
        self.heartbeats.status().connected() && self.events.status().connected()
    }

    /// Publishes one event of `agent_id`. Heartbeats are fire-and-forget; everything else
    /// waits for the broker's confirm and fails if it did not come.
    pub async fn publish(&self, agent_id: &str, event: AgentEvent) -> anyhow::Result<()> {
        self.publish_message(&AgentMessage::new(agent_id, event))
            .await
    }

    pub async fn publish_message(&self, msg: &AgentMessage) -> anyhow::Result<()> {
        let routing_key = self.names.routing_key(&msg.agent_id, &msg.body);
        let heartbeat = msg.body.is_heartbeat();
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(msg.id.simple().to_string()))
            .with_type(ShortString::from(msg.body.name()))
            .with_timestamp(msg.ts.timestamp().max(0) as u64)
            // Lifecycle events survive a broker restart; heartbeats need not.
            .with_delivery_mode(if heartbeat { 1 } else { 2 });
        let body = msg.to_vec();
        if heartbeat {
            // On a channel without confirms the returned future is already resolved.
            self.heartbeats
                .basic_publish(
                    &self.exchange,
                    &routing_key,
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await?;
            return Ok(());
        }
        let confirm = self
            .events
            .basic_publish(
                &self.exchange,
                &routing_key,
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?
            .await?;
        if confirm.is_nack() {
            anyhow::bail!("the broker refused event {}", msg.body.name());
        }
        Ok(())
    }
}
