//! The one versioned envelope every command and event travels in.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Bumped on incompatible changes of the envelope or of a payload's meaning.
pub const ENVELOPE_VERSION: u16 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope<T> {
    /// Envelope format version.
    pub v: u16,
    /// Idempotency id: the `Nats-Msg-Id` of a command, the dedup key of an event.
    pub id: Uuid,
    /// Stable kind name (`echo`, `session_enqueued`, ...), duplicated from the body's tag
    /// so routers can read it without decoding the body.
    pub kind: String,
    pub ts: DateTime<Utc>,
    /// Who produced it: `api:<instance>`, `worker:<instance>`, `agent:<id>`, `cli`.
    pub originator: String,
    /// Request id propagated from the API to workers and agents, for log correlation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Core-NATS subject the worker publishes the [`crate::CommandReply`] to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    pub body: T,
}

pub trait Kind {
    fn kind(&self) -> &'static str;
}

impl<T: Serialize + DeserializeOwned + Kind> Envelope<T> {
    pub fn new(id: Uuid, originator: impl Into<String>, body: T) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            id,
            kind: body.kind().to_string(),
            ts: Utc::now(),
            originator: originator.into(),
            request_id: None,
            reply_to: None,
            body,
        }
    }

    pub fn to_bytes(&self) -> Result<bytes::Bytes, serde_json::Error> {
        serde_json::to_vec(self).map(bytes::Bytes::from)
    }

    pub fn from_slice(data: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(data)
    }
}
