//! The command bus on NATS JetStream.
//!
//! Three streams (names carry the configured prefix):
//! * `CMD`: work-queue retention, file storage, 2-minute duplicate window. Commands are
//!   published with `Nats-Msg-Id` = command id, so a re-sent request is stored once. Workers
//!   share one durable pull consumer, so each command goes to one worker at a time and is
//!   redelivered if that worker dies before acking.
//! * `EVENTS`: limits retention (max age/bytes) for SSE subscribers and replay by sequence.
//! * `TRIGGER`: the coalescing layer, one subject per scaling group holding at most one
//!   pending message (discard-new-per-subject), see [`Bus::request_schedule`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use backoff::backoff::Backoff;
use futures::StreamExt;
use tokio::sync::oneshot;
use uuid::Uuid;

use bai_core::config::NatsConfig;
use bai_core::error::ServiceError;
use bai_core::metrics::prometheus::IntCounterVec;

use crate::command::{Command, CommandOutcome, CommandReply};
use crate::envelope::Envelope;
use crate::event::Event;
use crate::subjects::Subjects;

/// Name of the durable consumer all workers share on the CMD stream.
pub const WORKERS_CONSUMER: &str = "workers";
/// Name of the durable consumer all schedulers share on the TRIGGER stream.
pub const SCHEDULER_CONSUMER: &str = "scheduler";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("command bus unavailable: {0}")]
    Unavailable(String),
    #[error("cannot encode message: {0}")]
    Encode(#[from] serde_json::Error),
}

type Pending = Arc<Mutex<HashMap<Uuid, oneshot::Sender<CommandReply>>>>;

/// Tunables of the streams and consumers.
#[derive(Clone, Debug)]
pub struct BusOptions {
    pub duplicate_window: Duration,
    pub events_max_age: Duration,
    pub events_max_bytes: i64,
    /// How long a worker may hold a command before it is redelivered to another worker.
    pub ack_wait: Duration,
    /// Deliveries before a failing command is terminated with a `command_failed` event.
    pub max_deliver: i64,
}

impl Default for BusOptions {
    fn default() -> Self {
        Self {
            duplicate_window: Duration::from_secs(120),
            events_max_age: Duration::from_secs(24 * 3600),
            events_max_bytes: 1 << 30,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
        }
    }
}

#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    originator: String,
    reply_prefix: String,
    pending: Pending,
    options: BusOptions,
    replicas: usize,
    metrics: BusMetrics,
}

/// What this process published on the bus, for `/metrics`. Clones of a [`Bus`] share it;
/// register it once per process with [`BusMetrics::register`].
#[derive(Clone)]
pub struct BusMetrics {
    /// Commands stored in CMD, by kind and outcome (`stored`, `duplicate`, `error`).
    pub commands_published: IntCounterVec,
    /// Command round trips by kind and outcome (`completed`, `accepted`: no reply in time).
    pub command_replies: IntCounterVec,
    /// Events published, by kind.
    pub events_published: IntCounterVec,
    /// Scheduling requests by outcome (`queued`, `coalesced`, `error`).
    pub schedule_requests: IntCounterVec,
}

impl BusMetrics {
    fn new() -> Self {
        use bai_core::metrics::counter_vec;
        Self {
            commands_published: counter_vec(
                "bai_commands_published_total",
                "Commands published to the CMD stream by kind and outcome",
                &["kind", "outcome"],
            ),
            command_replies: counter_vec(
                "bai_command_round_trips_total",
                "Command round trips by kind and outcome (completed, or accepted without a reply in time)",
                &["kind", "outcome"],
            ),
            events_published: counter_vec(
                "bai_events_published_total",
                "Events published to the EVENTS stream by kind",
                &["kind"],
            ),
            schedule_requests: counter_vec(
                "bai_schedule_requests_total",
                "Scheduling requests by outcome (queued, coalesced into a pending one, error)",
                &["outcome"],
            ),
        }
    }

    pub fn register(&self, registry: &bai_core::metrics::prometheus::Registry) {
        use bai_core::metrics::register;
        register(registry, self.commands_published.clone());
        register(registry, self.command_replies.clone());
        register(registry, self.events_published.clone());
        register(registry, self.schedule_requests.clone());
    }
}

