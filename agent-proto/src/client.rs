//! [`AgentRpcClient`]: the manager's side of agent RPC.
//!
//! * **Transport.** A request is published to the agent's durable queue
//!   (`{prefix}.agent.{agent_id}.rpc`) through the default exchange, with a fresh
//!   correlation id and `reply_to = amq.rabbitmq.reply-to` (RabbitMQ *direct reply-to*:
//!   no reply queue is declared; replies come back on the channel that published).
//!   One channel per client carries every call; a reader task routes replies to the
//!   waiting callers by correlation id.
//! * **Deadlines.** Every call has a timeout. The request carries it twice: as the AMQP
//!   per-message `expiration` (so the broker drops a call that a dead agent never picked
//!   up, and a restarted agent does not execute stale calls) and as an absolute
//!   `deadline_ms` in the body (so an agent that picks it up late drops it too). The
//!   caller stops waiting at the same deadline and gets [`RpcError::Timeout`].
//! * **Failing fast.** Before publishing, the client checks that the queue exists and has
//!   a consumer (a passive `queue.declare` on a separate probe channel, cached for
//!   `consumer_check_ttl` per agent), so a call to an agent that is down fails at once
//!   with [`RpcError::NoConsumer`] / [`RpcError::NoSuchAgent`] instead of hanging until
//!   its deadline. Requests are also published `mandatory` on a channel in confirm mode,
//!   which catches a queue deleted between check and publish. What no check can see — a
//!   consumer that exists but hangs, or an agent that dies after the check — is covered by
//!   the deadline: the worker waits at most the call's timeout, never longer.
//! * **Reconnects.** If the connection drops, in-flight calls fail with
//!   [`RpcError::Transport`] and the next call reconnects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::amqp::{self, now_ms};
use crate::messages::*;
use crate::names::Names;

/// The pseudo-queue of RabbitMQ's direct reply-to.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Errors of an agent call, each saying which agent and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(
        "agent {agent_id} has no RPC queue `{queue}`: it never started with this prefix, \
         or its queue was deleted"
    )]
    NoSuchAgent { agent_id: String, queue: String },
    #[error("agent {agent_id} is not consuming its RPC queue `{queue}`: the agent is down or restarting")]
    NoConsumer { agent_id: String, queue: String },
    #[error(
        "agent {agent_id} did not answer `{method}` within {timeout_ms} ms \
         (the request expires unprocessed in the agent's queue)"
    )]
    Timeout {
        agent_id: String,
        method: &'static str,
        timeout_ms: u64,
    },
    #[error("agent {agent_id} failed `{method}`: {error}")]
    Remote {
        agent_id: String,
        method: &'static str,
        error: RemoteError,
    },
    #[error("agent {agent_id} sent an undecodable reply to `{method}`: {message}")]
    BadReply {
        agent_id: String,
        method: &'static str,
        message: String,
    },
    #[error("agent RPC transport (RabbitMQ): {0}")]
    Transport(String),
}

impl RpcError {
    /// Worth retrying later (the agent may come back, the broker may reconnect).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RpcError::NoConsumer { .. } | RpcError::Timeout { .. } | RpcError::Transport(_)
        )
    }
}

/// Per-method deadlines. The original set none on most calls (orchestration.md §5.1);
/// here every call is bounded.
#[derive(Clone, Debug)]
pub struct RpcTimeouts {
    pub ping: Duration,
    pub create_kernels: Duration,
    pub destroy_kernel: Duration,
    pub restart_kernel: Duration,
    /// Added to the execute call's flush timeout.
    pub execute: Duration,
    pub interrupt_kernel: Duration,
    pub get_completions: Duration,
    pub get_logs: Duration,
    pub upload_file: Duration,
    pub download_file: Duration,
    pub list_files: Duration,
    pub reset_agent: Duration,
}

