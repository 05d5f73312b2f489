//! The manager ↔ agent protocol over RabbitMQ (documented in `docs/AGENT_PROTOCOL.md`).
//!
//! * [`names`]: queue, exchange and routing-key names, all under one prefix.
//! * [`messages`]: the versioned serde-JSON schemas of events and RPC calls.
//! * [`amqp`]: connecting (lapin on the tokio runtime) and declaring the topology.
//! * [`client`]: [`AgentRpcClient`], the manager's typed RPC client (direct reply-to,
//!   per-call deadlines, fail-fast when an agent's queue has no consumer).
//! * [`server`]: the agent's RPC consumer loop.
//! * [`publisher`]: the agent's event publisher (heartbeats, lifecycle events).
//! * [`request_id`]: the API request id carried into RPC requests for log correlation.

pub mod amqp;
pub mod client;
pub mod messages;
pub mod names;
pub mod publisher;
pub mod request_id;
pub mod server;

pub use client::{AgentRpcClient, RpcClientOptions, RpcError, RpcTimeouts};
pub use messages::*;
pub use names::Names;
pub use publisher::EventPublisher;
pub use server::RpcHandler;
