//! Every RabbitMQ name the protocol uses, derived from one configurable prefix so that
//! deployments (and concurrent tests) can share a broker without seeing each other.
//!
//! | name | kind | declared by | purpose |
//! |---|---|---|---|
//! | `{prefix}.agent.{agent_id}.rpc` | durable queue | the agent | manager → agent RPC requests |
//! | `{prefix}.agent.events` | durable topic exchange | both sides | agent → manager events |
//! | `{prefix}.agent.heartbeats` | durable queue, bound `hb.#` | both sides | heartbeats (15 s message TTL) |
//! | `{prefix}.agent.lifecycle` | durable queue, bound `ev.#` | both sides | kernel/session/agent lifecycle events and stats |
//! | `{prefix}.agent.dlx` | durable fanout exchange | both sides | dead letters of the lifecycle queue |
//! | `{prefix}.agent.rejected` | durable queue (bounded) | both sides | rejected (malformed) lifecycle messages, for inspection |
//!
//! Routing keys: heartbeats use `hb.{agent}`, other events `ev.{event}.{agent}`, where
//! `{agent}` is the agent id made safe as one topic word (see [`encode_word`]).

use crate::messages::AgentEvent;

/// Makes a string safe as one topic-exchange word: `.`, `*`, `#` and anything outside
/// `[A-Za-z0-9_-]` become `~XX` (hex), so an agent id can never add or match words.
pub fn encode_word(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('~');
    }
    out
}

/// Names derived from the deployment prefix (`rabbitmq.prefix`, default `bai`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// `prefix` must be non-empty and must not start with `amq.` (reserved by RabbitMQ);
    /// anything else is accepted as is (queue names may contain any character).
    pub fn new(prefix: &str) -> Self {
        let prefix = if prefix.is_empty() { "bai" } else { prefix };
        let prefix = if prefix.starts_with("amq.") {
            format!("x{prefix}")
        } else {
            prefix.to_string()
        };
        Self { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The agent's RPC request queue.
    pub fn rpc_queue(&self, agent_id: &str) -> String {
        format!("{}.agent.{agent_id}.rpc", self.prefix)
    }

    pub fn events_exchange(&self) -> String {
        format!("{}.agent.events", self.prefix)
    }

    pub fn heartbeat_queue(&self) -> String {
        format!("{}.agent.heartbeats", self.prefix)
    }

    pub fn lifecycle_queue(&self) -> String {
        format!("{}.agent.lifecycle", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.agent.dlx", self.prefix)
    }

    pub fn rejected_queue(&self) -> String {
        format!("{}.agent.rejected", self.prefix)
    }

    /// Routing key of an event published by `agent_id`.
    pub fn routing_key(&self, agent_id: &str, event: &AgentEvent) -> String {
        match event {
            AgentEvent::Heartbeat(_) => format!("hb.{}", encode_word(agent_id)),
            other => format!("ev.{}.{}", other.name(), encode_word(agent_id)),
        }
    }

    pub const HEARTBEAT_BINDING: &'static str = "hb.#";
    pub const LIFECYCLE_BINDING: &'static str = "ev.#";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = Names::new("t1");
        assert_eq!(n.rpc_queue("i-a.b"), "t1.agent.i-a.b.rpc");
        assert_eq!(
            n.routing_key("i-a.b", &AgentEvent::AgentStarted { reason: "x".into() }),
            "ev.agent_started.i-a~2Eb"
        );
        assert_eq!(Names::new("amq.x").prefix(), "xamq.x");
        assert_eq!(encode_word("a*#b"), "a~2A~23b");
    }
}
