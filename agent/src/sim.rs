//! Simulated agents: N agents in one process, for scale tests with thousands of agents.
//!
//! Each simulated agent is a real protocol peer — its own durable RPC queue and consumer,
//! its own heartbeats — but kernels only "start" after a configurable delay and `execute`
//! returns a canned result.
//!
//! Per-agent cost is kept small by sharing what the broker lets us share: one RPC queue
//! and one consumer per agent are unavoidable (that *is* the protocol), but consumers are
//! multiplexed on shared channels (`agents_per_channel`, default 256; a channel is an
//! Erlang process on the broker and a buffer on our side, a consumer is just a tag), one
//! reply channel and one event publisher (two channels) are shared by every agent on a
//! connection, and connections hold `agents_per_connection` (default 5,000) agents. In
//! the process an agent costs two small tokio tasks (RPC loop, heartbeat timer) and a map
//! of its kernels. Heartbeats start at a random phase so the fleet's heartbeats spread
//! evenly over the interval instead of arriving in bursts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use lapin::options::BasicQosOptions;
use lapin::Connection;
use rand::Rng;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use bai_agent_proto::amqp;
use bai_agent_proto::*;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub count: usize,
    /// Agent ids are `{id_prefix}{index:05}`.
    pub id_prefix: String,
    pub scaling_group: String,
    pub region: String,
    pub slots: BTreeMap<String, String>,
    pub heartbeat_interval: Duration,
    /// How long a simulated kernel takes to "start".
    pub start_delay: Duration,
    pub amqp_url: String,
    pub prefix: String,
    pub agents_per_channel: usize,
    pub agents_per_connection: usize,
    pub rpc_prefetch: u16,
}

impl SimConfig {
    pub fn new(count: usize, amqp_url: &str, prefix: &str) -> Self {
        Self {
            count,
            id_prefix: "i-sim-".into(),
            scaling_group: "default".into(),
            region: "local".into(),
            slots: [
                ("cpu".to_string(), "8".to_string()),
                ("mem".to_string(), "34359738368".to_string()),
            ]
            .into(),
            heartbeat_interval: Duration::from_secs(3),
            start_delay: Duration::from_millis(500),
            amqp_url: amqp_url.to_string(),
            prefix: prefix.to_string(),
            agents_per_channel: 256,
            agents_per_connection: 5_000,
            rpc_prefetch: 16,
        }
    }

    pub fn agent_id(&self, i: usize) -> String {
        format!("{}{i:05}", self.id_prefix)
    }
}

pub struct SimAgent {
    pub id: String,
    info: AgentInfo,
    publisher: EventPublisher,
    kernels: Mutex<HashMap<Uuid, Uuid>>,
    start_delay: Duration,
    /// Cancelled to "kill" this agent alone (or by the fleet's shutdown).
    stop: CancellationToken,
    killed: std::sync::atomic::AtomicBool,
}

impl SimAgent {
    async fn emit(&self, event: AgentEvent) {
        if let Err(e) = self.publisher.publish(&self.id, event).await {
            tracing::warn!(agent_id = %self.id, error = %format!("{e:#}"), "simulated agent could not publish an event");
        }
    }

