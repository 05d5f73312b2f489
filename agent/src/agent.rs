//! The agent daemon (process runtime).
//!
//! Tasks of one agent:
//! * the **connection supervisor** ([`Agent::run`]): connects, declares its RPC queue,
//!   serves RPC until the connection fails, then reconnects with backoff (kernels keep
//!   running meanwhile);
//! * the **outbox** ([`Link::run_outbox`]): publishes lifecycle events in order, each
//!   confirmed by the broker;
//! * the **heartbeat** (every `heartbeat_interval`, 3 s) and **stats** (every 5 s) loops;
//! * per kernel: a **reader** of the runner's messages and a **supervisor** waiting for the
//!   process to exit, which reports `kernel_terminated` with the real exit code.
//!
//! On shutdown the agent stops taking RPCs, destroys its kernels (`agent-termination`),
//! waits for their `kernel_terminated` events to be confirmed, then sends
//! `agent_terminated(shutdown)`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use lapin::options::BasicQosOptions;
use lapin::Connection;
use serde_json::{json, Value};
use tokio::process::Child;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use bai_agent_proto::amqp;
use bai_agent_proto::*;

use crate::config::{AgentConfig, RuntimeKind};
use crate::kernel::{self, exit_code, Kernel, SpawnSpec};
use crate::link::Link;

/// Reason a restart gives the old process, so its supervisor keeps the work directory.
const RESTARTING: &str = "restarting";

pub struct Agent {
    pub cfg: AgentConfig,
    names: Names,
    link: Arc<Link>,
    outbox: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<AgentMessage>>>,
    kernels: Mutex<HashMap<Uuid, Arc<Kernel>>>,
    /// The original agent creates at most 4 kernels at once.
    create_slots: Semaphore,
    conn: Mutex<Option<Arc<Connection>>>,
    /// Stops the background loops (stats, outbox).
    background: CancellationToken,
    /// Stops the heartbeats (before `agent_terminated`, so none follows it).
    heartbeats: CancellationToken,
    python: PathBuf,
}

/// A running agent.
pub struct AgentHandle {
    pub agent: Arc<Agent>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl AgentHandle {
    /// Graceful stop: kernels destroyed and reported, then `agent_terminated`.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await?
    }

