//! Typed commands: every state change the API asks for travels as one of these.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::Kind;

/// A command for the worker fleet. Handlers must be idempotent: a command can be delivered
/// more than once (redelivery after a crash), and its id is the dedup key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", content = "args", rename_all = "snake_case")]
pub enum Command {
    /// No-op with a recorded effect; used by tests, benchmarks and operators to probe the bus.
    Echo {
        payload: String,
        /// Test hook: the handler fails (transiently) every time, to exercise poison handling.
        #[serde(default)]
        fail: bool,
        /// Test hook: sleep this long before acting (to crash a worker mid-command).
        #[serde(default)]
        delay_ms: u64,
    },
    /// No-op without any database effect: measures the bare bus round trip.
    Noop,
    /// Ask the scheduler for a pass over one scaling group (goes through the coalescer).
    RequestSchedule { scaling_group: String },
    /// Terminate a session (idle checker, freeze with force-kill, admin tools).
    TerminateSession { session_id: Uuid, reason: String },
    /// Enqueue a new session (all kernel rows in one transaction).
    CreateSession(Box<crate::session::SessionSpec>),
    /// Destroy a session as `DELETE /session/{id}` does.
    DestroySession {
        session_id: Uuid,
        forced: bool,
        reason: String,
    },
    /// Start the PREPARING kernels of a session on their agents (issued by the scheduler).
    StartSession { session_id: Uuid },
    /// Restart every kernel of a RUNNING session in place (`PATCH /session/{id}`).
    RestartSession { session_id: Uuid },
    /// An admin mutation from GraphQL (domains, groups, users, keypairs, policies, presets,
    /// scaling groups, images); see [`crate::admin`].
    /// Boxed: the largest variant by far, kept off the size of every other command.
    Admin(Box<crate::admin::AdminCommand>),
    /// Set the manager status (etcd `manager/status`: `running` or `frozen`).
    SetManagerStatus { status: String },
    /// Set (`Some`) or remove (`None`) the announcement (etcd `manager/announcement`).
    SetAnnouncement { message: Option<String> },
    /// Write a raw etcd key (`POST /config/set`); an object is written as a key tree.
    EtcdPut {
        key: String,
        value: serde_json::Value,
    },
    /// Delete a raw etcd key, or every key under it (`POST /config/delete`).
    EtcdDelete { key: String, prefix: bool },
    /// Run a background task (21.03 #394) to completion in a worker: the command id is the
    /// task id; see [`crate::bgtask`] and `bai_workers::bgtask`.
    StartBackgroundTask {
        task_id: Uuid,
        kind: String,
        #[serde(default)]
        params: serde_json::Value,
    },
    /// Ask a running background task to stop (it ends as `cancelled`).
    CancelBackgroundTask { task_id: Uuid },
    /// A virtual-folder write (`/folders`); see [`crate::vfolder`].
    Vfolder(Box<crate::vfolder::VfolderCommand>),
    /// Templates, dotfiles, error logs, account and scheduler operations (issue 11); see
    /// [`crate::rest`]. Boxed to keep every other command small.
    Rest(Box<crate::rest::RestCommand>),
}

impl Kind for Command {
    fn kind(&self) -> &'static str {
        match self {
            Command::Echo { .. } => "echo",
            Command::Noop => "noop",
            Command::RequestSchedule { .. } => "request_schedule",
            Command::TerminateSession { .. } => "terminate_session",
            Command::CreateSession(_) => "create_session",
            Command::DestroySession { .. } => "destroy_session",
            Command::StartSession { .. } => "start_session",
            Command::RestartSession { .. } => "restart_session",
            Command::Admin(_) => "admin",
            Command::SetManagerStatus { .. } => "set_manager_status",
            Command::SetAnnouncement { .. } => "set_announcement",
            Command::EtcdPut { .. } => "etcd_put",
            Command::EtcdDelete { .. } => "etcd_delete",
            Command::StartBackgroundTask { .. } => "start_background_task",
            Command::CancelBackgroundTask { .. } => "cancel_background_task",
            Command::Vfolder(_) => "vfolder",
            Command::Rest(_) => "rest",
        }
    }
}

impl Command {
    /// Commands whose handler may run longer than the consumer's `ack_wait`: the worker
    /// runtime keeps telling JetStream they are in progress while they run.
    pub fn is_long_running(&self) -> bool {
        matches!(self, Command::StartBackgroundTask { .. })
    }
}

/// What a worker answers to a command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CommandReply {
    /// Handled; `result` is handler-specific JSON.
    Ok { result: serde_json::Value },
    /// Handled, but refused for a reason the caller must see (validation, conflict, not
    /// found...). Carries the HTTP-ish status and the original's error type suffix.
    Rejected {
        http_status: u16,
        error_type: String,
        title: String,
        msg: Option<String>,
        /// Extra problem+json `data` (e.g. `existingSessionId`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<serde_json::Value>,
    },
    /// Gave up after the maximum number of deliveries or on a permanent failure.
    Failed { error: String },
}

/// What `publish_command` tells its caller.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    /// The worker handled it within the deadline.
    Completed(CommandReply),
    /// Stored in the CMD stream but not finished before the deadline; it will still run
    /// (exactly once in effect).
    Accepted { command_id: Uuid },
}
