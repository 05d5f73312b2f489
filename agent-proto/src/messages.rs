//! Message schemas. Everything is serde JSON and carries a protocol version `v`;
//! a message whose version or shape we do not understand is rejected, never guessed at.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Bumped on incompatible changes. Receivers reject other versions.
pub const PROTOCOL_VERSION: u16 = 1;

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported protocol version {found} (this side speaks {PROTOCOL_VERSION})")]
    Version { found: u16 },
    #[error("malformed message: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
struct VersionProbe {
    #[serde(default)]
    v: Option<u16>,
}

/// Decodes a versioned message; a version mismatch is reported as such even when the
/// body would not parse either.
pub fn decode<T: DeserializeOwned + Versioned>(data: &[u8]) -> Result<T, DecodeError> {
    match serde_json::from_slice::<T>(data) {
        Ok(m) if m.version() == PROTOCOL_VERSION => Ok(m),
        Ok(m) => Err(DecodeError::Version { found: m.version() }),
        Err(e) => match serde_json::from_slice::<VersionProbe>(data) {
            Ok(VersionProbe { v: Some(v) }) if v != PROTOCOL_VERSION => {
                Err(DecodeError::Version { found: v })
            }
            _ => Err(DecodeError::Malformed(e.to_string())),
        },
    }
}

pub trait Versioned {
    fn version(&self) -> u16;
}

// ---------------------------------------------------------------------------------------
// agent → manager
// ---------------------------------------------------------------------------------------

/// One message on the events exchange.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentMessage {
    pub v: u16,
    /// Unique per message: consumers use it to derive idempotent ids for what they publish.
    pub id: Uuid,
    pub agent_id: String,
    pub ts: DateTime<Utc>,
    pub body: AgentEvent,
}

impl Versioned for AgentMessage {
    fn version(&self) -> u16 {
        self.v
    }
}

impl AgentMessage {
    pub fn new(agent_id: &str, body: AgentEvent) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id: Uuid::new_v4(),
            agent_id: agent_id.to_string(),
            ts: Utc::now(),
            body,
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        // Serialising plain data (strings, maps, numbers) cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Events an agent publishes. Names match the original's event names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", content = "args", rename_all = "snake_case")]
pub enum AgentEvent {
    /// Every `heartbeat_interval` (3 s): registers the agent and proves it is alive.
    Heartbeat(AgentInfo),
    /// At start-up (`self-started`).
    AgentStarted {
        reason: String,
    },
    /// At shutdown (`shutdown`), after the agent's kernels were reported terminated.
    AgentTerminated {
        reason: String,
    },
    KernelPreparing(KernelLifecycle),
    /// Only when an image must be pulled; `reason` is the canonical image name.
    KernelPulling(KernelLifecycle),
    KernelCreating(KernelLifecycle),
    /// The kernel process runs and its bootstrap script has finished.
    KernelStarted(KernelStarted),
    /// The kernel process exited; `exit_code` is the real exit status (128 + signal when
    /// killed by a signal, -1 when unknown).
    KernelTerminated {
        kernel_id: Uuid,
        session_id: Uuid,
        reason: String,
        exit_code: i32,
    },
    /// A batch session's startup command exited 0 (`task-done`).
    SessionSuccess {
        session_id: Uuid,
        kernel_id: Uuid,
        reason: String,
        exit_code: i32,
    },
    /// A batch session's startup command failed (`task-failed`, with its exit code).
    SessionFailure {
        session_id: Uuid,
        kernel_id: Uuid,
        reason: String,
        exit_code: i32,
    },
    /// Live statistics of the agent's kernels (every 5 s); stored in Redis only.
    KernelStats {
        stats: BTreeMap<Uuid, Value>,
    },
}

impl AgentEvent {
    pub fn name(&self) -> &'static str {
        match self {
            AgentEvent::Heartbeat(_) => "agent_heartbeat",
            AgentEvent::AgentStarted { .. } => "agent_started",
            AgentEvent::AgentTerminated { .. } => "agent_terminated",
            AgentEvent::KernelPreparing(_) => "kernel_preparing",
            AgentEvent::KernelPulling(_) => "kernel_pulling",
            AgentEvent::KernelCreating(_) => "kernel_creating",
            AgentEvent::KernelStarted(_) => "kernel_started",
            AgentEvent::KernelTerminated { .. } => "kernel_terminated",
            AgentEvent::SessionSuccess { .. } => "session_success",
            AgentEvent::SessionFailure { .. } => "session_failure",
            AgentEvent::KernelStats { .. } => "kernel_stats",
        }
    }

