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
    /// Manager → agent RPC for interactions that change no state (execute, interrupt,
    /// completions, logs, files). `None` until [`AppState::with_agent_rpc`] is called;
    /// those endpoints then answer 503.
    pub agent_rpc: Option<Arc<bai_agent_proto::AgentRpcClient>>,
    /// Server-sent event streams: their shutdown signal, metadata caches and gauge.
    pub streams: crate::routes::events::StreamHub,
    /// `/metrics`: this process's registry, HTTP series and scrape-time samplers.
    pub metrics: crate::metrics::ApiMetrics,
}

impl AppState {
    pub fn new(config: Config, db: Db, redis: RedisPool, etcd: Etcd, bus: Bus) -> Self {
        Self {
            inner: Arc::new(Inner {
                auth: crate::auth::AuthRuntime::from_config(&config),
                streams: crate::routes::events::StreamHub::new(&bus),
                metrics: crate::metrics::ApiMetrics::new(&bus, &db),
                config,
                db,
                redis,
                etcd,
                bus,
                agent_rpc: None,
            }),
        }
    }

    /// Gives the state an agent RPC client. Call it right after [`AppState::new`], before
    /// the state is cloned (it panics otherwise: a start-up wiring mistake).
    pub fn with_agent_rpc(mut self, rpc: Arc<bai_agent_proto::AgentRpcClient>) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.agent_rpc = Some(rpc),
            None => panic!("AppState::with_agent_rpc must be called before the state is shared"),
        }
        self
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}