impl Bus {
    /// Connects (retrying for up to `timeout`), creates or updates the streams, and starts
    /// this process's reply inbox.
    pub async fn connect(
        cfg: &NatsConfig,
        originator: &str,
        options: BusOptions,
        timeout: Duration,
    ) -> Result<Self, ServiceError> {
        let unreachable = |attempts, message: String| ServiceError::Unreachable {
            service: "NATS",
            addr: cfg.url.clone(),
            attempts,
            message,
        };
        let mut policy = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(Duration::from_millis(200))
            .with_max_interval(Duration::from_secs(2))
            .with_max_elapsed_time(Some(timeout))
            .build();
        let mut attempts = 0;
        let client = loop {
            attempts += 1;
            // `retry_on_initial_connect` is off so start-up fails visibly; after that the
            // client reconnects on its own (unbounded), which is what a long-lived worker wants.
            match async_nats::ConnectOptions::new()
                .name(originator)
                .max_reconnects(None)
                .connect(&cfg.url)
                .await
            {
                Ok(c) => break c,
                Err(e) => match policy.next_backoff() {
                    Some(wait) => {
                        tracing::warn!(error = %e, url = %cfg.url, "NATS not reachable yet; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(unreachable(attempts, e.to_string())),
                },
            }
        };
        let js = jetstream::new(client.clone());
        let subjects = Subjects::new(&cfg.prefix);
        let instance = format!("{}-{}", originator, Uuid::new_v4().simple());
        let bus = Self {
            reply_prefix: subjects.reply_prefix(&instance),
            client,
            js,
            subjects,
            originator: originator.to_string(),
            pending: Arc::default(),
            options,
            replicas: cfg.replicas.max(1),
            metrics: BusMetrics::new(),
        };
        bus.ensure_streams()
            .await
            .map_err(|e| unreachable(attempts, format!("JetStream: {e:#}")))?;
        bus.start_reply_mux()
            .await
            .map_err(|e| unreachable(attempts, format!("reply inbox: {e:#}")))?;
        Ok(bus)
    }

    /// Creates the three streams, or updates them to the current configuration.
    pub async fn ensure_streams(&self) -> anyhow::Result<()> {
        let s = &self.subjects;
        let o = &self.options;
        self.js
            .create_or_update_stream(stream::Config {
                name: s.cmd_stream(),
                subjects: vec![s.cmd_all()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: o.duplicate_window,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await?;
        self.js
            .create_or_update_stream(stream::Config {
                name: s.events_stream(),
                subjects: vec![s.events_all()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_age: o.events_max_age,
                max_bytes: o.events_max_bytes,
                duplicate_window: o.duplicate_window,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await?;
        self.js
            .create_or_update_stream(stream::Config {
                name: s.trigger_stream(),
                subjects: vec![s.trigger_all()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                // The coalescing guarantee: at most one pending trigger per subject (= per
                // scaling group); further publishes are refused until it is consumed.
                max_messages_per_subject: 1,
                discard: stream::DiscardPolicy::New,
                discard_new_per_subject: true,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// One wildcard subscription per process demultiplexes every reply to its waiting
    /// caller (a map of oneshots), instead of one SUB/UNSUB round per command.
    async fn start_reply_mux(&self) -> anyhow::Result<()> {
        let mut sub = self
            .client
            .subscribe(format!("{}.*", self.reply_prefix))
            .await?;
        let pending = self.pending.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(id) = msg
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|t| Uuid::parse_str(t).ok())
                else {
                    continue;
                };
                let waiter = pending.lock().ok().and_then(|mut p| p.remove(&id));
                if let Some(tx) = waiter {
                    match serde_json::from_slice::<CommandReply>(&msg.payload) {
                        Ok(reply) => {
                            let _ = tx.send(reply);
                        }
                        Err(e) => tracing::warn!(error = %e, "undecodable command reply"),
                    }
                }
            }
        });
        Ok(())
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
    pub fn originator(&self) -> &str {
        &self.originator
    }
    pub fn options(&self) -> &BusOptions {
        &self.options
    }

    pub fn metrics(&self) -> &BusMetrics {
        &self.metrics
    }

    /// Stores a command in CMD (deduplicated by its id) without waiting for a worker.
    pub async fn enqueue_command(&self, env: &Envelope<Command>) -> Result<bool, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", env.id.to_string().as_str());
        if let Some(rid) = &env.request_id {
            // Also in the headers, so `nats stream view` shows it without decoding the body.
            headers.insert("X-Request-Id", rid.as_str());
        }
        let res = async {
            self.js
                .publish_with_headers(self.subjects.cmd(&env.kind), headers, env.to_bytes()?)
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))?
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))
        }
        .await;
        let outcome = match &res {
            Ok(ack) if ack.duplicate => "duplicate",
            Ok(_) => "stored",
            Err(_) => "error",
        };
        self.metrics
            .commands_published
            .with_label_values(&[env.kind.as_str(), outcome])
            .inc();
        Ok(!res?.duplicate)
    }

    /// Publishes a command and waits up to `deadline` for the worker's reply.
    pub async fn publish_command(
        &self,
        cmd: Command,
        deadline: Duration,
    ) -> Result<CommandOutcome, BusError> {
        self.publish_command_with_id(Uuid::new_v4(), None, cmd, deadline)
            .await
    }

    /// Like [`Bus::publish_command`] with a caller-chosen id (derived from the request, so
    /// a retried request is the same command) and an optional request id for tracing.
    pub async fn publish_command_with_id(
        &self,
        id: Uuid,
        request_id: Option<String>,
        cmd: Command,
        deadline: Duration,
    ) -> Result<CommandOutcome, BusError> {
        let mut env = Envelope::new(id, self.originator.clone(), cmd);
        env.request_id = request_id;
        env.reply_to = Some(format!("{}.{}", self.reply_prefix, id.simple()));
        let replies = &self.metrics.command_replies;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, tx);
        }
        // The waiter is registered before publishing, so a fast worker cannot reply into
        // the void.
        let stored = self.enqueue_command(&env).await;
        if let Err(e) = stored {
            self.forget(id);
            return Err(e);
        }
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(reply)) => {
                replies
                    .with_label_values(&[env.kind.as_str(), "completed"])
                    .inc();
                Ok(CommandOutcome::Completed(reply))
            }
            _ => {
                self.forget(id);
                replies
                    .with_label_values(&[env.kind.as_str(), "accepted"])
                    .inc();
                Ok(CommandOutcome::Accepted { command_id: id })
            }
        }
    }