    pub fn is_heartbeat(&self) -> bool {
        matches!(self, AgentEvent::Heartbeat(_))
    }
}

/// What a heartbeat carries (the original's `agent_info`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentInfo {
    pub ip: String,
    pub region: String,
    pub scaling_group: String,
    /// Informational address of the agent; RPC goes through the agent's queue.
    pub addr: String,
    /// ResourceSlot: slot name → decimal string (`{"cpu":"4","mem":"8589934592"}`).
    pub available_slots: BTreeMap<String, String>,
    /// Slot name → slot type (`count`, `bytes`, `unique`), written to etcd
    /// `config/resource_slots/<slot>` when it changes.
    #[serde(default)]
    pub slot_types: BTreeMap<String, String>,
    pub version: String,
    /// Device plugin name → its metadata (`{"cpu": {"version": "1.0"}}`).
    #[serde(default = "empty_object")]
    pub compute_plugins: Value,
    /// Kernels alive on the agent (informational; lets a manager spot strays).
    #[serde(default)]
    pub kernels: Vec<Uuid>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KernelLifecycle {
    pub kernel_id: Uuid,
    pub session_id: Uuid,
    pub creation_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KernelStarted {
    pub kernel_id: Uuid,
    pub session_id: Uuid,
    pub creation_id: String,
    pub reason: String,
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub kernel_host: Option<String>,
    #[serde(default)]
    pub service_ports: Vec<Value>,
}

// ---------------------------------------------------------------------------------------
// manager → agent RPC
// ---------------------------------------------------------------------------------------

/// One RPC request. AMQP properties carry the correlation id, `reply_to`
/// (`amq.rabbitmq.reply-to`) and the per-message `expiration`; the body repeats the
/// absolute deadline so an agent drops a request that waited too long anyway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RpcRequest {
    pub v: u16,
    /// Milliseconds since the Unix epoch after which the caller no longer waits.
    pub deadline_ms: i64,
    /// The API request this call is made for (`X-Request-Id`), for log correlation.
    /// Optional and skipped when absent, so older peers read and write the same bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub call: RpcCall,
}

impl Versioned for RpcRequest {
    fn version(&self) -> u16 {
        self.v
    }
}

/// The reply to an [`RpcRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RpcResponse {
    pub v: u16,
    pub outcome: RpcOutcome,
}

impl Versioned for RpcResponse {
    fn version(&self) -> u16 {
        self.v
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RpcOutcome {
    Ok { result: Value },
    Error(RemoteError),
}

/// An error raised by the agent while handling a call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct RemoteError {
    /// `not-found`, `invalid-argument`, `busy`, `unsupported`, `bad-request`, `internal`.
    pub kind: String,
    pub message: String,
}

impl RemoteError {
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.to_string(),
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new("not-found", message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid-argument", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("internal", message)
    }
}

/// Every call the manager can make. Names follow the original agent's RPC methods.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum RpcCall {
    Ping {
        msg: String,
    },
    CreateKernels(CreateKernels),
    DestroyKernel {
        kernel_id: Uuid,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        suppress_events: bool,
    },
    RestartKernel {
        creation_id: String,
        session_id: Uuid,
        kernel_id: Uuid,
        #[serde(default)]
        updated_config: Value,
    },
    Execute(ExecuteParams),
    InterruptKernel {
        kernel_id: Uuid,
    },
    GetCompletions {
        kernel_id: Uuid,
        text: String,
        #[serde(default)]
        opts: Value,
    },
    GetLogs {
        kernel_id: Uuid,
    },
    UploadFile {
        kernel_id: Uuid,
        /// Relative to the kernel's `/home/work`.
        filename: String,
        /// Base64 (standard alphabet, padded).
        data: String,
    },
    DownloadFile {
        kernel_id: Uuid,
        filepath: String,
    },
    ListFiles {
        kernel_id: Uuid,
        path: String,
    },
    /// Destroys every kernel of the agent (the original's `reset_agent`/`clean_all_kernels`).
    ResetAgent {
        reason: String,
    },
    /// Stops an in-container service app (`POST /session/{id}/shutdown-service`); a
    /// service that is not running is not an error (as the original's kernel runner).
    ShutdownService {
        kernel_id: Uuid,
        service: String,
    },
}

