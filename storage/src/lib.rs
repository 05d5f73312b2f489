//! The storage proxy (Backend.AI 21.03's `storage-proxy`, in Rust).
//!
//! * [`client`]: the manager's typed client ([`client::StorageClient`]) and discovery of
//!   proxies in etcd.
//! * [`registry`]: the manager's per-process cache of clients, one per proxy in etcd.
//! * [`proto`]: the bodies of the manager-facing API, shared by server and client.
//! * [`volume`] / [`vfs`]: the volume backend trait and the local-filesystem backend.
//! * [`path`]: confinement of client paths to their folder.
//! * [`token`]: the upload/download JWTs.
//! * [`manager_api`], [`client_api`], [`server`]: the two HTTP servers and start-up.

pub mod client;
pub mod client_api;
pub mod error;
pub mod manager_api;
pub mod path;
pub mod proto;
pub mod registry;
pub mod server;
pub mod token;
pub mod vfs;
pub mod volume;

pub use client::{StorageClient, StorageError};
pub use registry::StorageProxies;
pub use server::ProxyServer;
