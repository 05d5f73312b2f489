//! The manager's per-process view of the storage proxies: one [`StorageClient`] per proxy
//! registered in etcd (see [`crate::client::discover_proxies`]), re-read after [`CACHE_TTL`]
//! so a moved or re-keyed proxy is picked up without a restart.
//!
//! A vfolder `host` is `<proxy>:<volume>`; [`StorageProxies::for_host`] resolves it to the
//! proxy and the volume name on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bai_core::etcd::Etcd;
use tokio::sync::RwLock;

use crate::client::{self, parse_host, ProxyInfo, StorageClient, StorageError};
use crate::proto::VolumeInfo;

/// How long a proxy's etcd entry is trusted before it is read again (by default).
pub const CACHE_TTL: Duration = Duration::from_secs(10);

/// One registered proxy: its etcd entry and a client for its manager-facing API.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub info: ProxyInfo,
    client: StorageClient,
}

impl Proxy {
    /// The proxy's name (the `<proxy>` of `<proxy>:<volume>`).
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The typed client of the proxy's manager-facing API.
    pub fn client(&self) -> &StorageClient {
        &self.client
    }
}

/// A proxy and when its etcd entry was read.
type Cached = (Instant, Arc<Proxy>);

/// Proxy discovery with a per-proxy client cache. Cheap to clone (shared cache).
#[derive(Clone)]
pub struct StorageProxies {
    etcd: Etcd,
    ttl: Duration,
    // One connection pool for every proxy of this process, kept across cache refreshes.
    http: reqwest::Client,
    // A read-mostly map: lookups take the read lock; a miss or an expired entry re-reads
    // etcd outside the lock and replaces the entry (a duplicate read on a race is harmless).
    cache: Arc<RwLock<HashMap<String, Cached>>>,
}

impl StorageProxies {
    pub fn new(etcd: Etcd) -> Self {
        Self::with_ttl(etcd, CACHE_TTL)
    }

    /// A registry that trusts a proxy's etcd entry for `ttl` (tests use 0 and "forever").
    pub fn with_ttl(etcd: Etcd, ttl: Duration) -> Self {
        Self {
            etcd,
            ttl,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            cache: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    /// The process-wide instance for this etcd namespace (one client cache per process;
    /// tests run several namespaces in one process).
    pub fn shared(etcd: &Etcd) -> Self {
        static SHARED: std::sync::OnceLock<std::sync::Mutex<HashMap<String, StorageProxies>>> =
            std::sync::OnceLock::new();
        let map = SHARED.get_or_init(|| std::sync::Mutex::new(HashMap::new()));
        // A poisoned lock only means a thread panicked mid-insert; the map is still usable.
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(etcd.prefix().to_string())
            .or_insert_with(|| StorageProxies::new(etcd.clone()))
            .clone()
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// Caches a freshly read etcd entry and returns its proxy.
    async fn remember(&self, info: ProxyInfo) -> Arc<Proxy> {
        let client = StorageClient::with_http(self.http.clone(), &info.manager_api, &info.secret);
        let proxy = Arc::new(Proxy { info, client });
        self.cache
            .write()
            .await
            .insert(proxy.info.name.clone(), (Instant::now(), proxy.clone()));
        proxy
    }

    /// The proxy named `name`: `UnknownHost` when it is not registered (or has no
    /// `manager_api`), `Discovery` when etcd cannot be read.
    pub async fn proxy(&self, name: &str) -> Result<Arc<Proxy>, StorageError> {
        if let Some((at, p)) = self.cache.read().await.get(name) {
            if at.elapsed() < self.ttl {
                return Ok(p.clone());
            }
        }
        let info = client::find_proxy(&self.etcd, name)
            .await
            .map_err(|e| StorageError::Discovery(format!("{e:#}")))?
            .ok_or_else(|| StorageError::UnknownHost(name.to_string()))?;
        Ok(self.remember(info).await)
    }

    /// The proxy and volume name of a vfolder host `<proxy>:<volume>`.
    pub async fn for_host(&self, host: &str) -> Result<(Arc<Proxy>, String), StorageError> {
        let (proxy, volume) = parse_host(host)?;
        Ok((self.proxy(proxy).await?, volume.to_string()))
    }

    /// Every `(host, volume info, proxy)` of every reachable proxy; unreachable proxies are
    /// logged and skipped (as the original's `get_all_volumes`).
    pub async fn all_volumes(&self) -> anyhow::Result<Vec<(String, VolumeInfo, Arc<Proxy>)>> {
        let mut out = Vec::new();
        // The listing was just read from etcd, so it refreshes every cached entry too.
        for info in client::discover_proxies(&self.etcd).await? {
            let proxy = self.remember(info).await;
            match proxy.client.volumes().await {
                Ok(vols) => {
                    for v in vols {
                        out.push((format!("{}:{}", proxy.name(), v.name), v, proxy.clone()));
                    }
                }
                Err(e) => {
                    tracing::warn!(proxy = %proxy.name(), error = %e, "storage proxy unreachable")
                }
            }
        }
        Ok(out)
    }

    /// etcd `volumes/default_host`, if set and not empty.
    pub async fn default_host(&self) -> anyhow::Result<Option<String>> {
        Ok(client::default_host(&self.etcd)
            .await?
            .filter(|h| !h.is_empty()))
    }
}