impl Default for RpcTimeouts {
    fn default() -> Self {
        Self {
            ping: Duration::from_secs(5),
            create_kernels: Duration::from_secs(120),
            destroy_kernel: Duration::from_secs(30),
            restart_kernel: Duration::from_secs(60),
            execute: Duration::from_secs(30),
            interrupt_kernel: Duration::from_secs(10),
            get_completions: Duration::from_secs(5),
            get_logs: Duration::from_secs(30),
            upload_file: Duration::from_secs(60),
            download_file: Duration::from_secs(60),
            list_files: Duration::from_secs(30),
            reset_agent: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RpcClientOptions {
    /// Check that the agent's queue has a consumer before publishing (fail fast).
    pub check_consumers: bool,
    /// How long a positive consumer check is trusted for one agent.
    pub consumer_check_ttl: Duration,
    /// How long to try (re)connecting to RabbitMQ before a call fails.
    pub connect_timeout: Duration,
    pub timeouts: RpcTimeouts,
}

impl Default for RpcClientOptions {
    fn default() -> Self {
        Self {
            check_consumers: true,
            consumer_check_ttl: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            timeouts: RpcTimeouts::default(),
        }
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

struct Session {
    conn: Arc<Connection>,
    channel: Channel,
    probe: tokio::sync::Mutex<Option<Channel>>,
    pending: Pending,
    alive: Arc<AtomicBool>,
}

impl Session {
    fn usable(&self) -> bool {
        self.alive.load(Ordering::Acquire)
            && self.conn.status().connected()
            && self.channel.status().connected()
    }
}

struct Inner {
    url: String,
    name: String,
    names: Names,
    opts: RpcClientOptions,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// Agent id → when its queue was last seen with a consumer.
    consumers_seen: Mutex<HashMap<String, Instant>>,
}

/// Typed RPC to agents. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct AgentRpcClient {
    inner: Arc<Inner>,
}

/// Removes a pending call's entry however the call ends (reply, timeout, cancellation).
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.id);
        }
    }
}

impl AgentRpcClient {
    /// Connects now (so a misconfigured URL fails at start-up, not on the first call).
    pub async fn connect(
        url: &str,
        prefix: &str,
        name: &str,
        opts: RpcClientOptions,
    ) -> anyhow::Result<Self> {
        let client = Self {
            inner: Arc::new(Inner {
                url: url.to_string(),
                name: name.to_string(),
                names: Names::new(prefix),
                opts,
                session: tokio::sync::Mutex::new(None),
                consumers_seen: Mutex::new(HashMap::new()),
            }),
        };
        client.session().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(client)
    }

    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    pub fn options(&self) -> &RpcClientOptions {
        &self.inner.opts
    }

    async fn session(&self) -> Result<Arc<Session>, RpcError> {
        let mut guard = self.inner.session.lock().await;
        if let Some(s) = guard.as_ref() {
            if s.usable() {
                return Ok(s.clone());
            }
            tracing::info!("agent RPC connection lost; reconnecting");
        }
        let s = Arc::new(
            self.open_session()
                .await
                .map_err(|e| RpcError::Transport(format!("{e:#}")))?,
        );
        *guard = Some(s.clone());
        Ok(s)
    }

