//! Typed domain events: the 21.03 catalogue (orchestration.md §4.2) plus our own.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::Kind;

/// Every event the system publishes on the EVENTS stream. Names match the original's
/// event names, which SSE clients see as `event:` lines.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "name", content = "args", rename_all = "snake_case")]
pub enum Event {
    // -- scheduler ticks (kept for parity; our coalescer uses the TRIGGER stream) --
    DoSchedule,
    DoPrepare,
    DoIdleCheck,
    DoTerminateSession {
        session_id: Uuid,
        reason: String,
    },

    // -- agents --
    AgentStarted {
        agent_id: String,
        reason: String,
    },
    AgentTerminated {
        agent_id: String,
        reason: String,
    },
    AgentError {
        agent_id: String,
        message: String,
        traceback: Option<String>,
        user: Option<Uuid>,
        context_env: serde_json::Value,
        severity: String,
    },
    AgentHeartbeat {
        agent_id: String,
        agent_info: serde_json::Value,
    },

    // -- kernels --
    KernelEnqueued {
        kernel_id: Uuid,
        session_id: Uuid,
        creation_id: String,
        reason: String,
    },
    KernelPreparing {
        kernel_id: Uuid,
        session_id: Uuid,
        creation_id: String,
        reason: String,
    },
    KernelPulling {
        kernel_id: Uuid,
        session_id: Uuid,
        creation_id: String,
        reason: String,
    },
    KernelCreating {
        kernel_id: Uuid,
        session_id: Uuid,
        creation_id: String,
        reason: String,
    },
    KernelStarted {
        kernel_id: Uuid,
        session_id: Uuid,
        creation_id: String,
        reason: String,
    },
    KernelCancelled {
        kernel_id: Uuid,
        session_id: Uuid,
        creation_id: String,
        reason: String,
    },
    KernelTerminating {
        kernel_id: Uuid,
        session_id: Uuid,
        reason: String,
        exit_code: i32,
    },
    KernelTerminated {
        kernel_id: Uuid,
        session_id: Uuid,
        reason: String,
        exit_code: i32,
    },

    // -- sessions --
    SessionEnqueued {
        session_id: Uuid,
        creation_id: String,
        reason: String,
    },
    SessionScheduled {
        session_id: Uuid,
        creation_id: String,
        reason: String,
    },
    SessionPreparing {
        session_id: Uuid,
        creation_id: String,
        reason: String,
    },
    SessionCancelled {
        session_id: Uuid,
        creation_id: String,
        reason: String,
    },
    SessionStarted {
        session_id: Uuid,
        creation_id: String,
        reason: String,
    },
    SessionTerminated {
        session_id: Uuid,
        reason: String,
    },
    SessionSuccess {
        session_id: Uuid,
        reason: String,
        exit_code: i32,
    },
    SessionFailure {
        session_id: Uuid,
        reason: String,
        exit_code: i32,
    },

    // -- kernel housekeeping --
    DoSyncKernelLogs {
        kernel_id: Uuid,
        container_id: String,
    },
    DoSyncKernelStats {
        kernel_ids: Vec<Uuid>,
    },
    ExecutionStarted {
        session_id: Uuid,
    },
    ExecutionFinished {
        session_id: Uuid,
    },
    ExecutionTimeout {
        session_id: Uuid,
    },
    ExecutionCancelled {
        session_id: Uuid,
    },

    // -- background tasks (21.03 #392, #394) --
    BgtaskUpdated {
        task_id: Uuid,
        current_progress: f64,
        total_progress: f64,
        message: Option<String>,
    },
    BgtaskDone {
        task_id: Uuid,
        message: Option<String>,
    },
    BgtaskCancelled {
        task_id: Uuid,
        message: Option<String>,
    },
    BgtaskFailed {
        task_id: Uuid,
        message: Option<String>,
    },

    // -- ours --
    /// A command was given up on (max deliveries or permanent failure); never silent.
    CommandFailed {
        command_id: Uuid,
        kind: String,
        error: String,
        deliveries: u64,
    },
    DoLogCleanup,
}