    /// Simulates a crash: nothing more is sent (no heartbeats, no events), the RPC
    /// consumer disappears with the connection, and the kernel processes are killed so
    /// nothing leaks.
    pub async fn crash(self) {
        self.agent.link.mute();
        self.agent.background.cancel();
        self.agent.heartbeats.cancel();
        self.task.abort();
        for k in self.agent.kernel_list() {
            k.request_stop("agent-crash", true);
            k.signal_group(libc::SIGKILL);
        }
        let conn = self.agent.conn.lock().ok().and_then(|mut c| c.take());
        if let Some(c) = conn {
            let _ = c.close(320, "agent crashed").await;
        }
        let _ = self.task.await;
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Finds `program` on the agent's PATH (kernels get a clean environment).
fn resolve_program(program: &Path) -> PathBuf {
    if program.components().count() > 1 {
        return program.to_path_buf();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| program.to_path_buf())
}

impl Agent {
    pub fn new(cfg: AgentConfig) -> Arc<Self> {
        let (link, rx) = Link::new(&cfg.id);
        Arc::new(Self {
            names: Names::new(&cfg.prefix),
            python: resolve_program(&cfg.python),
            cfg,
            link,
            outbox: Mutex::new(Some(rx)),
            kernels: Mutex::new(HashMap::new()),
            create_slots: Semaphore::new(4),
            conn: Mutex::new(None),
            background: CancellationToken::new(),
            heartbeats: CancellationToken::new(),
        })
    }

    /// Starts the agent on the current runtime.
    pub fn spawn(cfg: AgentConfig) -> AgentHandle {
        let agent = Self::new(cfg);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(agent.clone().run(shutdown.clone()));
        AgentHandle {
            agent,
            shutdown,
            task,
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn kernel_list(&self) -> Vec<Arc<Kernel>> {
        lock(&self.kernels).values().cloned().collect()
    }

    fn kernel(&self, id: Uuid) -> Result<Arc<Kernel>, RemoteError> {
        lock(&self.kernels).get(&id).cloned().ok_or_else(|| {
            RemoteError::not_found(format!("no kernel {id} on agent {}", self.cfg.id))
        })
    }

    /// What a heartbeat says about this agent.
    pub fn info(&self) -> AgentInfo {
        let mut plugins = serde_json::Map::new();
        plugins.insert("cpu".into(), json!({"version": self.cfg.version}));
        for slot in self.cfg.slots.keys() {
            if let Some((dev, _)) = slot.split_once('.') {
                plugins.insert(
                    dev.to_string(),
                    json!({"version": self.cfg.version, "fake": true}),
                );
            }
        }
        AgentInfo {
            ip: self.cfg.ip.clone(),
            region: self.cfg.region.clone(),
            scaling_group: self.cfg.scaling_group.clone(),
            addr: self.cfg.addr.clone(),
            available_slots: self.cfg.slots.clone(),
            slot_types: self.cfg.slot_types.clone(),
            version: self.cfg.version.clone(),
            compute_plugins: Value::Object(plugins),
            kernels: lock(&self.kernels).keys().copied().collect(),
        }
    }

    /// Runs until `shutdown`, then stops gracefully.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        tokio::fs::create_dir_all(&self.cfg.work_root)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the work root {}: {e}",
                    self.cfg.work_root.display()
                )
            })?;
        if let Some(rx) = lock(&self.outbox).take() {
            tokio::spawn(self.link.clone().run_outbox(rx, self.background.clone()));
        }
        tokio::spawn(self.clone().heartbeat_loop());
        tokio::spawn(self.clone().stats_loop());
        self.link.emit(AgentEvent::AgentStarted {
            reason: "self-started".into(),
        });
        tracing::info!(agent_id = %self.cfg.id, queue = %self.names.rpc_queue(&self.cfg.id), "agent starting");
        let mut wait = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            match self.serve_once(&shutdown).await {
                Ok(()) if shutdown.is_cancelled() => break,
                Ok(()) => tracing::warn!("RPC consumer ended; reconnecting"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "agent connection failed; reconnecting")
                }
            }
            self.link.set_publisher(None);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        tracing::info!(agent_id = %self.cfg.id, "agent stopping: destroying kernels");
        self.destroy_all("agent-termination").await;
        self.heartbeats.cancel();
        self.link.emit(AgentEvent::AgentTerminated {
            reason: "shutdown".into(),
        });
        if !self.link.flush(Duration::from_secs(10)).await {
            tracing::warn!("could not deliver every event before shutdown");
        }
        self.background.cancel();
        let conn = lock(&self.conn).take();
        if let Some(c) = conn {
            let _ = c.close(200, "agent shutdown").await;
        }
        tracing::info!(agent_id = %self.cfg.id, "agent stopped");
        Ok(())
    }

    /// One connection's lifetime: returns when it fails or at shutdown (the connection
    /// then stays open for the final events).
    async fn serve_once(self: &Arc<Self>, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let conn = amqp::connect(
            &self.cfg.amqp_url,
            &format!("agent:{}", self.cfg.id),
            Duration::from_secs(5),
        )
        .await?;
        *lock(&self.conn) = Some(conn.clone());
        let publisher = EventPublisher::open(&conn, &self.names).await?;
        self.link.set_publisher(Some(publisher));
        let rpc = conn.create_channel().await?;
        rpc.basic_qos(self.cfg.rpc_prefetch, BasicQosOptions::default())
            .await?;
        amqp::declare_rpc_queue(&rpc, &self.names, &self.cfg.id).await?;
        let replies = conn.create_channel().await?;
        tracing::info!(agent_id = %self.cfg.id, "connected; serving RPC");
        // Register now rather than one interval later.
        self.link.send_now(AgentEvent::Heartbeat(self.info())).await;
        bai_agent_proto::server::serve(
            rpc,
            replies,
            self.names.rpc_queue(&self.cfg.id),
            format!("agent:{}", self.cfg.id),
            self.clone(),
            shutdown.clone(),
            Duration::from_secs(5),
        )
        .await
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.heartbeats.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.link.send_now(AgentEvent::Heartbeat(self.info())).await;
        }
    }

    async fn stats_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.stats_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.background.cancelled() => return,
                _ = tick.tick() => {}
            }
            let stats: BTreeMap<Uuid, Value> = self
                .kernel_list()
                .iter()
                .map(|k| (k.id, k.stats()))
                .collect();
            if !stats.is_empty() {
                self.link.send_now(AgentEvent::KernelStats { stats }).await;
            }
        }
    }

    async fn dispatch(self: Arc<Self>, call: RpcCall) -> Result<Value, RemoteError> {
        match call {
            RpcCall::Ping { msg } => Ok(Value::String(msg)),
            RpcCall::CreateKernels(req) => self.create_kernels(req).await,
            RpcCall::DestroyKernel {
                kernel_id,
                reason,
                suppress_events,
            } => {
                let reason = reason.unwrap_or_else(|| "user-requested".into());
                self.destroy(kernel_id, &reason, suppress_events).await?;
                Ok(json!({}))
            }
            RpcCall::RestartKernel {
                creation_id,
                session_id,
                kernel_id,
                ..
            } => self.restart(&creation_id, session_id, kernel_id).await,
            RpcCall::Execute(p) => {
                let r = self.execute(p).await?;
                serde_json::to_value(r).map_err(|e| RemoteError::internal(e.to_string()))
            }
            RpcCall::InterruptKernel { kernel_id } => {
                self.kernel(kernel_id)?.interrupt();
                Ok(json!({}))
            }
            RpcCall::GetCompletions {
                kernel_id, text, ..
            } => {
                let items = self
                    .kernel(kernel_id)?
                    .complete(&text, Duration::from_secs(2))
                    .await;
                Ok(json!({"status": "finished", "completions": items}))
            }
            RpcCall::GetLogs { kernel_id } => {
                Ok(json!({"logs": self.kernel(kernel_id)?.logs().await}))
            }
            RpcCall::UploadFile {
                kernel_id,
                filename,
                data,
            } => {
                let k = self.kernel(kernel_id)?;
                let bytes = data_encoding::BASE64
                    .decode(data.as_bytes())
                    .map_err(|e| RemoteError::invalid(format!("file data is not base64: {e}")))?;
                let path = k.resolve(&filename)?;
                crate::mounts::refuse_ro_write(&k.work, &k.config, &path)?;
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(|e| RemoteError::internal(e.to_string()))?;
                }
                tokio::fs::write(&path, bytes)
                    .await
                    .map_err(|e| RemoteError::internal(e.to_string()))?;
                Ok(json!({}))
            }
            RpcCall::DownloadFile {
                kernel_id,
                filepath,
            } => {
                let k = self.kernel(kernel_id)?;
                let tar = download(&k.resolve(&filepath)?).await?;
                Ok(json!({"data": data_encoding::BASE64.encode(&tar)}))
            }
            RpcCall::ListFiles { kernel_id, path } => {
                let k = self.kernel(kernel_id)?;
                let target = k.resolve(&path)?;
                serde_json::to_value(list_files(&k.work, &target))
                    .map_err(|e| RemoteError::internal(e.to_string()))
            }
            RpcCall::ResetAgent { reason } => {
                Ok(json!({"destroyed": self.destroy_all(&reason).await}))
            }
            // Process kernels run no service apps (their service ports are empty), so
            // there is never one to stop; the kernel must exist, as with every call.
            RpcCall::ShutdownService { kernel_id, .. } => {
                self.kernel(kernel_id)?;
                Ok(json!({}))
            }
        }
    }

    async fn create_kernels(self: Arc<Self>, req: CreateKernels) -> Result<Value, RemoteError> {
        if req.kernels.is_empty() {
            return Err(RemoteError::invalid("create_kernels without kernels"));
        }
        let results = futures::future::join_all(req.kernels.iter().map(|k| {
            let this = self.clone();
            let req = &req;
            async move {
                let _permit = this.create_slots.acquire().await;
                this.start_kernel(req, k, false).await
            }
        }))
        .await;
        if let Some(err) = results.iter().find_map(|r| r.as_ref().err()).cloned() {
            // All or nothing: the manager treats the session as failed to start.
            for created in results.iter().flatten() {
                let _ = self.destroy(created.id, "failed-to-start", true).await;
            }
            return Err(err);
        }
        let created: Vec<KernelCreated> = results.into_iter().flatten().collect();
        serde_json::to_value(created).map_err(|e| RemoteError::internal(e.to_string()))
    }

    fn created_info(&self, k: &Kernel) -> KernelCreated {
        KernelCreated {
            id: k.id,
            kernel_host: self.cfg.ip.clone(),
            container_id: container_id(k),
            repl_in_port: 0,
            repl_out_port: 0,
            stdin_port: 0,
            stdout_port: 0,
            service_ports: Vec::new(),
            resource_spec: json!({
                "slots": k.config.resource_slots,
                "mounts": k.config.mounts,
                "runtime": k.runtime.runner_lang(),
            }),
            attached_devices: json!({}),
        }
    }

    /// The kernel's environment (orchestration.md §1.3): a clean base, the user's
    /// variables, then the session-wide and per-kernel `BACKENDAI_*` variables.
    pub fn build_env(
        &self,
        req: &CreateKernels,
        k: &KernelConfig,
        work: &Path,
    ) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert(
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
        env.insert("HOME".into(), work.display().to_string());
        env.insert("LANG".into(), "C.UTF-8".into());
        env.insert("TERM".into(), "xterm".into());
        for (key, value) in &k.environ {
            env.insert(key.clone(), value.clone());
        }
        let hostname = k
            .cluster_hostname
            .clone()
            .unwrap_or_else(|| format!("{}{}", k.cluster_role, k.cluster_idx));
        let hosts = if req.cluster_info.hosts.is_empty() {
            hostname.clone()
        } else {
            req.cluster_info.hosts.join(",")
        };
        let replicas = if req.cluster_info.replicas.is_empty() {
            format!("{}:1", k.cluster_role)
        } else {
            req.cluster_info
                .replicas
                .iter()
                .map(|(role, n)| format!("{role}:{n}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let vars = [
            ("BACKENDAI_SESSION_ID", req.session_id.to_string()),
            (
                "BACKENDAI_SESSION_NAME",
                req.session_name.clone().unwrap_or_default(),
            ),
            ("BACKENDAI_KERNEL_ID", k.kernel_id.to_string()),
            ("BACKENDAI_KERNEL_IMAGE", k.image.canonical.clone()),
            (
                "BACKENDAI_CLUSTER_SIZE",
                req.cluster_info.size.max(1).to_string(),
            ),
            ("BACKENDAI_CLUSTER_REPLICAS", replicas),
            ("BACKENDAI_CLUSTER_HOSTS", hosts),
            ("BACKENDAI_CLUSTER_ROLE", k.cluster_role.clone()),
            ("BACKENDAI_CLUSTER_IDX", k.cluster_idx.to_string()),
            ("BACKENDAI_CLUSTER_HOST", hostname),
        ];
        for (key, value) in vars {
            env.insert(key.to_string(), value);
        }
        env.into_iter().collect()
    }

    /// Prepares, bootstraps and starts one kernel; reports `kernel_started` once the runner
    /// is ready. With `restart`, the kernel's work directory is reused and no bootstrap runs.
    async fn start_kernel(
        self: &Arc<Self>,
        req: &CreateKernels,
        k: &KernelConfig,
        restart: bool,
    ) -> Result<KernelCreated, RemoteError> {
        let kid = k.kernel_id;
        if !restart {
            if let Ok(existing) = self.kernel(kid) {
                // A repeated create (manager retry) is answered, not executed twice.
                return Ok(self.created_info(&existing));
            }
        }
        let lifecycle = |reason: &str| KernelLifecycle {
            kernel_id: kid,
            session_id: req.session_id,
            creation_id: req.creation_id.clone(),
            reason: reason.to_string(),
        };
        if !restart {
            self.link.emit(AgentEvent::KernelPreparing(lifecycle("")));
        }
        let runtime: RuntimeKind =
            self.cfg
                .runtimes
                .resolve(&k.image.canonical)
                .ok_or_else(|| {
                    RemoteError::new(
                        "unsupported",
                        format!("no runtime configured for image {}", k.image.canonical),
                    )
                })?;
        if !restart {
            self.link.emit(AgentEvent::KernelCreating(lifecycle("")));
        }
        let dir = self.cfg.work_root.join(kid.to_string());
        let work = dir.join("work");
        tokio::fs::create_dir_all(&work)
            .await
            .map_err(|e| RemoteError::internal(format!("cannot create {}: {e}", work.display())))?;
        let env = self.build_env(req, k, &work);
        if !restart {
            // Dotfiles first, so the bootstrap script can already use them.
            let work_dir = work.clone();
            let data = k.internal_data.clone();
            let n = tokio::task::spawn_blocking(move || kernel::write_dotfiles(&work_dir, &data))
                .await
                .unwrap_or(0);
            if n > 0 {
                tracing::debug!(kernel_id = %kid, count = n, "dotfiles written");
            }
            if let Some(script) = k
                .bootstrap_script
                .as_deref()
                .filter(|s| !s.trim().is_empty())
            {
                match kernel::run_script(&dir, &env, script, None, self.cfg.bootstrap_timeout).await
                {
                    Ok(0) => {}
                    Ok(code) => {
                        tracing::warn!(kernel_id = %kid, code, "bootstrap script failed; starting the kernel anyway")
                    }
                    Err(e) => {
                        tracing::warn!(kernel_id = %kid, error = %e, "bootstrap script did not finish")
                    }
                }
            }
        }
        let spawned = kernel::spawn(SpawnSpec {
            id: kid,
            session_id: req.session_id,
            creation_id: &req.creation_id,
            config: k,
            runtime,
            dir: &dir,
            env,
            python: &self.python,
        })
        .await?;
        let kernel = spawned.kernel.clone();
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(kernel.clone().read_messages(spawned.stdout, ready_tx));
        lock(&self.kernels).insert(kid, kernel.clone());
        tokio::spawn(self.clone().supervise(kernel.clone(), spawned.child));
        match tokio::time::timeout(self.cfg.start_timeout, ready_rx).await {
            Ok(Ok(())) => {}
            outcome => {
                let why = if outcome.is_err() {
                    "did not become ready in time"
                } else {
                    "exited during start-up"
                };
                let _ = kernel
                    .terminate("failed-to-start", true, self.cfg.destroy_grace)
                    .await;
                let logs = kernel.logs().await;
                let tail: String = logs
                    .chars()
                    .rev()
                    .take(2000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                return Err(RemoteError::new(
                    "start-failed",
                    format!("kernel {kid} {why}: {tail}"),
                ));
            }
        }
        if !restart && k.session_type.eq_ignore_ascii_case("batch") {
            if let Some(cmd) = k.startup_command.clone().filter(|c| !c.trim().is_empty()) {
                tokio::spawn(self.clone().run_batch(kernel.clone(), cmd));
            }
        }
        let created = self.created_info(&kernel);
        self.link.emit(AgentEvent::KernelStarted(KernelStarted {
            kernel_id: kid,
            session_id: req.session_id,
            creation_id: req.creation_id.clone(),
            reason: if restart {
                "restarted".into()
            } else {
                String::new()
            },
            container_id: Some(created.container_id.clone()),
            kernel_host: Some(created.kernel_host.clone()),
            service_ports: Vec::new(),
        }));
        Ok(created)
    }

    /// Waits for the kernel process to exit and reports it.
    async fn supervise(self: Arc<Self>, kernel: Arc<Kernel>, mut child: Child) {
        let code = match child.wait().await {
            Ok(status) => exit_code(status),
            Err(e) => {
                tracing::warn!(kernel_id = %kernel.id, error = %e, "cannot wait for the kernel");
                -1
            }
        };
        {
            let mut map = lock(&self.kernels);
            if map.get(&kernel.id).is_some_and(|k| Arc::ptr_eq(k, &kernel)) {
                map.remove(&kernel.id);
            }
        }
        let stop = kernel.stop_request();
        let (reason, suppress) = match &stop {
            Some(s) => (s.reason.clone(), s.suppress_events),
            None => ("self-terminated".to_string(), false),
        };
        tracing::info!(kernel_id = %kernel.id, code, reason, "kernel exited");
        // Queue the event *before* waking whoever waits for the exit (destroy, shutdown):
        // everything they emit afterwards (e.g. `agent_terminated`) follows it in order.
        if !suppress {
            self.link.emit(AgentEvent::KernelTerminated {
                kernel_id: kernel.id,
                session_id: kernel.session_id,
                reason: reason.clone(),
                exit_code: code,
            });
        }
        kernel.mark_exited(code);
        kernel.close_log();
        if reason != RESTARTING && !self.cfg.keep_work_dirs {
            if let Err(e) = tokio::fs::remove_dir_all(&kernel.dir).await {
                tracing::debug!(kernel_id = %kernel.id, error = %e, "cannot remove the kernel directory");
            }
        }
    }

    /// A batch session's startup command; reports `session_success` / `session_failure`.
    async fn run_batch(self: Arc<Self>, kernel: Arc<Kernel>, cmd: String) {
        let outcome = kernel::run_script(
            &kernel.dir,
            &kernel.env,
            &cmd,
            Some(kernel.pid),
            Duration::from_secs(365 * 24 * 3600),
        )
        .await;
        let code = outcome.unwrap_or(-1);
        if kernel.stop_request().is_some() {
            self.link.emit(AgentEvent::SessionFailure {
                session_id: kernel.session_id,
                kernel_id: kernel.id,
                reason: "task-cancelled".into(),
                exit_code: -2,
            });
        } else if code == 0 {
            self.link.emit(AgentEvent::SessionSuccess {
                session_id: kernel.session_id,
                kernel_id: kernel.id,
                reason: "task-done".into(),
                exit_code: 0,
            });
        } else {
            self.link.emit(AgentEvent::SessionFailure {
                session_id: kernel.session_id,
                kernel_id: kernel.id,
                reason: "task-failed".into(),
                exit_code: code,
            });
        }
    }

    /// Stops a kernel and waits for the process to exit. An unknown kernel is reported as
    /// `already-terminated`, so the manager's view converges.
    pub async fn destroy(
        &self,
        kernel_id: Uuid,
        reason: &str,
        suppress_events: bool,
    ) -> Result<(), RemoteError> {
        let Ok(k) = self.kernel(kernel_id) else {
            if !suppress_events {
                self.link.emit(AgentEvent::KernelTerminated {
                    kernel_id,
                    session_id: Uuid::nil(),
                    reason: "already-terminated".into(),
                    exit_code: -1,
                });
            }
            return Ok(());
        };
        k.terminate(reason, suppress_events, self.cfg.destroy_grace)
            .await;
        Ok(())
    }

    async fn destroy_all(&self, reason: &str) -> Vec<Uuid> {
        let kernels = self.kernel_list();
        let ids = kernels.iter().map(|k| k.id).collect();
        futures::future::join_all(
            kernels
                .iter()
                .map(|k| k.terminate(reason, false, self.cfg.destroy_grace)),
        )
        .await;
        ids
    }

    async fn restart(
        self: &Arc<Self>,
        creation_id: &str,
        session_id: Uuid,
        kernel_id: Uuid,
    ) -> Result<Value, RemoteError> {
        let old = self.kernel(kernel_id)?;
        old.terminate(RESTARTING, true, self.cfg.destroy_grace)
            .await;
        let req = CreateKernels {
            creation_id: creation_id.to_string(),
            session_id,
            session_name: old
                .env
                .iter()
                .find(|(k, _)| k == "BACKENDAI_SESSION_NAME")
                .map(|(_, v)| v.clone()),
            kernels: vec![old.config.clone()],
            cluster_info: cluster_info_from_env(&old.env),
        };
        let created = self.start_kernel(&req, &old.config, true).await?;
        serde_json::to_value(KernelRestarted {
            container_id: created.container_id,
            repl_in_port: 0,
            repl_out_port: 0,
            stdin_port: 0,
            stdout_port: 0,
            service_ports: Vec::new(),
        })
        .map_err(|e| RemoteError::internal(e.to_string()))
    }

    async fn execute(&self, p: ExecuteParams) -> Result<ExecResult, RemoteError> {
        let kernel = self.kernel(p.kernel_id)?;
        let flush = Duration::from_millis(
            p.flush_timeout_ms
                .unwrap_or(client::DEFAULT_FLUSH_TIMEOUT_MS),
        );
        match p.mode {
            ExecMode::Query | ExecMode::Batch => {
                let run_id = kernel.start_run(p.mode, p.run_id, &p.code, &p.opts).await?;
                kernel.collect(&run_id, flush).await
            }
            ExecMode::Continue => {
                let run_id = p
                    .run_id
                    .or_else(|| kernel.current_run())
                    .ok_or_else(|| RemoteError::not_found("nothing to continue"))?;
                kernel.collect(&run_id, flush).await
            }
            ExecMode::Input => {
                let run_id = kernel.feed_input(p.run_id.as_deref(), &p.code).await?;
                kernel.collect(&run_id, flush).await
            }
            ExecMode::Interrupt => {
                kernel.interrupt();
                Ok(ExecResult {
                    run_id: p.run_id,
                    status: "finished".into(),
                    console: Vec::new(),
                    exit_code: None,
                    options: Some(json!({})),
                    files: Vec::new(),
                })
            }
            ExecMode::Complete => {
                let items = kernel.complete(&p.code, Duration::from_secs(2)).await;
                Ok(ExecResult {
                    run_id: p.run_id,
                    status: "finished".into(),
                    console: vec![("completion".into(), json!(items))],
                    exit_code: None,
                    options: Some(json!({})),
                    files: Vec::new(),
                })
            }
        }
    }
}

impl RpcHandler for Agent {
    fn handle(self: Arc<Self>, call: RpcCall) -> BoxFuture<'static, Result<Value, RemoteError>> {
        Box::pin(self.dispatch(call))
    }
}

fn container_id(k: &Kernel) -> String {
    format!("proc-{}", k.pid)
}

fn cluster_info_from_env(env: &[(String, String)]) -> ClusterInfo {
    let get = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    ClusterInfo {
        mode: "single-node".into(),
        size: get("BACKENDAI_CLUSTER_SIZE").parse().unwrap_or(1),
        replicas: get("BACKENDAI_CLUSTER_REPLICAS")
            .split(',')
            .filter_map(|p| p.split_once(':'))
            .filter_map(|(r, n)| Some((r.to_string(), n.parse().ok()?)))
            .collect(),
        hosts: get("BACKENDAI_CLUSTER_HOSTS")
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect(),
        network_name: None,
        ssh_keypair: None,
    }
}

/// A tar archive of `path` (as the original's `download_file` returns).
async fn download(path: &Path) -> Result<Vec<u8>, RemoteError> {
    if tokio::fs::symlink_metadata(path).await.is_err() {
        return Err(RemoteError::not_found("The file is not found."));
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(RemoteError::invalid(
            "cannot download the work directory itself",
        ));
    };
    let out = tokio::process::Command::new("tar")
        .arg("-cf")
        .arg("-")
        .arg("-C")
        .arg(parent)
        .arg(name)
        .output()
        .await
        .map_err(|e| RemoteError::internal(format!("cannot run tar: {e}")))?;
    if !out.status.success() {
        return Err(RemoteError::internal(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(out.stdout)
}

/// `list_files` in the original's shape: `files` is a JSON string of
/// `[{mode, size, ctime, mtime, atime, filename}]` with `ls`-style modes.
fn list_files(work: &Path, target: &Path) -> FileList {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let rel = target.strip_prefix(work).unwrap_or(Path::new(""));
    let abspath = Path::new("/home/work").join(rel).display().to_string();
    let mut files = Vec::new();
    let mut errors = String::new();
    match std::fs::read_dir(target) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let Ok(md) = entry.metadata() else { continue };
                files.push(json!({
                    "mode": mode_string(md.file_type().is_dir(), md.file_type().is_symlink(), md.permissions().mode()),
                    "size": md.len(),
                    "ctime": md.ctime() as f64 + md.ctime_nsec() as f64 / 1e9,
                    "mtime": md.mtime() as f64 + md.mtime_nsec() as f64 / 1e9,
                    "atime": md.atime() as f64 + md.atime_nsec() as f64 / 1e9,
                    "filename": entry.file_name().to_string_lossy(),
                }));
            }
        }
        Err(e) => errors = format!("{}: {e}", abspath),
    }
    FileList {
        files: serde_json::to_string(&files).unwrap_or_else(|_| "[]".into()),
        errors,
        abspath,
    }
}

fn mode_string(dir: bool, link: bool, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(if dir {
        'd'
    } else if link {
        'l'
    } else {
        '-'
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn modes() {
        assert_eq!(super::mode_string(false, false, 0o644), "-rw-r--r--");
        assert_eq!(super::mode_string(true, false, 0o755), "drwxr-xr-x");
    }
}
