//! Shared, cheaply clonable state of one API process.

use std::sync::Arc;

use bai_core::etcd::Etcd;
use bai_core::redis::RedisPool;
use bai_core::{Config, Db};
use bai_events::Bus;

#[derive(Clone)]
pub struct AppState {
    pub inner: Arc<Inner>,
}

pub struct Inner {
    pub config: Config,
    pub db: Db,
    pub redis: RedisPool,
    pub etcd: Etcd,
    pub bus: Bus,
    /// Credential cache, rate limiter and the pre-auth hook (see `crate::auth`).
    pub auth: crate::auth::AuthRuntime,
}

impl AppState {
    pub fn new(config: Config, db: Db, redis: RedisPool, etcd: Etcd, bus: Bus) -> Self {
        Self {
            inner: Arc::new(Inner {
                auth: crate::auth::AuthRuntime::from_config(&config),
                config,
                db,
                redis,
                etcd,
                bus,
            }),
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}