    fn forget(&self, id: Uuid) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
    }

    /// Publishes a domain event to EVENTS; its id dedups repeats within the window.
    pub async fn publish_event(&self, event: Event) -> Result<u64, BusError> {
        self.publish_event_with_id(Uuid::new_v4(), event).await
    }

    pub async fn publish_event_with_id(&self, id: Uuid, event: Event) -> Result<u64, BusError> {
        let subject = self.subjects.event(&event);
        let env = Envelope::new(id, self.originator.clone(), event);
        self.metrics
            .events_published
            .with_label_values(&[env.kind.as_str()])
            .inc();
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.to_string().as_str());
        let ack = self
            .js
            .publish_with_headers(subject, headers, env.to_bytes()?)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(ack.sequence)
    }

    /// The coalescing layer: asks for a scheduling pass over `scaling_group`.
    ///
    /// Returns `true` when a new trigger was queued and `false` when one was already
    /// pending (the request is folded into it). A burst of N requests therefore costs at
    /// most one pending pass per group, plus one more if requests arrive while a pass runs
    /// (the consumer acks — removes — the trigger *before* the pass reads state, so a
    /// request during the pass queues a fresh trigger and no wake-up is lost).
    pub async fn request_schedule(&self, scaling_group: &str) -> Result<bool, BusError> {
        let subject = self.subjects.trigger_schedule(scaling_group);
        let res = self
            .js
            .publish(subject, bytes::Bytes::new())
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?
            .await;
        let (outcome, result) = match res {
            Ok(_) => ("queued", Ok(true)),
            Err(e) if is_per_subject_limit(&e) => ("coalesced", Ok(false)),
            Err(e) => ("error", Err(BusError::Unavailable(e.to_string()))),
        };
        self.metrics
            .schedule_requests
            .with_label_values(&[outcome])
            .inc();
        result
    }

    /// The workers' shared durable pull consumer on CMD.
    pub async fn command_consumer(&self) -> anyhow::Result<consumer::PullConsumer> {
        let stream = self.js.get_stream(self.subjects.cmd_stream()).await?;
        let c = stream
            .get_or_create_consumer(
                WORKERS_CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(WORKERS_CONSUMER.into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.options.ack_wait,
                    // Unlimited on the server: the worker enforces `max_deliver` itself so
                    // that a give-up is always visible (event + log), never a silent drop.
                    max_deliver: -1,
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await?;
        Ok(c)
    }

    /// The schedulers' shared durable pull consumer on TRIGGER.
    pub async fn trigger_consumer(&self) -> anyhow::Result<consumer::PullConsumer> {
        let stream = self.js.get_stream(self.subjects.trigger_stream()).await?;
        let c = stream
            .get_or_create_consumer(
                SCHEDULER_CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(SCHEDULER_CONSUMER.into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.options.ack_wait,
                    ..Default::default()
                },
            )
            .await?;
        Ok(c)
    }

    /// Sends a reply to the subject a command asked for (core NATS, fire-and-forget: a
    /// caller that gave up simply is not listening any more).
    pub async fn reply(&self, reply_to: &str, reply: &CommandReply) -> anyhow::Result<()> {
        self.client
            .publish(reply_to.to_string(), serde_json::to_vec(reply)?.into())
            .await?;
        Ok(())
    }

    /// Deletes this prefix's streams (tests and `bus reset`).
    pub async fn delete_streams(&self) -> anyhow::Result<()> {
        for name in [
            self.subjects.cmd_stream(),
            self.subjects.events_stream(),
            self.subjects.trigger_stream(),
        ] {
            let _ = self.js.delete_stream(name).await;
        }
        Ok(())
    }
}

fn is_per_subject_limit(e: &async_nats::jetstream::context::PublishError) -> bool {
    let text = format!("{e} {:?}", e);
    text.contains("maximum messages per subject") || text.contains("10077")
}
