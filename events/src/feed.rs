//! Reading the EVENTS stream from a position: the building block of the SSE endpoints and
//! of anything else that waits for events (a background task's outcome, benchmarks).
//!
//! Each [`EventFeed`] is one *ordered pull* consumer: ephemeral (the server deletes it 30 s
//! after its reader goes away), no acks, memory storage, and recreated by the client from
//! the last stream sequence it saw whenever a gap or a missed heartbeat is detected — so a
//! feed never skips or repeats a message. Two properties make it cheap to hold thousands:
//!
//! * **Server-side filtering.** A feed about one session or task uses the subject filter
//!   `<p>.evt.*.<id>`; the server only sends that entity's events.
//! * **Bounded buffering.** A pull consumer receives only what it asked for, and every
//!   request is capped at [`FeedOptions::max_batch`] messages / `max_bytes` bytes (set as
//!   the consumer's `max_batch`/`max_bytes`, which the client clamps its requests to). A
//!   reader that stops reading (a slow SSE client) stops pulling; nothing piles up in this
//!   process beyond one batch, and the stream itself keeps the rest.
//!
//! [`EventHub`] multiplexes many readers over one process-wide feed; a reader that falls
//! behind catches up with a short-lived feed of its own.
//!
//! Positions are JetStream stream sequences: a reader that remembers the sequence of the
//! last message it handled resumes with [`FeedStart::After`] and sees neither a gap (within
//! the stream's retention) nor a duplicate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::bus::{Bus, BusError};
use crate::envelope::Envelope;
use crate::event::Event;

/// Where a feed starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedStart {
    /// Only events stored after the feed is created.
    New,
    /// Every retained event (for tests and tools).
    All,
    /// The events after this stream sequence (an SSE `Last-Event-ID`).
    After(u64),
}

/// Tunables of one feed.
#[derive(Clone, Debug)]
pub struct FeedOptions {
    /// Messages per pull request: the most this process buffers for one feed.
    pub max_batch: i64,
    /// Bytes per pull request.
    pub max_bytes: i64,
}

impl Default for FeedOptions {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_bytes: 256 * 1024,
        }
    }
}

/// One message of the EVENTS stream. Readers usually filter on the subject first; the
/// envelope is decoded at most once however many readers share the item ([`Self::event`]).
#[derive(Clone, Debug)]
pub struct FeedItem {
    /// The JetStream stream sequence: the SSE `id:`.
    pub sequence: u64,
    pub subject: String,
    pub payload: bytes::Bytes,
    decoded: OnceLock<Option<Envelope<Event>>>,
}

impl FeedItem {
    /// The event name, from the subject `<p>.evt.<name>.<id>`.
    pub fn name(&self) -> &str {
        let mut tokens = self.subject.rsplitn(3, '.');
        let _id = tokens.next();
        tokens.next().unwrap_or_default()
    }

    /// The session or task id the subject carries, if any.
    pub fn subject_id(&self) -> Option<Uuid> {
        self.subject
            .rsplit('.')
            .next()
            .and_then(|t| Uuid::parse_str(t).ok())
    }

    pub fn decode(&self) -> Result<Envelope<Event>, serde_json::Error> {
        Envelope::from_slice(&self.payload)
    }

    /// The decoded envelope (decoded once, shared); `None` if it cannot be decoded.
    pub fn event(&self) -> Option<&Envelope<Event>> {
        self.decoded.get_or_init(|| self.decode().ok()).as_ref()
    }

    /// An item built by hand (tests).
    pub fn new(sequence: u64, subject: String, payload: bytes::Bytes) -> Self {
        Self {
            sequence,
            subject,
            payload,
            decoded: OnceLock::new(),
        }
    }
}

/// A positioned reader of the EVENTS stream (see the module docs).
pub struct EventFeed {
    messages: pull::Ordered,
}

impl EventFeed {
    /// The next event; `None` when the connection to NATS is gone for good. Errors are
    /// reported but the feed stays usable (the ordered consumer recreates itself).
    pub async fn next(&mut self) -> Option<Result<FeedItem, BusError>> {
        let msg = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(BusError::Unavailable(e.to_string()))),
        };
        let sequence = match msg.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => return Some(Err(BusError::Unavailable(e.to_string()))),
        };
        Some(Ok(FeedItem::new(
            sequence,
            msg.subject.to_string(),
            msg.payload.clone(),
        )))
    }
}