impl RpcCall {
    pub fn method(&self) -> &'static str {
        match self {
            RpcCall::Ping { .. } => "ping",
            RpcCall::CreateKernels(_) => "create_kernels",
            RpcCall::DestroyKernel { .. } => "destroy_kernel",
            RpcCall::RestartKernel { .. } => "restart_kernel",
            RpcCall::Execute(_) => "execute",
            RpcCall::InterruptKernel { .. } => "interrupt_kernel",
            RpcCall::GetCompletions { .. } => "get_completions",
            RpcCall::GetLogs { .. } => "get_logs",
            RpcCall::UploadFile { .. } => "upload_file",
            RpcCall::DownloadFile { .. } => "download_file",
            RpcCall::ListFiles { .. } => "list_files",
            RpcCall::ResetAgent { .. } => "reset_agent",
            RpcCall::ShutdownService { .. } => "shutdown_service",
        }
    }
}

/// `create_kernels`: all kernels of one session placed on this agent, in one call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreateKernels {
    /// The session's creation id (the original's 16-byte urlsafe token).
    pub creation_id: String,
    pub session_id: Uuid,
    #[serde(default)]
    pub session_name: Option<String>,
    pub kernels: Vec<KernelConfig>,
    pub cluster_info: ClusterInfo,
}

/// Per-kernel configuration (the original's kernel config, trimmed to what a process
/// runtime can honour; unknown extras travel in `internal_data`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KernelConfig {
    pub kernel_id: Uuid,
    pub image: ImageRef,
    /// `interactive` or `batch`.
    #[serde(default = "interactive")]
    pub session_type: String,
    #[serde(default = "main_role")]
    pub cluster_role: String,
    #[serde(default = "one")]
    pub cluster_idx: u32,
    #[serde(default)]
    pub cluster_hostname: Option<String>,
    /// ResourceSlot of this kernel (decimal strings).
    #[serde(default)]
    pub resource_slots: BTreeMap<String, String>,
    #[serde(default)]
    pub resource_opts: Value,
    /// The user's environment (`K=V` pairs as a map).
    #[serde(default)]
    pub environ: BTreeMap<String, String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub mount_map: Value,
    #[serde(default)]
    pub bootstrap_script: Option<String>,
    #[serde(default)]
    pub startup_command: Option<String>,
    #[serde(default)]
    pub internal_data: Value,
    #[serde(default)]
    pub preopen_ports: Vec<u16>,
    #[serde(default)]
    pub idle_timeout: Option<u64>,
}

fn interactive() -> String {
    "interactive".into()
}
fn main_role() -> String {
    "main".into()
}
fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRef {
    /// Canonical reference, e.g. `cr.backend.ai/stable/python:3.9-ubuntu20.04`.
    pub canonical: String,
    #[serde(default)]
    pub registry: Option<Value>,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One vfolder mount: `[name, host, host_path, perm, unmanaged_path]` in the original.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Mount {
    pub name: String,
    pub host: String,
    pub host_path: String,
    pub perm: String,
    #[serde(default)]
    pub unmanaged_path: Option<String>,
}

/// Session-wide cluster information (the original's `cluster_info`, plus the ordered host
/// list so the agent can set `BACKENDAI_CLUSTER_HOSTS`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterInfo {
    /// `single-node` or `multi-node`.
    pub mode: String,
    pub size: u32,
    /// Role → kernel count.
    pub replicas: BTreeMap<String, u32>,
    /// Every kernel's hostname, ordered as the manager created them.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub network_name: Option<String>,
    #[serde(default)]
    pub ssh_keypair: Option<Value>,
}

/// Result of creating one kernel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KernelCreated {
    pub id: Uuid,
    pub kernel_host: String,
    pub container_id: String,
    pub repl_in_port: u16,
    pub repl_out_port: u16,
    pub stdin_port: u16,
    pub stdout_port: u16,
    #[serde(default)]
    pub service_ports: Vec<Value>,
    #[serde(default)]
    pub resource_spec: Value,
    #[serde(default)]
    pub attached_devices: Value,
}

/// Result of `restart_kernel`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KernelRestarted {
    pub container_id: String,
    pub repl_in_port: u16,
    pub repl_out_port: u16,
    pub stdin_port: u16,
    pub stdout_port: u16,
    #[serde(default)]
    pub service_ports: Vec<Value>,
}

/// Execution modes of `POST /session/{name}` (api-rest.md §2.5) plus `interrupt`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExecMode {
    Query,
    Batch,
    Continue,
    Input,
    Interrupt,
    Complete,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecuteParams {
    pub kernel_id: Uuid,
    /// API major version of the caller (6 for v6.20210815).
    #[serde(default = "api_v6")]
    pub api_version: u32,
    /// `None` on the first call of a run: the agent assigns 32 hex characters.
    #[serde(default)]
    pub run_id: Option<String>,
    pub mode: ExecMode,
    #[serde(default)]
    pub code: String,
    /// Batch options (`clean`, `build`, `exec`), completion options (`row`, `col`...).
    #[serde(default)]
    pub opts: Value,
    /// How long the agent collects output before answering `continued` (default 2 s).
    #[serde(default)]
    pub flush_timeout_ms: Option<u64>,
}

