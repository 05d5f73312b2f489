//! The storage proxy (Backend.AI 21.03's `storage-proxy`, in Rust).
//!
//! * [`client`]: the manager's typed client ([`client::StorageClient`]) and discovery of
//!   proxies in etcd.
//! * [`proto`]: the bodies of the manager-facing API, shared by server and client.
//! * [`volume`] / [`vfs`]: the volume backend trait and the local-filesystem backend.
//! * [`path`]: confinement of client paths to their folder.
//! * [`manager_api`], [`client_api`], [`server`]: the two HTTP servers and start-up.

pub mod client;
pub mod error;
pub mod path;
pub mod proto;

pub use client::{StorageClient, StorageError};