impl Bus {
    /// Opens a feed over the events whose subjects match `filter` (see
    /// [`crate::Subjects::events_about`] and [`crate::Subjects::events_all`]).
    pub async fn event_feed(
        &self,
        filter: String,
        start: FeedStart,
        opts: &FeedOptions,
    ) -> Result<EventFeed, BusError> {
        let deliver_policy = match start {
            FeedStart::New => DeliverPolicy::New,
            FeedStart::All => DeliverPolicy::All,
            FeedStart::After(seq) => DeliverPolicy::ByStartSequence {
                start_sequence: seq.saturating_add(1),
            },
        };
        let unavailable = |e: String| BusError::Unavailable(e);
        let stream = self
            .jetstream()
            .get_stream_no_info(self.subjects().events_stream())
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy,
                max_batch: opts.max_batch,
                max_bytes: opts.max_bytes,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(EventFeed { messages })
    }

    /// A feed over the events about one session or background task.
    pub async fn feed_about(&self, id: Uuid, start: FeedStart) -> Result<EventFeed, BusError> {
        self.event_feed(
            self.subjects().events_about(id),
            start,
            &FeedOptions::default(),
        )
        .await
    }
}

// ---------------------------------------------------------------------------- the hub

/// Tunables of an [`EventHub`].
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// Items buffered per subscriber before it counts as lagging.
    pub channel_capacity: usize,
    /// Pull batch of the hub's own consumer.
    pub feed: FeedOptions,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            channel_capacity: 64,
            feed: FeedOptions {
                max_batch: 256,
                max_bytes: 1024 * 1024,
            },
        }
    }
}

struct Slot {
    tx: mpsc::Sender<Arc<FeedItem>>,
}

#[derive(Default)]
struct HubState {
    /// Stream sequence of the last item dispatched.
    position: Option<u64>,
    /// Registrations and routed events, to sweep closed receivers now and then.
    registered: u64,
    routed: u64,
    by_key: HashMap<Uuid, Vec<Slot>>,
    all: Vec<Slot>,
}

/// One process-wide reader of the whole EVENTS stream that routes every event to the
/// [`Subscription`]s interested in it (by the session/task id of its subject, or all of
/// them), so a thousand subscribers cost the NATS server one consumer, not a thousand
/// (nats-server 2.9 matches each stored message against every consumer's filter).
///
/// **Backpressure.** Each subscriber has a bounded channel; the hub never waits for one.
/// A subscriber whose channel is full is dropped from the routing table (its channel
/// closes after the buffered items), and it catches up by itself: it re-registers and
/// replays what it missed from the stream with its own short-lived, filtered feed, from
/// the last sequence it delivered. So a slow reader costs one channel of memory, never
/// slows the hub or its neighbours, and still sees every event exactly once, in order.
pub struct EventHub {
    bus: Bus,
    opts: HubOptions,
    state: Mutex<HubState>,
    /// Set once the dispatch task runs (its consumer exists): the EVENTS stream, which
    /// catching-up subscribers read message by message.
    started: tokio::sync::OnceCell<async_nats::jetstream::stream::Stream>,
}