fn api_v6() -> u32 {
    6
}

/// One console item: `["stdout", "text"]`, `["stderr", "text"]`, `["media", [mime, data]]`...
pub type ConsoleItem = (String, Value);

/// The execute result in the shape the client expects (api-rest.md §2.5).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    pub run_id: Option<String>,
    /// `finished`, `continued`, `waiting-input`, `clean-finished`, `build-finished`,
    /// `exec-timeout`.
    pub status: String,
    pub console: Vec<ConsoleItem>,
    pub exit_code: Option<i32>,
    pub options: Option<Value>,
    #[serde(default)]
    pub files: Vec<Value>,
}

impl ExecResult {
    /// All stdout text of the console, concatenated (a convenience for tests and tools).
    pub fn stdout(&self) -> String {
        self.stream("stdout")
    }

    pub fn stderr(&self) -> String {
        self.stream("stderr")
    }

    fn stream(&self, which: &str) -> String {
        self.console
            .iter()
            .filter(|(k, _)| k == which)
            .filter_map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Appends a console item, merging adjacent stdout/stderr chunks as the original does.
pub fn push_console(console: &mut Vec<ConsoleItem>, kind: &str, data: &str) {
    if let Some((k, Value::String(s))) = console.last_mut() {
        if k == kind && (kind == "stdout" || kind == "stderr") {
            s.push_str(data);
            return;
        }
    }
    console.push((kind.to_string(), Value::String(data.to_string())));
}

/// Result of `get_completions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Completions {
    pub status: String,
    pub completions: Vec<String>,
}

/// Result of `list_files` (api-rest.md: `files` is a JSON-encoded string).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileList {
    pub files: String,
    pub errors: String,
    pub abspath: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_round_trip_and_shape() {
        let msg = AgentMessage::new(
            "i-1",
            AgentEvent::Heartbeat(AgentInfo {
                ip: "127.0.0.1".into(),
                region: "local".into(),
                scaling_group: "default".into(),
                addr: "amqp://127.0.0.1/i-1".into(),
                available_slots: [("cpu".to_string(), "4".to_string())].into(),
                slot_types: Default::default(),
                version: "21.3.6".into(),
                compute_plugins: serde_json::json!({}),
                kernels: vec![],
            }),
        );
        let bytes = msg.to_vec();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["body"]["event"], "heartbeat");
        assert_eq!(v["body"]["args"]["available_slots"]["cpu"], "4");
        let back: AgentMessage = decode(&bytes).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn rejects_bad_messages() {
        assert!(matches!(
            decode::<AgentMessage>(b"not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode::<AgentMessage>(br#"{"v":9,"id":"x"}"#),
            Err(DecodeError::Version { found: 9 })
        ));
        let unknown = serde_json::json!({
            "v": 1, "id": Uuid::nil(), "agent_id": "a", "ts": Utc::now(),
            "body": {"event": "no_such_event", "args": {}}
        });
        assert!(matches!(
            decode::<AgentMessage>(unknown.to_string().as_bytes()),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn exec_result_shape() {
        let mut console = Vec::new();
        push_console(&mut console, "stdout", "a");
        push_console(&mut console, "stdout", "b");
        push_console(&mut console, "stderr", "c");
        let r = ExecResult {
            run_id: Some("r".into()),
            status: "finished".into(),
            console,
            exit_code: Some(0),
            options: None,
            files: vec![],
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["console"],
            serde_json::json!([["stdout", "ab"], ["stderr", "c"]])
        );
        assert_eq!(v["exitCode"], 0);
        assert_eq!(v["runId"], "r");
    }

    #[test]
    fn rpc_call_shape() {
        let req = RpcRequest {
            v: PROTOCOL_VERSION,
            deadline_ms: 1,
            request_id: None,
            call: RpcCall::Ping { msg: "x".into() },
        };
        let v = serde_json::to_value(&req).unwrap();
        assert!(
            v.get("request_id").is_none(),
            "absent request id is not sent"
        );
        assert_eq!(v["call"]["method"], "ping");
        assert_eq!(v["call"]["params"]["msg"], "x");
    }
}
