//! Talking to a session's main kernel through its agent (interactions that change no
//! state, so the API calls the agent directly instead of going through a worker).

use std::sync::Arc;

use uuid::Uuid;

use bai_agent_proto::{AgentRpcClient, RpcError};

use super::lookup::SessionRow;
use super::session_not_found;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Where a session's main kernel runs.
#[derive(Clone)]
pub struct KernelTarget {
    pub session_id: Uuid,
    pub kernel_id: Uuid,
    pub agent: String,
    pub rpc: Arc<AgentRpcClient>,
}

/// The process's agent RPC client, or 503 when this API instance was started without one.
pub fn rpc_client(state: &AppState) -> ApiResult<Arc<AgentRpcClient>> {
    state.agent_rpc.clone().ok_or_else(|| {
        ApiError::service_unavailable().with_msg("This API server has no connection to the agents.")
    })
}

/// The main kernel of `row`, which must be placed on an agent and not finished.
pub fn target(state: &AppState, row: &SessionRow) -> ApiResult<KernelTarget> {
    let rpc = rpc_client(state)?;
    if super::DEAD_STATUSES.contains(&row.status.as_str()) {
        return Err(session_not_found());
    }
    let Some(agent) = row.agent.clone().filter(|_| row.status == "RUNNING") else {
        return Err(ApiError::invalid_api_params().with_msg(format!(
            "The session is not running yet (status: {}).",
            row.status
        )));
    };
    Ok(KernelTarget {
        session_id: row.session_id,
        kernel_id: row.kernel_id,
        agent,
        rpc,
    })
}

/// Whether the agent says the kernel itself is gone (exited, or unknown to the agent).
pub fn kernel_gone(e: &RpcError) -> bool {
    match e {
        RpcError::Remote { error, .. } => {
            error.kind == "kernel-gone"
                || (error.kind == "not-found" && error.message.starts_with("no kernel "))
        }
        _ => false,
    }
}

/// Maps an agent failure: the caller's mistakes (bad path, missing file, a run that does
/// not exist, a kernel still busy) are 400 `invalid-api-params` with the agent's message;
/// a vanished kernel is 404 `session-not-found`; anything else (agent down, deadline,
/// internal error) is the operation's 500 type (`kernel-execution-failed` ...) with the
/// reason in `msg`.
pub fn map_rpc_error(e: RpcError, failure: ApiError) -> ApiError {
    if kernel_gone(&e) {
        return session_not_found().with_msg(e.to_string());
    }
    match &e {
        RpcError::Remote { error, .. }
            if matches!(
                error.kind.as_str(),
                "not-found" | "invalid-argument" | "bad-request" | "busy" | "unsupported"
            ) =>
        {
            ApiError::invalid_api_params().with_msg(error.message.clone())
        }
        _ => {
            tracing::warn!(error = %e, "agent call failed");
            failure.with_msg(e.to_string())
        }
    }
}