impl EventHub {
    pub fn new(bus: Bus, opts: HubOptions) -> Arc<Self> {
        Arc::new(Self {
            bus,
            opts,
            state: Mutex::new(HubState::default()),
            started: tokio::sync::OnceCell::new(),
        })
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The stream sequence of the last event dispatched.
    pub fn position(&self) -> Option<u64> {
        self.state.lock().ok().and_then(|s| s.position)
    }

    /// Subscribers currently registered.
    pub fn subscribers(&self) -> usize {
        self.state
            .lock()
            .map(|s| s.all.len() + s.by_key.values().map(Vec::len).sum::<usize>())
            .unwrap_or(0)
    }

    /// Starts the dispatch task on first use, right after the stream's current end, and
    /// calls that the position: "every event after the position" is then exactly what the
    /// hub delivers, from the first subscriber on.
    async fn ensure_started(self: &Arc<Self>) -> Result<(), BusError> {
        self.started
            .get_or_try_init(|| async {
                let unavailable = |e: String| BusError::Unavailable(e);
                let mut stream = self
                    .bus
                    .jetstream()
                    .get_stream(self.bus.subjects().events_stream())
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                let last = stream
                    .info()
                    .await
                    .map_err(|e| unavailable(e.to_string()))?
                    .state
                    .last_sequence;
                let all = self.bus.subjects().events_all();
                let feed = self
                    .bus
                    .event_feed(all, FeedStart::After(last), &self.opts.feed)
                    .await?;
                if let Ok(mut st) = self.state.lock() {
                    st.position = Some(last);
                }
                tokio::spawn(dispatch(Arc::downgrade(self), feed));
                Ok::<_, BusError>(stream)
            })
            .await
            .map(|_| ())
    }

    /// Registers a receiver for `key` (or every event); returns it with the position at
    /// registration: every event after that position will be routed to it (until it lags).
    fn register(&self, key: Option<Uuid>) -> (mpsc::Receiver<Arc<FeedItem>>, Option<u64>) {
        let (tx, rx) = mpsc::channel(self.opts.channel_capacity.max(1));
        let Ok(mut st) = self.state.lock() else {
            // A poisoned lock: a closed receiver makes the subscriber retry.
            return (rx, None);
        };
        st.registered += 1;
        if st.registered % 256 == 0 {
            sweep(&mut st);
        }
        let slot = Slot { tx };
        match key {
            Some(k) => st.by_key.entry(k).or_default().push(slot),
            None => st.all.push(slot),
        }
        (rx, st.position)
    }

    /// Opens a subscription to the events about `key` (every event with `None`), starting
    /// live ([`FeedStart::New`]) or right after a sequence ([`FeedStart::After`]).
    pub async fn subscribe(
        self: &Arc<Self>,
        key: Option<Uuid>,
        start: FeedStart,
    ) -> Result<Subscription, BusError> {
        self.ensure_started().await?;
        let mut sub = Subscription {
            hub: self.clone(),
            key,
            rx: None,
            replay_to: None,
            cursor: None,
        };
        let (rx, position) = self.register(key);
        sub.rx = Some(rx);
        match start {
            FeedStart::New => sub.cursor = position,
            FeedStart::After(seq) => {
                sub.cursor = Some(seq);
                sub.replay_to = position;
            }
            FeedStart::All => sub.replay_to = position,
        }
        Ok(sub)
    }
}

/// The hub's loop: reads the stream in order and routes each event. Stops when the hub
/// is dropped; a feed that ends is reopened right after the last dispatched sequence.
async fn dispatch(hub: std::sync::Weak<EventHub>, mut feed: EventFeed) {
    loop {
        let item = feed.next().await;
        let Some(hub) = hub.upgrade() else { return };
        match item {
            Some(Ok(item)) => route(&hub, Arc::new(item)),
            Some(Err(e)) => tracing::warn!(error = %e, "event hub: feed error"),
            None => {
                tracing::warn!("event hub: feed ended; reopening");
                tokio::time::sleep(Duration::from_millis(200)).await;
                let start = hub.position().map_or(FeedStart::New, FeedStart::After);
                let all = hub.bus.subjects().events_all();
                match hub.bus.event_feed(all, start, &hub.opts.feed).await {
                    Ok(f) => feed = f,
                    Err(e) => tracing::warn!(error = %e, "event hub: cannot reopen the feed"),
                }
            }
        }
    }
}

fn route(hub: &EventHub, item: Arc<FeedItem>) {
    let Ok(mut st) = hub.state.lock() else { return };
    st.position = Some(item.sequence);
    // try_send never waits: a full channel drops that subscriber (it will catch up from
    // the stream), a closed one is gone.
    let keep = |slot: &Slot| slot.tx.try_send(item.clone()).is_ok();
    st.all.retain(keep);
    if let Some(key) = item.subject_id() {
        if let Some(slots) = st.by_key.get_mut(&key) {
            slots.retain(keep);
            if slots.is_empty() {
                st.by_key.remove(&key);
            }
        }
    }
    st.routed += 1;
    if st.routed % 1024 == 0 {
        sweep(&mut st);
    }
}

/// Forgets receivers that went away (a subscriber of a quiet session is otherwise only
/// noticed when its next event is routed).
fn sweep(st: &mut HubState) {
    st.all.retain(|s| !s.tx.is_closed());
    st.by_key.retain(|_, v| {
        v.retain(|s| !s.tx.is_closed());
        !v.is_empty()
    });
}

/// An ordered, gap-free, duplicate-free stream of the events about one id (or all
/// events), fed by an [`EventHub`] and repaired from JetStream when it falls behind.
///
/// Catching up reads the stream message by message ("the first message at or after
/// sequence N matching the filter", `STREAM.MSG.GET` with `next_by_subj`) from the cursor
/// to the hub's position at (re-)registration; everything after that position is in the
/// subscriber's channel. No consumer is created, and the end of the catch-up is exact
/// (the pending counts of nats-server 2.9 pull consumers are not).
pub struct Subscription {
    hub: Arc<EventHub>,
    key: Option<Uuid>,
    rx: Option<mpsc::Receiver<Arc<FeedItem>>>,
    /// While catching up: the last sequence to read from the stream.
    replay_to: Option<u64>,
    /// Stream sequence of the last item delivered: nothing at or before it is delivered
    /// again.
    cursor: Option<u64>,
}

impl Subscription {
    /// Stream sequence of the last item delivered.
    pub fn cursor(&self) -> Option<u64> {
        self.cursor
    }

