//! Typed commands and events, their subjects and streams on NATS JetStream, the command
//! bus (publish + wait for reply) and the coalescing layer for scheduling triggers.
//!
//! Data flows one way: the API publishes [`Command`]s, workers consume them and publish
//! [`Event`]s, subscribers (SSE, other workers) read events.

pub mod admin;
pub mod bgtask;
pub mod bus;
pub mod command;
pub mod envelope;
pub mod event;
pub mod feed;
pub mod keys;
pub mod rest;
pub mod session;
pub mod stats;
pub mod subjects;
pub mod vfolder;

pub use admin::{AdminCaller, AdminCommand, AdminOp};
pub use bus::{Bus, BusError, BusOptions};
pub use command::{Command, CommandOutcome, CommandReply};
pub use envelope::{Envelope, Kind};
pub use event::Event;
pub use feed::{EventFeed, EventHub, FeedItem, FeedOptions, FeedStart, HubOptions, Subscription};
pub use subjects::Subjects;
pub use vfolder::{VfolderCommand, VfolderOp};
