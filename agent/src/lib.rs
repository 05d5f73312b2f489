//! The Backend.AI agent with a process runtime (each kernel is a local process in its
//! own work directory), and simulated agents for scale tests.
//!
//! * [`agent`]: the daemon — RPC server, heartbeats, kernel supervision.
//! * [`kernel`]: one kernel process and its execution state.
//! * [`link`]: the outgoing side (publisher, ordered outbox of lifecycle events).
//! * [`sim`]: N simulated agents in one process.
//! * [`cli`]: `backend-ai ag start-server` / `ag simulate`.

pub mod agent;
pub mod cli;
pub mod config;
pub mod kernel;
pub mod link;
pub mod metrics;
pub mod mounts;
pub mod sim;

pub use agent::{Agent, AgentHandle};
pub use config::{AgentConfig, RuntimeKind, RuntimeTable};
pub use sim::{SimConfig, SimFleet};

/// Version reported in heartbeats.
pub const AGENT_VERSION: &str = "21.03.6";