    async fn dispatch(self: Arc<Self>, call: RpcCall) -> Result<Value, RemoteError> {
        match call {
            RpcCall::Ping { msg } => Ok(Value::String(msg)),
            RpcCall::CreateKernels(req) => {
                let mut out = Vec::new();
                for k in &req.kernels {
                    let lc = KernelLifecycle {
                        kernel_id: k.kernel_id,
                        session_id: req.session_id,
                        creation_id: req.creation_id.clone(),
                        reason: String::new(),
                    };
                    self.emit(AgentEvent::KernelPreparing(lc.clone())).await;
                    self.emit(AgentEvent::KernelCreating(lc)).await;
                }
                tokio::time::sleep(self.start_delay).await;
                for k in &req.kernels {
                    self.kernels
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(k.kernel_id, req.session_id);
                    let container_id = format!("sim-{}", k.kernel_id.simple());
                    self.emit(AgentEvent::KernelStarted(KernelStarted {
                        kernel_id: k.kernel_id,
                        session_id: req.session_id,
                        creation_id: req.creation_id.clone(),
                        reason: String::new(),
                        container_id: Some(container_id.clone()),
                        kernel_host: Some(self.info.ip.clone()),
                        service_ports: Vec::new(),
                    }))
                    .await;
                    out.push(KernelCreated {
                        id: k.kernel_id,
                        kernel_host: self.info.ip.clone(),
                        container_id,
                        repl_in_port: 0,
                        repl_out_port: 0,
                        stdin_port: 0,
                        stdout_port: 0,
                        service_ports: Vec::new(),
                        resource_spec: json!({"slots": k.resource_slots}),
                        attached_devices: json!({}),
                    });
                }
                serde_json::to_value(out).map_err(|e| RemoteError::internal(e.to_string()))
            }
            RpcCall::DestroyKernel {
                kernel_id,
                reason,
                suppress_events,
            } => {
                let session = self
                    .kernels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&kernel_id);
                if !suppress_events {
                    let (session_id, reason, exit_code) = match session {
                        Some(s) => (s, reason.unwrap_or_else(|| "user-requested".into()), 0),
                        None => (Uuid::nil(), "already-terminated".into(), -1),
                    };
                    self.emit(AgentEvent::KernelTerminated {
                        kernel_id,
                        session_id,
                        reason,
                        exit_code,
                    })
                    .await;
                }
                Ok(json!({}))
            }
            RpcCall::RestartKernel { kernel_id, .. } => {
                if !self
                    .kernels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&kernel_id)
                {
                    return Err(RemoteError::not_found(format!("no kernel {kernel_id}")));
                }
                tokio::time::sleep(self.start_delay).await;
                Ok(json!({
                    "container_id": format!("sim-{}", kernel_id.simple()),
                    "repl_in_port": 0, "repl_out_port": 0, "stdin_port": 0, "stdout_port": 0,
                    "service_ports": [],
                }))
            }
            RpcCall::Execute(p) => {
                let result = ExecResult {
                    run_id: Some(
                        p.run_id
                            .unwrap_or_else(|| Uuid::new_v4().simple().to_string()),
                    ),
                    status: "finished".into(),
                    console: vec![("stdout".into(), Value::String("simulated output\n".into()))],
                    exit_code: Some(0),
                    options: Some(json!({})),
                    files: Vec::new(),
                };
                serde_json::to_value(result).map_err(|e| RemoteError::internal(e.to_string()))
            }
            RpcCall::InterruptKernel { .. }
            | RpcCall::UploadFile { .. }
            | RpcCall::ShutdownService { .. } => Ok(json!({})),
            RpcCall::GetCompletions { .. } => Ok(json!({"status": "finished", "completions": []})),
            RpcCall::GetLogs { .. } => Ok(json!({"logs": ""})),
            // An empty tar archive is two zero blocks.
            RpcCall::DownloadFile { .. } => {
                Ok(json!({"data": data_encoding::BASE64.encode(&[0u8; 1024])}))
            }
            RpcCall::ListFiles { path, .. } => {
                Ok(json!({"files": "[]", "errors": "", "abspath": path}))
            }
            RpcCall::ResetAgent { reason } => {
                let all: Vec<(Uuid, Uuid)> = self
                    .kernels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .drain()
                    .collect();
                for (kernel_id, session_id) in &all {
                    self.emit(AgentEvent::KernelTerminated {
                        kernel_id: *kernel_id,
                        session_id: *session_id,
                        reason: reason.clone(),
                        exit_code: 0,
                    })
                    .await;
                }
                Ok(json!({"destroyed": all.iter().map(|(k, _)| k).collect::<Vec<_>>()}))
            }
        }
    }
}

impl RpcHandler for SimAgent {
    fn handle(self: Arc<Self>, call: RpcCall) -> BoxFuture<'static, Result<Value, RemoteError>> {
        Box::pin(self.dispatch(call))
    }
}

/// A running simulated fleet.
pub struct SimFleet {
    pub config: SimConfig,
    agents: Vec<Arc<SimAgent>>,
    conns: Vec<Arc<Connection>>,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
}

