//! The agent's outgoing side: the current [`EventPublisher`] (replaced on every
//! reconnect) and an ordered outbox for lifecycle events.
//!
//! Lifecycle events go through one queue drained by one task, which publishes each event
//! with a broker confirm and retries it until it is confirmed: events of one agent reach
//! the manager in the order they happened (e.g. every `kernel_terminated` before
//! `agent_terminated`), and an event raised while the broker is unreachable waits instead
//! of being lost. Heartbeats and stats bypass the outbox: they are only worth sending now.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use bai_agent_proto::{AgentEvent, AgentMessage, EventPublisher};

pub struct Link {
    agent_id: String,
    publisher: RwLock<Option<EventPublisher>>,
    outbox: mpsc::UnboundedSender<AgentMessage>,
    pending: AtomicUsize,
    drained: Notify,
    muted: AtomicBool,
}

impl Link {
    pub fn new(agent_id: &str) -> (Arc<Self>, mpsc::UnboundedReceiver<AgentMessage>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Self {
                agent_id: agent_id.to_string(),
                publisher: RwLock::new(None),
                outbox: tx,
                pending: AtomicUsize::new(0),
                drained: Notify::new(),
                muted: AtomicBool::new(false),
            }),
            rx,
        )
    }

    pub fn set_publisher(&self, p: Option<EventPublisher>) {
        if let Ok(mut g) = self.publisher.write() {
            *g = p;
        }
    }

    fn publisher(&self) -> Option<EventPublisher> {
        self.publisher
            .read()
            .ok()
            .and_then(|g| g.clone())
            .filter(EventPublisher::is_connected)
    }

    /// Stops every outgoing message at once (crash simulation).
    pub fn mute(&self) {
        self.muted.store(true, Ordering::Release);
    }

    pub fn is_muted(&self) -> bool {
        self.muted.load(Ordering::Acquire)
    }

    /// Queues a lifecycle event (delivered in order, retried until confirmed).
    pub fn emit(&self, event: AgentEvent) {
        if self.is_muted() {
            return;
        }
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self
            .outbox
            .send(AgentMessage::new(&self.agent_id, event))
            .is_err()
        {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Sends a heartbeat or stats message now, or drops it when not connected.
    pub async fn send_now(&self, event: AgentEvent) {
        if self.is_muted() {
            return;
        }
        if let Some(p) = self.publisher() {
            if let Err(e) = p.publish(&self.agent_id, event).await {
                tracing::debug!(error = %format!("{e:#}"), "could not send a heartbeat");
            }
        }
    }

    /// Drains the outbox until `stop`.
    pub async fn run_outbox(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<AgentMessage>,
        stop: CancellationToken,
    ) {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
            };
            let mut wait = Duration::from_millis(100);
            loop {
                if self.is_muted() {
                    break;
                }
                match self.publisher() {
                    Some(p) => match p.publish_message(&msg).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(event = msg.body.name(), error = %format!("{e:#}"), "event not confirmed; retrying")
                        }
                    },
                    None => tracing::debug!(event = msg.body.name(), "not connected; event waits"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.drained.notify_waiters();
            }
        }
    }

    /// Waits until every queued event is confirmed, at most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.pending.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}
