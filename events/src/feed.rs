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
//! Positions are JetStream stream sequences: a reader that remembers the sequence of the
//! last message it handled resumes with [`FeedStart::After`] and sees neither a gap (within
//! the stream's retention) nor a duplicate.

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt;
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

/// One message of the EVENTS stream, not yet decoded (readers usually filter on the
/// subject first and decode only what they keep).
#[derive(Clone, Debug)]
pub struct FeedItem {
    /// The JetStream stream sequence: the SSE `id:`.
    pub sequence: u64,
    pub subject: String,
    pub payload: bytes::Bytes,
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
        Some(Ok(FeedItem {
            sequence,
            subject: msg.subject.to_string(),
            payload: msg.payload.clone(),
        }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_parts() {
        let id = Uuid::new_v4();
        let item = FeedItem {
            sequence: 1,
            subject: format!("bai.evt.kernel_started.{id}"),
            payload: bytes::Bytes::new(),
        };
        assert_eq!(item.name(), "kernel_started");
        assert_eq!(item.subject_id(), Some(id));
        let item = FeedItem {
            sequence: 1,
            subject: "bai.evt.do_schedule._".into(),
            payload: bytes::Bytes::new(),
        };
        assert_eq!(item.name(), "do_schedule");
        assert_eq!(item.subject_id(), None);
    }
}
