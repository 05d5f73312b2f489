//! Foundation shared by every Backend.AI component: configuration, the error policy, the
//! transaction layer, pools for the backing services, fixtures and keypairs.

pub mod config;
pub mod db;
pub mod error;
pub mod etcd;
pub mod fixtures;
pub mod keypair;
pub mod metrics;
pub mod redis;
pub mod slots;
pub mod telemetry;
pub mod vfolder;

pub use config::Config;
pub use db::{Db, Txn};
pub use error::{ConfigError, FixtureError, ServiceError, TxnError};

/// API version this server speaks (`GET /`), and the manager release it mirrors.
pub const API_VERSION: &str = "v6.20210815";
pub const MANAGER_VERSION: &str = "21.03.6";