    async fn open_session(&self) -> anyhow::Result<Session> {
        let conn = amqp::connect(
            &self.inner.url,
            &self.inner.name,
            self.inner.opts.connect_timeout,
        )
        .await?;
        let channel = conn.create_channel().await?;
        // Confirm mode: the publish future resolves once the broker has routed the
        // request, and carries the request back if it was unroutable (mandatory).
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut replies = channel
            .basic_consume(
                DIRECT_REPLY_TO,
                "",
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        {
            let pending = pending.clone();
            let alive = alive.clone();
            tokio::spawn(async move {
                while let Some(delivery) = replies.next().await {
                    let delivery = match delivery {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::warn!(error = %e, "agent RPC reply stream failed");
                            break;
                        }
                    };
                    let Some(corr) = delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(|c| c.to_string())
                    else {
                        tracing::warn!("agent RPC reply without correlation id; dropped");
                        continue;
                    };
                    let waiter = pending.lock().ok().and_then(|mut p| p.remove(&corr));
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(delivery.data);
                        }
                        // The caller gave up (timeout) before the agent answered.
                        None => {
                            tracing::debug!(correlation_id = %corr, "late agent RPC reply dropped")
                        }
                    }
                }
                alive.store(false, Ordering::Release);
                // Dropping the senders wakes every waiting caller with a transport error.
                if let Ok(mut p) = pending.lock() {
                    p.clear();
                }
            });
        }
        Ok(Session {
            conn,
            channel,
            probe: tokio::sync::Mutex::new(None),
            pending,
            alive,
        })
    }

    /// Fails fast when the agent's queue is missing or nobody consumes it.
    async fn check_consumer(
        &self,
        session: &Session,
        agent_id: &str,
        queue: &str,
    ) -> Result<(), RpcError> {
        let ttl = self.inner.opts.consumer_check_ttl;
        if let Ok(seen) = self.inner.consumers_seen.lock() {
            if seen.get(agent_id).is_some_and(|t| t.elapsed() < ttl) {
                return Ok(());
            }
        }
        let mut probe = session.probe.lock().await;
        if !probe.as_ref().is_some_and(|c| c.status().connected()) {
            *probe = Some(
                session
                    .conn
                    .create_channel()
                    .await
                    .map_err(|e| RpcError::Transport(e.to_string()))?,
            );
        }
        let Some(ch) = probe.as_ref() else {
            return Err(RpcError::Transport("no probe channel".into()));
        };
        let res = ch
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match res {
            Ok(q) if q.consumer_count() > 0 => {
                if let Ok(mut seen) = self.inner.consumers_seen.lock() {
                    seen.insert(agent_id.to_string(), Instant::now());
                }
                Ok(())
            }
            Ok(_) => {
                self.forget_consumer(agent_id);
                Err(RpcError::NoConsumer {
                    agent_id: agent_id.to_string(),
                    queue: queue.to_string(),
                })
            }
            Err(e) => {
                // The broker closes the channel after a failed passive declare.
                *probe = None;
                self.forget_consumer(agent_id);
                if amqp::is_not_found(&e) {
                    Err(RpcError::NoSuchAgent {
                        agent_id: agent_id.to_string(),
                        queue: queue.to_string(),
                    })
                } else {
                    Err(RpcError::Transport(e.to_string()))
                }
            }
        }
    }

    fn forget_consumer(&self, agent_id: &str) {
        if let Ok(mut seen) = self.inner.consumers_seen.lock() {
            seen.remove(agent_id);
        }
    }

    /// Sends one call and waits for its reply, at most `timeout` in total.
    pub async fn call(
        &self,
        agent_id: &str,
        call: RpcCall,
        timeout: Duration,
    ) -> Result<Value, RpcError> {
        let method = call.method();
        let started = Instant::now();
        let timeout_ms = timeout.as_millis().max(1) as u64;
        let timed_out = || RpcError::Timeout {
            agent_id: agent_id.to_string(),
            method,
            timeout_ms,
        };
        let queue = self.inner.names.rpc_queue(agent_id);
        let session = tokio::time::timeout(timeout, self.session())
            .await
            .map_err(|_| timed_out())??;
        if self.inner.opts.check_consumers {
            tokio::time::timeout(
                timeout.saturating_sub(started.elapsed()),
                self.check_consumer(&session, agent_id, &queue),
            )
            .await
            .map_err(|_| timed_out())??;
        }
        let correlation_id = Uuid::new_v4().simple().to_string();
        let request = RpcRequest {
            v: PROTOCOL_VERSION,
            deadline_ms: now_ms() + timeout_ms as i64,
            request_id: crate::request_id::current(),
            call,
        };
        let body = serde_json::to_vec(&request)
            .map_err(|e| RpcError::Transport(format!("cannot encode request: {e}")))?;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = session.pending.lock() {
            p.insert(correlation_id.clone(), tx);
        }
        let _guard = PendingGuard {
            pending: &session.pending,
            id: correlation_id.clone(),
        };
        // The remaining budget becomes the message's TTL: the broker drops the request
        // when the caller has stopped waiting for it.
        let remaining = timeout.saturating_sub(started.elapsed());
        let props = BasicProperties::default()
            .with_correlation_id(ShortString::from(correlation_id.clone()))
            .with_reply_to(ShortString::from(DIRECT_REPLY_TO))
            .with_expiration(ShortString::from(remaining.as_millis().max(1).to_string()))
            .with_content_type(ShortString::from("application/json"))
            .with_type(ShortString::from(method))
            .with_timestamp(now_ms().max(0) as u64 / 1000);
        let publish = async {
            let confirm = session
                .channel
                .basic_publish(
                    "",
                    &queue,
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    props,
                )
                .await?;
            confirm.await
        };
        let confirmation = match tokio::time::timeout(remaining, publish).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => {
                session.alive.store(false, Ordering::Release);
                return Err(RpcError::Transport(format!(
                    "cannot publish `{method}` to {agent_id}: {e}"
                )));
            }
            Ok(Ok(c)) => c,
        };
        if confirmation.is_nack() {
            return Err(RpcError::Transport(format!(
                "the broker refused `{method}` to {agent_id}"
            )));
        }
        if confirmation.take_message().is_some() {
            // Returned as unroutable: the queue does not exist (any more).
            self.forget_consumer(agent_id);
            return Err(RpcError::NoSuchAgent {
                agent_id: agent_id.to_string(),
                queue,
            });
        }
        let data = match tokio::time::timeout(timeout.saturating_sub(started.elapsed()), rx).await {
            Err(_) => {
                // The agent may have died since the consumer check: re-check next time.
                self.forget_consumer(agent_id);
                return Err(timed_out());
            }
            Ok(Err(_)) => {
                return Err(RpcError::Transport(format!(
                    "connection lost while waiting for {agent_id} to answer `{method}`"
                )))
            }
            Ok(Ok(data)) => data,
        };
        let response: RpcResponse = decode(&data).map_err(|e| RpcError::BadReply {
            agent_id: agent_id.to_string(),
            method,
            message: e.to_string(),
        })?;
        match response.outcome {
            RpcOutcome::Ok { result } => Ok(result),
            RpcOutcome::Error(error) => Err(RpcError::Remote {
                agent_id: agent_id.to_string(),
                method,
                error,
            }),
        }
    }

    async fn call_typed<T: DeserializeOwned>(
        &self,
        agent_id: &str,
        call: RpcCall,
        timeout: Duration,
    ) -> Result<T, RpcError> {
        let method = call.method();
        let value = self.call(agent_id, call, timeout).await?;
        serde_json::from_value(value).map_err(|e| RpcError::BadReply {
            agent_id: agent_id.to_string(),
            method,
            message: e.to_string(),
        })
    }

    /// Round trip with no side effect; returns the agent's echo of `msg`.
    pub async fn ping(&self, agent_id: &str, msg: &str) -> Result<String, RpcError> {
        self.call_typed(
            agent_id,
            RpcCall::Ping {
                msg: msg.to_string(),
            },
            self.inner.opts.timeouts.ping,
        )
        .await
    }

    /// Creates all kernels of one session on the agent. Returns once every kernel has
    /// started (bootstrap done, `kernel_started` published); if one fails, the agent
    /// destroys the others of this call and the call fails.
    pub async fn create_kernels(
        &self,
        agent_id: &str,
        req: CreateKernels,
    ) -> Result<Vec<KernelCreated>, RpcError> {
        self.call_typed(
            agent_id,
            RpcCall::CreateKernels(req),
            self.inner.opts.timeouts.create_kernels,
        )
        .await
    }

    /// Stops a kernel. The agent answers once the process has exited; the exit is also
    /// reported as `kernel_terminated` (unless `suppress_events`). Destroying an unknown
    /// kernel succeeds and reports `kernel_terminated(already-terminated, -1)`.
    pub async fn destroy_kernel(
        &self,
        agent_id: &str,
        kernel_id: Uuid,
        reason: Option<&str>,
        suppress_events: bool,
    ) -> Result<(), RpcError> {
        self.call(
            agent_id,
            RpcCall::DestroyKernel {
                kernel_id,
                reason: reason.map(str::to_string),
                suppress_events,
            },
            self.inner.opts.timeouts.destroy_kernel,
        )
        .await
        .map(|_| ())
    }

    pub async fn restart_kernel(
        &self,
        agent_id: &str,
        creation_id: &str,
        session_id: Uuid,
        kernel_id: Uuid,
        updated_config: Value,
    ) -> Result<KernelRestarted, RpcError> {
        self.call_typed(
            agent_id,
            RpcCall::RestartKernel {
                creation_id: creation_id.to_string(),
                session_id,
                kernel_id,
                updated_config,
            },
            self.inner.opts.timeouts.restart_kernel,
        )
        .await
    }

    /// Runs code (`query`, `batch`), collects more output (`continue`), feeds input
    /// (`input`), interrupts (`interrupt`) or completes (`complete`). The deadline is the
    /// execute timeout plus the flush timeout.
    pub async fn execute(
        &self,
        agent_id: &str,
        params: ExecuteParams,
    ) -> Result<ExecResult, RpcError> {
        let flush =
            Duration::from_millis(params.flush_timeout_ms.unwrap_or(DEFAULT_FLUSH_TIMEOUT_MS));
        let timeout = self.inner.opts.timeouts.execute + flush;
        self.call_typed(agent_id, RpcCall::Execute(params), timeout)
            .await
    }

    pub async fn interrupt_kernel(&self, agent_id: &str, kernel_id: Uuid) -> Result<(), RpcError> {
        self.call(
            agent_id,
            RpcCall::InterruptKernel { kernel_id },
            self.inner.opts.timeouts.interrupt_kernel,
        )
        .await
        .map(|_| ())
    }

    /// Stops the service app `service` of a kernel.
    pub async fn shutdown_service(
        &self,
        agent_id: &str,
        kernel_id: Uuid,
        service: &str,
    ) -> Result<(), RpcError> {
        self.call(
            agent_id,
            RpcCall::ShutdownService {
                kernel_id,
                service: service.to_string(),
            },
            self.inner.opts.timeouts.interrupt_kernel,
        )
        .await
        .map(|_| ())
    }

    pub async fn get_completions(
        &self,
        agent_id: &str,
        kernel_id: Uuid,
        text: &str,
        opts: Value,
    ) -> Result<Completions, RpcError> {
        self.call_typed(
            agent_id,
            RpcCall::GetCompletions {
                kernel_id,
                text: text.to_string(),
                opts,
            },
            self.inner.opts.timeouts.get_completions,
        )
        .await
    }

    /// The kernel's log (bootstrap output, runner diagnostics and console output).
    pub async fn get_logs(&self, agent_id: &str, kernel_id: Uuid) -> Result<String, RpcError> {
        #[derive(serde::Deserialize)]
        struct Logs {
            logs: String,
        }
        let l: Logs = self
            .call_typed(
                agent_id,
                RpcCall::GetLogs { kernel_id },
                self.inner.opts.timeouts.get_logs,
            )
            .await?;
        Ok(l.logs)
    }

    /// Writes `data` to `filename` (relative to the kernel's `/home/work`).
    pub async fn upload_file(
        &self,
        agent_id: &str,
        kernel_id: Uuid,
        filename: &str,
        data: &[u8],
    ) -> Result<(), RpcError> {
        self.call(
            agent_id,
            RpcCall::UploadFile {
                kernel_id,
                filename: filename.to_string(),
                data: data_encoding::BASE64.encode(data),
            },
            self.inner.opts.timeouts.upload_file,
        )
        .await
        .map(|_| ())
    }

    /// A tar archive of `filepath` (relative to `/home/work`), as the original returns.
    pub async fn download_file(
        &self,
        agent_id: &str,
        kernel_id: Uuid,
        filepath: &str,
    ) -> Result<Vec<u8>, RpcError> {
        #[derive(serde::Deserialize)]
        struct Data {
            data: String,
        }
        let d: Data = self
            .call_typed(
                agent_id,
                RpcCall::DownloadFile {
                    kernel_id,
                    filepath: filepath.to_string(),
                },
                self.inner.opts.timeouts.download_file,
            )
            .await?;
        data_encoding::BASE64
            .decode(d.data.as_bytes())
            .map_err(|e| RpcError::BadReply {
                agent_id: agent_id.to_string(),
                method: "download_file",
                message: e.to_string(),
            })
    }

    pub async fn list_files(
        &self,
        agent_id: &str,
        kernel_id: Uuid,
        path: &str,
    ) -> Result<FileList, RpcError> {
        self.call_typed(
            agent_id,
            RpcCall::ListFiles {
                kernel_id,
                path: path.to_string(),
            },
            self.inner.opts.timeouts.list_files,
        )
        .await
    }

    /// Destroys every kernel on the agent; returns their ids.
    pub async fn reset_agent(&self, agent_id: &str, reason: &str) -> Result<Vec<Uuid>, RpcError> {
        #[derive(serde::Deserialize)]
        struct Reset {
            destroyed: Vec<Uuid>,
        }
        let r: Reset = self
            .call_typed(
                agent_id,
                RpcCall::ResetAgent {
                    reason: reason.to_string(),
                },
                self.inner.opts.timeouts.reset_agent,
            )
            .await?;
        Ok(r.destroyed)
    }

    /// Closes the connection (pending calls fail with a transport error).
    pub async fn close(&self) {
        if let Some(s) = self.inner.session.lock().await.take() {
            let _ = s.conn.close(200, "client closed").await;
        }
    }
}

/// Default flush timeout of `execute` (the original's 2 s).
pub const DEFAULT_FLUSH_TIMEOUT_MS: u64 = 2_000;
