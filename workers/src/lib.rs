//! The worker fleet. Each `backend-ai mgr worker` process runs the command loop, the
//! scheduling-trigger loop and the periodic tick; run as many processes as the load needs.

pub mod agents;
pub mod bgtask;
pub mod handlers;
pub mod idempotency;
pub mod idle;
pub mod runtime;
pub mod scheduling;
pub mod sessions;
pub mod sshkey;
pub mod usage;

pub use runtime::{run_command_loop, HandlerError, WorkerContext, WorkerMetrics, WorkerOptions};
pub use scheduling::{run_tick_loop, run_trigger_loop, PassRunner};