impl SimFleet {
    /// Connects, declares every agent's queue, starts consumers and heartbeats, and sends
    /// each agent's `agent_started`.
    pub async fn start(config: SimConfig) -> anyhow::Result<Self> {
        let names = Names::new(&config.prefix);
        let shutdown = CancellationToken::new();
        let mut agents = Vec::with_capacity(config.count);
        let mut conns = Vec::new();
        let mut tasks = JoinSet::new();
        let per_conn = config.agents_per_connection.max(1);
        let per_channel = config.agents_per_channel.max(1);
        for (ci, conn_start) in (0..config.count).step_by(per_conn).enumerate() {
            let conn = amqp::connect(
                &config.amqp_url,
                &format!("sim-agents-{ci}"),
                Duration::from_secs(30),
            )
            .await?;
            let publisher = EventPublisher::open(&conn, &names).await?;
            let replies = conn.create_channel().await?;
            let conn_end = (conn_start + per_conn).min(config.count);
            for chan_start in (conn_start..conn_end).step_by(per_channel) {
                let channel = conn.create_channel().await?;
                channel
                    .basic_qos(config.rpc_prefetch, BasicQosOptions::default())
                    .await?;
                for i in chan_start..(chan_start + per_channel).min(conn_end) {
                    let id = config.agent_id(i);
                    amqp::declare_rpc_queue(&channel, &names, &id).await?;
                    let agent = Arc::new(SimAgent {
                        info: AgentInfo {
                            ip: "127.0.0.1".into(),
                            region: config.region.clone(),
                            scaling_group: config.scaling_group.clone(),
                            addr: format!("sim://{id}"),
                            available_slots: config.slots.clone(),
                            slot_types: config
                                .slots
                                .keys()
                                .map(|k| (k.clone(), crate::config::slot_type(k).to_string()))
                                .collect(),
                            version: crate::AGENT_VERSION.into(),
                            compute_plugins: json!({"cpu": {"version": crate::AGENT_VERSION}}),
                            kernels: Vec::new(),
                        },
                        id: id.clone(),
                        publisher: publisher.clone(),
                        kernels: Mutex::new(HashMap::new()),
                        start_delay: config.start_delay,
                        stop: shutdown.child_token(),
                        killed: Default::default(),
                    });
                    let (ch, rp, a) = (channel.clone(), replies.clone(), agent.clone());
                    let queue = names.rpc_queue(&id);
                    tasks.spawn(async move {
                        let stop = a.stop.clone();
                        if let Err(e) = bai_agent_proto::server::serve(ch, rp, queue, a.id.clone(), a.clone(), stop, Duration::from_secs(1)).await {
                            tracing::warn!(agent_id = %a.id, error = %format!("{e:#}"), "simulated agent's RPC loop ended");
                        }
                    });
                    tasks.spawn(heartbeats(agent.clone(), config.heartbeat_interval));
                    agents.push(agent);
                }
            }
            conns.push(conn);
        }
        for a in &agents {
            a.emit(AgentEvent::AgentStarted {
                reason: "self-started".into(),
            })
            .await;
        }
        tracing::info!(
            count = agents.len(),
            connections = conns.len(),
            "simulated agents running"
        );
        Ok(Self {
            config,
            agents,
            conns,
            tasks,
            shutdown,
        })
    }

    pub fn agent_ids(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.id.clone()).collect()
    }

    /// "Kills" one agent: its heartbeats stop and its RPC consumer goes away, with no
    /// `agent_terminated` (as if the host died). Returns false for an unknown id.
    pub fn kill(&self, agent_id: &str) -> bool {
        match self.agents.iter().find(|a| a.id == agent_id) {
            Some(a) => {
                a.killed.store(true, std::sync::atomic::Ordering::Release);
                a.stop.cancel();
                true
            }
            None => false,
        }
    }

    /// Stops every agent gracefully (each sends `agent_terminated(shutdown)`).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        for a in &self.agents {
            if !a.killed.load(std::sync::atomic::Ordering::Acquire) {
                a.emit(AgentEvent::AgentTerminated {
                    reason: "shutdown".into(),
                })
                .await;
            }
        }
        for c in &self.conns {
            let _ = c.close(200, "simulation stopped").await;
        }
    }
}

async fn heartbeats(agent: Arc<SimAgent>, interval: Duration) {
    // A random phase spreads the fleet's heartbeats over the interval.
    let phase = rand::thread_rng().gen_range(0..interval.as_millis().max(1) as u64);
    tokio::select! {
        _ = agent.stop.cancelled() => return,
        _ = tokio::time::sleep(Duration::from_millis(phase)) => {}
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = agent.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = agent
            .publisher
            .publish(&agent.id, AgentEvent::Heartbeat(agent.info.clone()))
            .await
        {
            tracing::debug!(agent_id = %agent.id, error = %format!("{e:#}"), "heartbeat not sent");
        }
    }
}