    fn fresh(&mut self, item: &FeedItem) -> bool {
        if self.cursor.is_some_and(|c| item.sequence <= c) {
            return false;
        }
        self.cursor = Some(item.sequence);
        true
    }

    /// One catch-up step: the next stored message up to `target`, or `None` when there
    /// is nothing more in range.
    async fn replay_step(&mut self, target: u64) -> Result<Option<FeedItem>, BusError> {
        let from = self.cursor.map_or(1, |c| c + 1);
        if from > target {
            return Ok(None);
        }
        let Some(stream) = self.hub.started.get() else {
            return Ok(None);
        };
        let filter = match self.key {
            Some(k) => self.hub.bus.subjects().events_about(k),
            None => self.hub.bus.subjects().events_all(),
        };
        match stream.get_first_raw_message_by_subject(filter, from).await {
            Ok(m) if m.sequence <= target => Ok(Some(FeedItem::new(
                m.sequence,
                m.subject.to_string(),
                m.payload,
            ))),
            Ok(_) => Ok(None), // past the hub's position: in `rx`
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(BusError::Unavailable(e.to_string())),
        }
    }

    /// The next event; `None` when the bus is gone. An error leaves the subscription
    /// usable (the next call retries).
    pub async fn next(&mut self) -> Option<Result<Arc<FeedItem>, BusError>> {
        loop {
            if let Some(target) = self.replay_to {
                match self.replay_step(target).await {
                    Ok(Some(item)) => {
                        if self.fresh(&item) {
                            return Some(Ok(Arc::new(item)));
                        }
                        continue;
                    }
                    Ok(None) => {
                        self.replay_to = None; // caught up: the rest is in `rx`
                        continue;
                    }
                    Err(e) => return Some(Err(e)), // retried on the next call
                }
            }
            match self.rx.as_mut() {
                Some(rx) => match rx.recv().await {
                    Some(item) => {
                        if self.fresh(&item) {
                            return Some(Ok(item));
                        }
                    }
                    // Lagged: dropped by the hub; catch up from the stream.
                    None => self.rx = None,
                },
                None => {
                    let (rx, position) = self.hub.register(self.key);
                    self.rx = Some(rx);
                    self.replay_to = position;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_parts() {
        let id = Uuid::new_v4();
        let item = FeedItem::new(
            1,
            format!("bai.evt.kernel_started.{id}"),
            bytes::Bytes::new(),
        );
        assert_eq!(item.name(), "kernel_started");
        assert_eq!(item.subject_id(), Some(id));
        let item = FeedItem::new(1, "bai.evt.do_schedule._".into(), bytes::Bytes::new());
        assert_eq!(item.name(), "do_schedule");
        assert_eq!(item.subject_id(), None);
    }
}