impl Kind for Event {
    fn kind(&self) -> &'static str {
        match self {
            Event::DoSchedule => "do_schedule",
            Event::DoPrepare => "do_prepare",
            Event::DoIdleCheck => "do_idle_check",
            Event::DoTerminateSession { .. } => "do_terminate_session",
            Event::AgentStarted { .. } => "agent_started",
            Event::AgentTerminated { .. } => "agent_terminated",
            Event::AgentError { .. } => "agent_error",
            Event::AgentHeartbeat { .. } => "agent_heartbeat",
            Event::KernelEnqueued { .. } => "kernel_enqueued",
            Event::KernelPreparing { .. } => "kernel_preparing",
            Event::KernelPulling { .. } => "kernel_pulling",
            Event::KernelCreating { .. } => "kernel_creating",
            Event::KernelStarted { .. } => "kernel_started",
            Event::KernelCancelled { .. } => "kernel_cancelled",
            Event::KernelTerminating { .. } => "kernel_terminating",
            Event::KernelTerminated { .. } => "kernel_terminated",
            Event::SessionEnqueued { .. } => "session_enqueued",
            Event::SessionScheduled { .. } => "session_scheduled",
            Event::SessionPreparing { .. } => "session_preparing",
            Event::SessionCancelled { .. } => "session_cancelled",
            Event::SessionStarted { .. } => "session_started",
            Event::SessionTerminated { .. } => "session_terminated",
            Event::SessionSuccess { .. } => "session_success",
            Event::SessionFailure { .. } => "session_failure",
            Event::DoSyncKernelLogs { .. } => "do_sync_kernel_logs",
            Event::DoSyncKernelStats { .. } => "do_sync_kernel_stats",
            Event::ExecutionStarted { .. } => "execution_started",
            Event::ExecutionFinished { .. } => "execution_finished",
            Event::ExecutionTimeout { .. } => "execution_timeout",
            Event::ExecutionCancelled { .. } => "execution_cancelled",
            Event::BgtaskUpdated { .. } => "bgtask_updated",
            Event::BgtaskDone { .. } => "bgtask_done",
            Event::BgtaskCancelled { .. } => "bgtask_cancelled",
            Event::BgtaskFailed { .. } => "bgtask_failed",
            Event::CommandFailed { .. } => "command_failed",
            Event::DoLogCleanup => "do_log_cleanup",
        }
    }
}

impl Event {
    /// The session an event is about, for subject routing and SSE filtering.
    pub fn session_id(&self) -> Option<Uuid> {
        match self {
            Event::DoTerminateSession { session_id, .. }
            | Event::KernelEnqueued { session_id, .. }
            | Event::KernelPreparing { session_id, .. }
            | Event::KernelPulling { session_id, .. }
            | Event::KernelCreating { session_id, .. }
            | Event::KernelStarted { session_id, .. }
            | Event::KernelCancelled { session_id, .. }
            | Event::KernelTerminating { session_id, .. }
            | Event::KernelTerminated { session_id, .. }
            | Event::SessionEnqueued { session_id, .. }
            | Event::SessionScheduled { session_id, .. }
            | Event::SessionPreparing { session_id, .. }
            | Event::SessionCancelled { session_id, .. }
            | Event::SessionStarted { session_id, .. }
            | Event::SessionTerminated { session_id, .. }
            | Event::SessionSuccess { session_id, .. }
            | Event::SessionFailure { session_id, .. }
            | Event::ExecutionStarted { session_id }
            | Event::ExecutionFinished { session_id }
            | Event::ExecutionTimeout { session_id }
            | Event::ExecutionCancelled { session_id } => Some(*session_id),
            _ => None,
        }
    }

    /// The background task an event is about.
    pub fn task_id(&self) -> Option<Uuid> {
        match self {
            Event::BgtaskUpdated { task_id, .. }
            | Event::BgtaskDone { task_id, .. }
            | Event::BgtaskCancelled { task_id, .. }
            | Event::BgtaskFailed { task_id, .. } => Some(*task_id),
            _ => None,
        }
    }
}
